//! Judges one rollout step's window: are the canary's *true* figures beyond a threshold, with
//! the configured confidence? Pure: snapshots in, a finding and its figures out.
//!
//! Each threshold is a claim about the true figure, not about the sample:
//!
//! - `max_error_rate`: breached when the canary's 5xx ratio is above it with confidence (the
//!   lower end of its interval is above the threshold).
//! - `max_error_rate_increase`: breached when the lowest canary ratio the data allow, minus the
//!   highest baseline ratio they allow, is above it.
//! - `max_p99_increase`: breached when the lowest canary p99 the data allow, minus the highest
//!   baseline p99 they allow, is above it. "The p99 is at least x" means "more than 1% of
//!   requests are slower than x", a ratio like the others, bounded the same way on the
//!   latency histogram's bucket edges.
//! - `max_p99`: breached when the lowest canary p99 the data allow is above it: more than 1%
//!   of the canary's requests slower than it, with confidence. No baseline needed.
//!
//! The chance of a false abort is shared out so that over a whole rollout it stays at most
//! `1 − confidence`: every interval is computed at `(1 − confidence) / (steps × intervals a
//! step uses)`, and each is valid however often it is looked at (see `evidence`).

use std::time::Duration;

use crate::api::{Figures, SideFigures};

use super::evidence::{self, Interval};
use crate::config::Rollout;
use crate::stats::{BUCKETS_SECONDS, Snapshot};

/// Slack for comparing ratios of counts with thresholds: a figure exactly at a threshold must
/// not count as above it through float noise.
const RATIO_SLACK: f64 = 1e-9;

/// The quantile `max_p99_increase` is about.
const P99_TAIL: f64 = 0.01;

/// What a look at the window found.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Every estimate is within its threshold.
    Within,
    /// An estimate is above its threshold, but the data do not yet show the true figure is.
    Above(Beyond),
    /// A threshold is breached with confidence.
    Breach(Breach),
}

/// Why a rollout aborts on its own: its `Display` is the rollout's `reason`.
#[derive(Debug, Clone, PartialEq)]
pub enum Breach {
    /// A threshold on the window's figures, breached with confidence at step `at`%.
    Threshold { beyond: Beyond, at: u32 },
    /// A Prometheus check failed `failures` evaluations in a row.
    Check {
        name: String,
        value: f64,
        bound: Bound,
        failures: u32,
        at: u32,
    },
    /// A `step` webhook failed `failures` calls in a row; `outcome` says how the last went.
    Hook {
        name: String,
        outcome: String,
        failures: u32,
        at: u32,
    },
}

/// The side of a check's range a value fell out of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Min(f64),
    Max(f64),
}

impl Bound {
    /// The bound `value` is outside of, if any (`min` first).
    pub fn broken(min: Option<f64>, max: Option<f64>, value: f64) -> Option<Bound> {
        match (min, max) {
            (Some(min), _) if value < min => Some(Bound::Min(min)),
            (_, Some(max)) if value > max => Some(Bound::Max(max)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Min(min) => write!(f, "< min {min}"),
            Bound::Max(max) => write!(f, "> max {max}"),
        }
    }
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Threshold { beyond, at } => write!(f, "{beyond} at step {at}%"),
            Breach::Check {
                name,
                value,
                bound,
                failures,
                at,
            } => write!(
                f,
                "check {name:?} = {value} {bound}, {failures} evaluations in a row, at step {at}%"
            ),
            Breach::Hook {
                name,
                outcome,
                failures,
                at,
            } => write!(
                f,
                "webhook {name:?} (on = \"step\") failed {failures} times in a row ({outcome}) at step {at}%"
            ),
        }
    }
}

/// A figure above its threshold, with its confidence bound and sample sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Beyond {
    pub confidence: f64,
    pub figure: Figure,
}

/// Which threshold, and the figures that put the estimate above it.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// `max_error_rate`: the canary's ratio and the low end of its interval.
    ErrorRate {
        rate: f64,
        low: f64,
        n: u64,
        max: f64,
    },
    /// `max_error_rate_increase`: the canary's ratio (low end) against the baseline's (high end).
    ErrorRateIncrease {
        rate: f64,
        low: f64,
        n: u64,
        base_rate: f64,
        high: f64,
        bn: u64,
        max: f64,
    },
    /// `max_p99_increase`: the canary's p99 (lower bound) against the baseline's (upper bound).
    P99Increase {
        p99: Duration,
        low: Option<Duration>,
        n: u64,
        base_p99: Duration,
        high: Option<Duration>,
        bn: u64,
        max: Duration,
    },
    /// `max_p99`: the canary's p99 and its lower bound.
    P99 {
        p99: Duration,
        low: Option<Duration>,
        n: u64,
        max: Duration,
    },
}

