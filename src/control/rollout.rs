//! Progressive canary: steps the canary weight up, judges each step on windowed per-pool
//! statistics, promotes at the end, aborts to 0% on a breach. Pure: the control task feeds it
//! time and snapshots and applies the weights it asks for.
//!
//! # Semantics
//!
//! - The caller passes *cumulative* [`Snapshot`]s of the baseline and canary pools. The
//!   controller keeps the pair it saw when the current step's window opened (at `start`, at
//!   each step change and at `resume`) and judges `current.since(&window_start)`.
//! - `tick` while progressing: with fewer than `min_requests` canary requests in the window
//!   the step waits (no verdict, nothing to apply), even after `interval`. With enough, the
//!   thresholds are checked, each breached only when the figure is strictly greater:
//!   `max_error_rate` (canary 5xx ratio), `max_error_rate_increase` (canary ratio minus baseline
//!   ratio, the baseline's being 0 without baseline requests) and `max_p99_increase` (canary
//!   p99 minus baseline p99, skipped without baseline requests). A breach aborts at once, even
//!   before `interval`. Without one the step passes once `interval` has elapsed since the
//!   window opened: the next step applies with a fresh window, or after the last step the
//!   rollout is promoted to 100% (also when the last configured step is below 100).
//! - Ratios are compared with a 1e-9 slack: they are quotients of integer counts, so a figure
//!   exactly at the threshold (2% − 1% against 0.01) must not breach through float noise.
//! - Pausing freezes the step; `resume` reopens its window and restarts its dwell, so a step
//!   is never judged on traffic from before the pause.
//! - `promote` is allowed from every state but `Promoted` (it is an explicit operator jump to
//!   100%, like a weight change); `abort` only from `Progressing` or `Paused`; `start` from
//!   `Idle`, `Aborted` or `Promoted`. Refusals are `Err(text)` for a 409.
//! - The controller never reads a clock and never touches the table: `auto_start`, applying a
//!   returned [`Split`] and re-applying [`RolloutController::split`] after
//!   [`RolloutController::set_total`] are the control task's job.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::Rollout;
use crate::stats::Snapshot;

/// The `reason` of an abort asked for through the admin API.
pub const ADMIN_ABORT_REASON: &str = "aborted by admin";

/// Slack for comparing ratios of counts against configured thresholds (see the module doc).
const RATIO_SLACK: f64 = 1e-9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Idle,
    Progressing,
    Paused,
    Promoted,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Idle => "idle",
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Weights the controller wants applied (an atomic weight change, like an admin PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub baseline: u32,
    pub canary: u32,
}

impl Split {
    /// `canary = floor(total × percent / 100)`, `baseline = total − canary`.
    pub fn of(total: u32, percent: u32) -> Split {
        let canary = u64::from(total) * u64::from(percent.min(100)) / 100;
        // canary <= total, so it fits in u32.
        let canary = u32::try_from(canary).unwrap_or(total);
        Split {
            baseline: total - canary,
            canary,
        }
    }
}

/// The figures of one judged step (pass or breach), shown as `last_verdict`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub canary_requests: u64,
    pub baseline_requests: u64,
    /// `None` without requests in the window.
    pub canary_error_rate: Option<f64>,
    pub baseline_error_rate: Option<f64>,
    pub canary_p99: Option<Duration>,
    pub baseline_p99: Option<Duration>,
    pub passed: bool,
    pub at: SystemTime,
}

impl Verdict {
    fn judge(baseline: &Snapshot, canary: &Snapshot, at: SystemTime) -> Verdict {
        Verdict {
            canary_requests: canary.requests(),
            baseline_requests: baseline.requests(),
            canary_error_rate: canary.error_rate(),
            baseline_error_rate: baseline.error_rate(),
            canary_p99: canary.quantile(0.99),
            baseline_p99: baseline.quantile(0.99),
            passed: true,
            at,
        }
    }

    fn view(&self) -> Value {
        json!({
            "canary_requests": self.canary_requests,
            "baseline_requests": self.baseline_requests,
            "canary_error_rate": self.canary_error_rate,
            "baseline_error_rate": self.baseline_error_rate,
            "canary_p99_ms": self.canary_p99.map(millis_f64),
            "baseline_p99_ms": self.baseline_p99.map(millis_f64),
            "passed": self.passed,
            "at": rfc3339(self.at),
        })
    }
}

/// When the current state (and, while progressing, the current step's window) began.
#[derive(Debug, Clone, Copy)]
struct Since {
    at: Instant,
    wall: SystemTime,
}

