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

/// What a look at the window found, with its figures when it matters.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Every estimate is within its threshold.
    Within,
    /// An estimate is above its threshold, but the data do not yet show the true figure is.
    Above(String),
    /// A threshold is breached with confidence: the text is the abort reason.
    Breach(String),
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
/// `at` is the step's share in percent, for the text. A breach of any threshold comes first,
/// then an estimate above one. The texts are empty unless `explain`: a look every tick only
/// needs the decision, and the words cost more than it.
pub fn look(cfg: &Rollout, at: u32, base: &Snapshot, can: &Snapshot, explain: bool) -> Finding {
    let judge = Judge {
        cfg,
        at,
        base,
        can,
        alpha: alpha_per_interval(cfg),
        explain,
    };
    let findings = [
        judge.error_rate(),
        judge.error_rate_increase(),
        judge.p99_increase(),
        judge.p99(),
    ];
    let mut above = None;
    for finding in findings.into_iter().flatten() {
        match finding {
            Finding::Breach(_) => return finding,
            Finding::Above(_) if above.is_none() => above = Some(finding),
            _ => {}
        }
    }
    above.unwrap_or(Finding::Within)
}

struct Judge<'a> {
    cfg: &'a Rollout,
    at: u32,
    base: &'a Snapshot,
    can: &'a Snapshot,
    alpha: f64,
    explain: bool,
}

impl Judge<'_> {
    /// `Breach` with the reason when `breached`, else `Above`; the text only if explaining.
    fn verdict(&self, breached: bool, figure: impl FnOnce() -> (String, String)) -> Finding {
        if !self.explain {
            return if breached {
                Finding::Breach(String::new())
            } else {
                Finding::Above(String::new())
            };
        }
        let (figure, threshold) = figure();
        if breached {
            Finding::Breach(format!("{figure} {threshold} at step {}%", self.at))
        } else {
            Finding::Above(format!("{figure} {threshold}, not yet beyond chance"))
        }
    }

    fn error_rate(&self) -> Option<Finding> {
        let max = self.cfg.max_error_rate?;
        let (n, s) = (self.can.requests(), self.can.errors_5xx());
        let rate = self.can.error_rate()?;
        if rate <= max + RATIO_SLACK {
            return None;
        }
        let breached = evidence::above(s, n, max, self.alpha);
        Some(self.verdict(breached, || {
            let low = evidence::interval(s, n, self.alpha).low;
            let figure = format!(
                "canary 5xx {} (≥ {} at {}, n={n})",
                pct(rate),
                pct(low),
                confidence_text(self.cfg.confidence)
            );
            (figure, format!("> {}", pct(max)))
        }))
    }

    fn error_rate_increase(&self) -> Option<Finding> {
        let max = self.cfg.max_error_rate_increase?;
        let (rate, base_rate) = (self.can.error_rate()?, self.base.error_rate()?);
        if rate - base_rate <= max + RATIO_SLACK {
            return None;
        }
        let (n, bn) = (self.can.requests(), self.base.requests());
        let low = evidence::interval(self.can.errors_5xx(), n, self.alpha).low;
        let high = evidence::interval(self.base.errors_5xx(), bn, self.alpha).high;
        let breached = low - high > max + RATIO_SLACK;
        Some(self.verdict(breached, || {
            let figure = format!(
                "canary 5xx {} (≥ {} at {}, n={n}) exceeds baseline {} (≤ {}, n={bn})",
                pct(rate),
                pct(low),
                confidence_text(self.cfg.confidence),
                pct(base_rate),
                pct(high)
            );
            (figure, format!("by more than {}", pct(max)))
        }))
    }

    fn p99_increase(&self) -> Option<Finding> {
        let max = self.cfg.max_p99_increase?;
        let (p99, base_p99) = (self.can.quantile(0.99)?, self.base.quantile(0.99)?);
        if p99.saturating_sub(base_p99) <= max {
            return None;
        }
        let low = p99_at_least(self.can, self.alpha);
        let high = p99_at_most(self.base, self.alpha);
        let breached = matches!((low, high), (Some(l), Some(h)) if l.saturating_sub(h) > max);
        Some(self.verdict(breached, || {
            let figure = format!(
                "canary p99 {} ({} at {}, n={}) exceeds baseline p99 {} ({}, n={})",
                ms(p99),
                low.map_or("≥ 0ms".into(), |d| format!("≥ {}", ms(d))),
                confidence_text(self.cfg.confidence),
                self.can.requests(),
                ms(base_p99),
                high.map_or("no upper bound yet".into(), |d| format!("≤ {}", ms(d))),
                self.base.requests(),
            );
            (figure, format!("by more than {}", ms(max)))
        }))
    }

    fn p99(&self) -> Option<Finding> {
        let max = self.cfg.max_p99?;
        let p99 = self.can.quantile(0.99)?;
        if p99 <= max {
            return None;
        }
        // A lower bound at or above the limit: more than 1% of requests slower than an edge
        // at or past it, so the true p99 is past the limit.
        let low = p99_at_least(self.can, self.alpha);
        let breached = low.is_some_and(|l| l >= max);
        Some(self.verdict(breached, || {
            let figure = format!(
                "canary p99 {} ({} at {}, n={})",
                ms(p99),
                low.map_or("≥ 0ms".into(), |d| format!("≥ {}", ms(d))),
                confidence_text(self.cfg.confidence),
                self.can.requests(),
            );
            (figure, format!("> {}", ms(max)))
        }))
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