impl std::fmt::Display for Beyond {
    /// `canary 5xx 14.0% (≥ 7.1% at 99%, n=57) > 5.0%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = confidence_text(self.confidence);
        let at_least =
            |d: &Option<Duration>| d.map_or("≥ 0ms".into(), |d| format!("≥ {}", ms(d)));
        match &self.figure {
            Figure::ErrorRate { rate, low, n, max } => write!(
                f,
                "canary 5xx {} (≥ {} at {at}, n={n}) > {}",
                pct(*rate),
                pct(*low),
                pct(*max)
            ),
            Figure::ErrorRateIncrease {
                rate,
                low,
                n,
                base_rate,
                high,
                bn,
                max,
            } => write!(
                f,
                "canary 5xx {} (≥ {} at {at}, n={n}) exceeds baseline {} (≤ {}, n={bn}) by more than {}",
                pct(*rate),
                pct(*low),
                pct(*base_rate),
                pct(*high),
                pct(*max)
            ),
            Figure::P99Increase {
                p99,
                low,
                n,
                base_p99,
                high,
                bn,
                max,
            } => write!(
                f,
                "canary p99 {} ({} at {at}, n={n}) exceeds baseline p99 {} ({}, n={bn}) by more than {}",
                ms(*p99),
                at_least(low),
                ms(*base_p99),
                high.map_or("no upper bound yet".into(), |d| format!("≤ {}", ms(d))),
                ms(*max)
            ),
            Figure::P99 { p99, low, n, max } => write!(
                f,
                "canary p99 {} ({} at {at}, n={n}) > {}",
                ms(*p99),
                at_least(low),
                ms(*max)
            ),
        }
    }
}

/// The false-abort chance one interval may spend, for this rollout's steps and thresholds.
pub fn alpha_per_interval(cfg: &Rollout) -> f64 {
    let intervals =
        usize::from(cfg.max_error_rate.is_some() || cfg.max_error_rate_increase.is_some())
            + usize::from(cfg.max_error_rate_increase.is_some())
            + 2 * usize::from(cfg.max_p99_increase.is_some())
            + usize::from(cfg.max_p99.is_some());
    (1.0 - cfg.confidence) / (cfg.steps.len().max(1) * intervals.max(1)) as f64
}

/// Judges a window: `base` and `can` are what the baseline and canary served since it opened;
/// `at` is the step's share in percent, for the reason. A breach of any threshold comes
/// first, then an estimate above one. The figures are numbers, not words: a look every tick
/// only needs the decision, and the words are made only when shown.
pub fn look(cfg: &Rollout, at: u32, base: &Snapshot, can: &Snapshot) -> Finding {
    let judge = Judge {
        cfg,
        base,
        can,
        alpha: alpha_per_interval(cfg),
    };
    let findings = [
        judge.error_rate(),
        judge.error_rate_increase(),
        judge.p99_increase(),
        judge.p99(),
    ];
    let mut above = None;
    for (breached, figure) in findings.into_iter().flatten() {
        let beyond = Beyond {
            confidence: cfg.confidence,
            figure,
        };
        if breached {
            return Finding::Breach(Breach::Threshold { beyond, at });
        }
        above.get_or_insert(beyond);
    }
    above.map_or(Finding::Within, Finding::Above)
}

struct Judge<'a> {
    cfg: &'a Rollout,
    base: &'a Snapshot,
    can: &'a Snapshot,
    alpha: f64,
}

/// A threshold's estimate above it: whether breached with confidence, and the figures.
type Verdict = Option<(bool, Figure)>;