/// Cumulative snapshots taken when the current step's window opened.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    baseline: Snapshot,
    canary: Snapshot,
}

#[derive(Debug, Clone)]
pub struct RolloutController {
    cfg: Rollout,
    total: u32,
    state: RolloutState,
    /// 0-based index into `cfg.steps`.
    step: usize,
    /// `None` until the first transition (`new` has no clock to read).
    since: Option<Since>,
    window: Window,
    reason: Option<String>,
    last_verdict: Option<Verdict>,
}

// === impl RolloutController ===

impl RolloutController {
    /// An idle controller; `total` is the service's weight total (sum of weights).
    pub fn new(cfg: Rollout, total: u32) -> Self {
        RolloutController {
            cfg,
            total,
            state: RolloutState::Idle,
            step: 0,
            since: None,
            window: Window::default(),
            reason: None,
            last_verdict: None,
        }
    }

    pub fn config(&self) -> &Rollout {
        &self.cfg
    }

    /// After a reload or an admin change of the total; the caller re-applies [`Self::split`].
    pub fn set_total(&mut self, total: u32) {
        self.total = total;
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn state(&self) -> RolloutState {
        self.state
    }

    /// 0-based index into `steps` (the last one once promoted, 0 before any start).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Canary share in percent of the current step (0 when idle/aborted, 100 when promoted).
    pub fn weight(&self) -> u32 {
        match self.state {
            RolloutState::Idle | RolloutState::Aborted => 0,
            RolloutState::Promoted => 100,
            RolloutState::Progressing | RolloutState::Paused => self.step_percent(self.step),
        }
    }

    /// The split the current state stands for; `None` when idle (the config's weights rule).
    pub fn split(&self) -> Option<Split> {
        (self.state != RolloutState::Idle).then(|| Split::of(self.total, self.weight()))
    }

    /// Why the rollout aborted; `None` unless aborted.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.last_verdict.as_ref()
    }

    /// Starts from `Idle`, `Aborted` or `Promoted` and applies `steps[0]`.
    pub fn start(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: Snapshot,
        canary: Snapshot,
    ) -> Result<Split, String> {
        match self.state {
            RolloutState::Idle | RolloutState::Aborted | RolloutState::Promoted => {}
            RolloutState::Progressing => return Err("rollout is already progressing".into()),
            RolloutState::Paused => {
                return Err("rollout is paused; resume or abort it first".into());
            }
        }
        self.step = 0;
        self.reason = None;
        self.last_verdict = None;
        self.open_window(now, wall, baseline, canary);
        Ok(Split::of(self.total, self.weight()))
    }

    /// `Progressing` → `Paused`: ticks do nothing until `resume`.
    pub fn pause(&mut self, now: Instant, wall: SystemTime) -> Result<(), String> {
        match self.state {
            RolloutState::Progressing => {
                self.enter(RolloutState::Paused, now, wall);
                Ok(())
            }
            RolloutState::Paused => Err("rollout is already paused".into()),
            other => Err(format!("rollout is not progressing (it is {other})")),
        }
    }

    /// `Paused` → `Progressing`; the step's window and dwell restart.
    pub fn resume(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: Snapshot,
        canary: Snapshot,
    ) -> Result<(), String> {
        match self.state {
            RolloutState::Paused => {
                self.open_window(now, wall, baseline, canary);
                Ok(())
            }
            RolloutState::Progressing => Err("rollout is already progressing".into()),
            other => Err(format!("rollout is not paused (it is {other})")),
        }
    }

    /// Jumps to 100%: canary = total, baseline = 0. Refused only when already promoted.
    pub fn promote(&mut self, now: Instant, wall: SystemTime) -> Result<Split, String> {
        if self.state == RolloutState::Promoted {
            return Err("rollout is already promoted".into());
        }
        Ok(self.enter_promoted(now, wall))
    }

    /// `Progressing`/`Paused` → `Aborted`: canary 0, baseline the whole total.
    /// An admin abort passes [`ADMIN_ABORT_REASON`].
    pub fn abort(
        &mut self,
        now: Instant,
        wall: SystemTime,
        reason: String,
    ) -> Result<Split, String> {
        match self.state {
            RolloutState::Progressing | RolloutState::Paused => {
                Ok(self.enter_aborted(now, wall, reason))
            }
            RolloutState::Aborted => Err("rollout is already aborted".into()),
            RolloutState::Promoted => Err("rollout is already promoted".into()),
            RolloutState::Idle => Err("rollout is not running (it is idle)".into()),
        }
    }