impl Judge<'_> {
    fn error_rate(&self) -> Verdict {
        let max = self.cfg.max_error_rate?;
        let (n, s) = (self.can.requests(), self.can.errors_5xx());
        let rate = self.can.error_rate()?;
        if rate <= max + RATIO_SLACK {
            return None;
        }
        let breached = evidence::above(s, n, max, self.alpha);
        let low = evidence::interval(s, n, self.alpha).low;
        Some((breached, Figure::ErrorRate { rate, low, n, max }))
    }

    fn error_rate_increase(&self) -> Verdict {
        let max = self.cfg.max_error_rate_increase?;
        let (rate, base_rate) = (self.can.error_rate()?, self.base.error_rate()?);
        if rate - base_rate <= max + RATIO_SLACK {
            return None;
        }
        let (n, bn) = (self.can.requests(), self.base.requests());
        let low = evidence::interval(self.can.errors_5xx(), n, self.alpha).low;
        let high = evidence::interval(self.base.errors_5xx(), bn, self.alpha).high;
        let breached = low - high > max + RATIO_SLACK;
        let figure = Figure::ErrorRateIncrease {
            rate,
            low,
            n,
            base_rate,
            high,
            bn,
            max,
        };
        Some((breached, figure))
    }

    fn p99_increase(&self) -> Verdict {
        let max = self.cfg.max_p99_increase?;
        let (p99, base_p99) = (self.can.quantile(0.99)?, self.base.quantile(0.99)?);
        if p99.saturating_sub(base_p99) <= max {
            return None;
        }
        let low = p99_at_least(self.can, self.alpha);
        let high = p99_at_most(self.base, self.alpha);
        let breached = matches!((low, high), (Some(l), Some(h)) if l.saturating_sub(h) > max);
        let figure = Figure::P99Increase {
            p99,
            low,
            n: self.can.requests(),
            base_p99,
            high,
            bn: self.base.requests(),
            max,
        };
        Some((breached, figure))
    }

    fn p99(&self) -> Verdict {
        let max = self.cfg.max_p99?;
        let p99 = self.can.quantile(0.99)?;
        if p99 <= max {
            return None;
        }
        // A lower bound at or above the limit: more than 1% of requests slower than an edge
        // at or past it, so the true p99 is past the limit.
        let low = p99_at_least(self.can, self.alpha);
        let breached = low.is_some_and(|l| l >= max);
        let n = self.can.requests();
        Some((breached, Figure::P99 { p99, low, n, max }))
    }
}

/// The largest bucket edge the true p99 is above with confidence: more than 1% of requests
/// slower than it. `None` when no edge qualifies.
fn p99_at_least(s: &Snapshot, alpha: f64) -> Option<Duration> {
    let n = s.requests();
    let mut slower = n;
    let mut best = None;
    for (i, edge) in BUCKETS_SECONDS.iter().enumerate() {
        slower = slower.saturating_sub(s.buckets[i]);
        if evidence::above(slower, n, P99_TAIL, alpha) {
            best = Some(Duration::from_secs_f64(*edge));
        } else {
            break;
        }
    }
    best
}

/// The smallest bucket edge the true p99 is below with confidence: fewer than 1% of requests
/// slower than it. `None` when no edge qualifies (too few requests).
fn p99_at_most(s: &Snapshot, alpha: f64) -> Option<Duration> {
    let n = s.requests();
    let mut slower = n;
    for (i, edge) in BUCKETS_SECONDS.iter().enumerate() {
        slower = slower.saturating_sub(s.buckets[i]);
        if evidence::below(slower, n, P99_TAIL, alpha) {
            return Some(Duration::from_secs_f64(*edge));
        }
    }
    None
}

/// The figures of a judged window, with their intervals, for the verdict and the history.
pub fn figures(cfg: &Rollout, base: &Snapshot, can: &Snapshot) -> Figures {
    let alpha = alpha_per_interval(cfg);
    let side = |s: &Snapshot| {
        let (n, e) = (s.requests(), s.errors_5xx());
        let Interval { low, high } = evidence::interval(e, n, alpha);
        SideFigures {
            requests: n,
            error_rate: s.error_rate(),
            error_rate_interval: (n > 0).then_some([low, high]),
            p99_ms: s.quantile(0.99).map(millis_f64),
            p99_ms_at_least: p99_at_least(s, alpha).map(millis_f64),
            p99_ms_at_most: p99_at_most(s, alpha).map(millis_f64),
        }
    };
    Figures {
        confidence: cfg.confidence,
        canary: side(can),
        baseline: side(base),
    }
}

/// `0.99` → `99%`, `0.995` → `99.5%`.
pub fn confidence_text(confidence: f64) -> String {
    let text = format!("{:.2}", confidence * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// A ratio as a percentage with one decimal: `0.12` → `12.0%`.
fn pct(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn ms(d: Duration) -> String {
    format!("{}ms", (d.as_secs_f64() * 1000.0).round() as u64)
}

pub use crate::stats::millis_f64;