    /// Judges the current step. Returns the split to apply when the step changes (next step,
    /// promotion) or on a breach (abort); `None` while waiting or when not progressing.
    pub fn tick(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: &Snapshot,
        canary: &Snapshot,
    ) -> Option<Split> {
        if self.state != RolloutState::Progressing {
            return None;
        }
        let opened = self.since?;
        let base = baseline.since(&self.window.baseline);
        let can = canary.since(&self.window.canary);
        if can.requests() < self.cfg.min_requests {
            return None;
        }
        let mut verdict = Verdict::judge(&base, &can, wall);
        if let Some(reason) = self.breach(&verdict) {
            verdict.passed = false;
            self.last_verdict = Some(verdict);
            return Some(self.enter_aborted(now, wall, reason));
        }
        if now.saturating_duration_since(opened.at) < self.cfg.interval {
            return None;
        }
        self.last_verdict = Some(verdict);
        if self.step + 1 < self.cfg.steps.len() {
            self.step += 1;
            self.open_window(now, wall, *baseline, *canary);
            Some(Split::of(self.total, self.weight()))
        } else {
            Some(self.enter_promoted(now, wall))
        }
    }

    /// JSON for `GET /admin/services/{svc}` "rollout".
    pub fn view(&self) -> Value {
        json!({
            "state": self.state,
            "step": self.step,
            "weight": self.weight(),
            "since": self.since.map(|s| rfc3339(s.wall)),
            "reason": self.reason,
            "last_verdict": self.last_verdict.as_ref().map(Verdict::view),
        })
    }

    /// The reason text of the first threshold the window breaches, if any.
    fn breach(&self, v: &Verdict) -> Option<String> {
        let at = self.step_percent(self.step);
        // Without canary requests (min_requests = 0) there is nothing to judge.
        let canary_rate = v.canary_error_rate?;
        if let Some(max) = self.cfg.max_error_rate
            && canary_rate > max + RATIO_SLACK
        {
            return Some(format!(
                "canary 5xx {} > {} at step {at}%",
                percent(canary_rate),
                percent(max)
            ));
        }
        let baseline_rate = v.baseline_error_rate.unwrap_or(0.0);
        if let Some(max) = self.cfg.max_error_rate_increase
            && canary_rate - baseline_rate > max + RATIO_SLACK
        {
            return Some(format!(
                "canary 5xx {} exceeds baseline {} by more than {} at step {at}%",
                percent(canary_rate),
                percent(baseline_rate),
                percent(max)
            ));
        }
        if let (Some(max), Some(canary_p99), Some(baseline_p99)) =
            (self.cfg.max_p99_increase, v.canary_p99, v.baseline_p99)
            && canary_p99.saturating_sub(baseline_p99) > max
        {
            return Some(format!(
                "canary p99 {}ms exceeds baseline p99 {}ms by more than {}ms at step {at}%",
                millis_rounded(canary_p99),
                millis_rounded(baseline_p99),
                millis_rounded(max)
            ));
        }
        None
    }

    /// The share of step `i`; 100 past the configured steps (validation forbids none).
    fn step_percent(&self, i: usize) -> u32 {
        self.cfg.steps.get(i).copied().unwrap_or(100).min(100)
    }

    fn enter(&mut self, state: RolloutState, now: Instant, wall: SystemTime) {
        self.state = state;
        self.since = Some(Since { at: now, wall });
    }

    /// Progressing on the current step with a fresh window and dwell.
    fn open_window(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: Snapshot,
        canary: Snapshot,
    ) {
        self.window = Window { baseline, canary };
        self.enter(RolloutState::Progressing, now, wall);
    }

    fn enter_promoted(&mut self, now: Instant, wall: SystemTime) -> Split {
        self.step = self.cfg.steps.len().saturating_sub(1);
        self.reason = None;
        self.enter(RolloutState::Promoted, now, wall);
        Split::of(self.total, 100)
    }

    fn enter_aborted(&mut self, now: Instant, wall: SystemTime, reason: String) -> Split {
        self.reason = Some(reason);
        self.enter(RolloutState::Aborted, now, wall);
        Split::of(self.total, 0)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A ratio as a percentage with one decimal: `0.12` → `12.0%`.
fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn millis_rounded(d: Duration) -> u64 {
    (d.as_secs_f64() * 1000.0).round() as u64
}

/// Milliseconds with microsecond precision, for the verdict JSON.
fn millis_f64(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
