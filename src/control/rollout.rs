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
//!   window is judged (`judge::look`): a threshold breached *with confidence* aborts at once,
//!   even before `interval`. Once `interval` has elapsed, a step whose estimates are all
//!   within their thresholds passes: the next step applies with a fresh window, or after the
//!   last step the rollout is promoted to 100% (also when the last configured step is below
//!   100). A step with an estimate above a threshold that the data do not yet confirm is
//!   *inconclusive*: it keeps collecting (passing or aborting as soon as the data decide) for
//!   up to [`INCONCLUSIVE_WAIT_INTERVALS`] more intervals, then the rollout pauses with the
//!   figures as its reason, for an operator to resume, promote or abort.
//! - Pausing freezes the step; `resume` reopens its window and restarts its dwell, so a step
//!   is never judged on traffic from before the pause. A step listed in `pause_at` pauses the
//!   rollout as soon as it applies (at `start` too, for the first step): its judgement starts
//!   on `resume`.
//! - `promote` is allowed from every state but `Promoted` (it is an explicit operator jump to
//!   100%, like a weight change); `abort` only from `Progressing` or `Paused`; `start` from
//!   `Idle`, `Aborted` or `Promoted`. Refusals are `Err(text)` for a 409.
//! - The controller never reads a clock and never touches the table: `auto_start`, applying a
//!   returned [`Split`] and re-applying [`RolloutController::split`] after
//!   [`RolloutController::set_total`] are the control task's job.

use std::time::SystemTime;

use tokio::time::Instant;

use super::gates::{Answered, Blocker, Due, Gates, Phase};
use super::judge::{self, Beyond, Breach, Finding};
use crate::config::Rollout;
use crate::stats::Snapshot;

/// The `reason` of an abort asked for through the admin API.
pub const ADMIN_ABORT_REASON: &str = "aborted by admin";

/// How many intervals an inconclusive step keeps collecting before the rollout pauses.
pub const INCONCLUSIVE_WAIT_INTERVALS: u32 = 9;

/// The judged steps a rollout keeps (a step repeated by pause and resume counts each time).
const HISTORY_LIMIT: usize = 64;

use crate::api::{Figures, RolloutView, VerdictView};
pub use crate::api::{Outcome, RolloutState};

/// Why a rollout action does not fit the rollout's state (a 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("rollout is already {0}")]
    Already(RolloutState),
    #[error("rollout is paused; resume or abort it first")]
    PausedFirst,
    #[error("rollout is not progressing (it is {0})")]
    NotProgressing(RolloutState),
    #[error("rollout is not paused (it is {0})")]
    NotPaused(RolloutState),
    #[error("rollout is not running (it is idle)")]
    NotRunning,
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

/// One judged step, with the figures it was judged on: `last_verdict` and the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// 0-based index into `steps`, and its share in percent.
    pub step: usize,
    pub weight: u32,
    pub outcome: Outcome,
    /// The breach or the undecided figure, in words; `None` for a pass.
    pub detail: Option<String>,
    pub canary_requests: u64,
    pub baseline_requests: u64,
    /// Estimates and their intervals (`judge::figures`).
    pub figures: Figures,
    /// When the step's window opened, and when it was judged.
    pub started: SystemTime,
    pub at: SystemTime,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }

    fn view(&self) -> VerdictView {
        VerdictView {
            step: self.step,
            weight: self.weight,
            outcome: self.outcome,
            passed: self.passed(),
            detail: self.detail.clone(),
            canary_requests: self.canary_requests,
            baseline_requests: self.baseline_requests,
            started: rfc3339(self.started),
            at: rfc3339(self.at),
            figures: self.figures.clone(),
        }
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
    /// Why the rollout aborted, or paused on an undecided step.
    reason: Option<String>,
    /// Since when the current step, its dwell over, has been undecided, and the window it
    /// was last undecided on (baseline, canary), for the words in the view.
    inconclusive: Option<(Instant, Snapshot, Snapshot)>,
    history: Vec<Verdict>,
    /// How many windows this run has opened: names the current one for a fleet, whose
    /// replicas count their traffic from the moment they see a new number.
    windows: u64,
    /// The checks' and gate hooks' state; calls are made by the control side.
    gates: Gates,
    /// What the current step, its own figures passed, waits for (set by `tick`).
    blocked: Option<Blocker>,
}

/// A rollout's progress as a fleet shares it: enough for any replica to take over the
/// judging, or for a restarted fleet to go on, at the same step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutRecord {
    pub state: RolloutState,
    pub step: usize,
    /// When the state (while progressing: the step's window and dwell) began.
    pub since: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub window: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Verdict>,
}

// === impl RolloutController ===

impl RolloutController {
    /// An idle controller; `total` is the service's weight total (sum of weights).
    pub fn new(cfg: Rollout, total: u32) -> Self {
        RolloutController {
            total,
            state: RolloutState::Idle,
            step: 0,
            since: None,
            window: Window::default(),
            reason: None,
            inconclusive: None,
            history: Vec::new(),
            windows: 0,
            gates: Gates::new(&cfg),
            blocked: None,
            cfg,
        }
    }

    /// The progress to share with a fleet; `None` before the first start.
    pub fn to_record(&self) -> Option<RolloutRecord> {
        let since = self.since?;
        Some(RolloutRecord {
            state: self.state,
            step: self.step,
            since: since.wall,
            reason: self.reason.clone(),
            window: self.windows,
            history: self.history.clone(),
        })
    }

    /// Takes over the progress a fleet shares. The dwell counts from the record's `since`
    /// (wall clock), so a replica taking over goes on with the same step where it was. The
    /// window starts empty: a fleet's figures are counted per window by each replica, not as
    /// cumulative snapshots. An undecided step waits its full extra time again.
    pub fn restore(&mut self, record: &RolloutRecord, now: Instant, wall: SystemTime) {
        let age = wall.duration_since(record.since).unwrap_or_default();
        let at = now.checked_sub(age).unwrap_or(now);
        let same_window = self.windows == record.window && self.state == record.state;
        self.state = record.state;
        self.step = record.step.min(self.cfg.steps.len().saturating_sub(1));
        self.since = Some(Since {
            at,
            wall: record.since,
        });
        self.reason = record.reason.clone();
        self.history = record.history.clone();
        self.windows = record.window;
        self.window = Window::default();
        if !same_window {
            self.inconclusive = None;
            self.blocked = None;
        }
    }

    /// Back to idle (a fleet without progress for this rollout).
    pub fn reset(&mut self) {
        *self = RolloutController::new(self.cfg.clone(), self.total);
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

    /// Why the rollout aborted, or paused itself on an undecided step; `None` otherwise.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.history.last()
    }

    /// Every judged step of this run, oldest first.
    pub fn history(&self) -> &[Verdict] {
        &self.history
    }

    /// Starts from `Idle`, `Aborted` or `Promoted` and applies `steps[0]`.
    pub fn start(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: Snapshot,
        canary: Snapshot,
    ) -> Result<Split, RolloutError> {
        match self.state {
            RolloutState::Idle | RolloutState::Aborted | RolloutState::Promoted => {}
            RolloutState::Progressing => return Err(RolloutError::Already(self.state)),
            RolloutState::Paused => return Err(RolloutError::PausedFirst),
        }
        self.step = 0;
        self.reason = None;
        self.history.clear();
        self.gates = Gates::new(&self.cfg);
        self.open_window(now, wall, baseline, canary);
        self.pause_if_listed(now, wall);
        Ok(Split::of(self.total, self.weight()))
    }

    /// `Progressing` → `Paused`: ticks do nothing until `resume`.
    pub fn pause(&mut self, now: Instant, wall: SystemTime) -> Result<(), RolloutError> {
        match self.state {
            RolloutState::Progressing => {
                self.enter(RolloutState::Paused, now, wall);
                Ok(())
            }
            RolloutState::Paused => Err(RolloutError::Already(self.state)),
            other => Err(RolloutError::NotProgressing(other)),
        }
    }

    /// `Paused` → `Progressing`; the step's window and dwell restart.
    pub fn resume(
        &mut self,
        now: Instant,
        wall: SystemTime,
        baseline: Snapshot,
        canary: Snapshot,
    ) -> Result<(), RolloutError> {
        match self.state {
            RolloutState::Paused => {
                self.reason = None;
                self.open_window(now, wall, baseline, canary);
                Ok(())
            }
            RolloutState::Progressing => Err(RolloutError::Already(self.state)),
            other => Err(RolloutError::NotPaused(other)),
        }
    }

    /// Jumps to 100%: canary = total, baseline = 0. Refused only when already promoted.
    pub fn promote(&mut self, now: Instant, wall: SystemTime) -> Result<Split, RolloutError> {
        if self.state == RolloutState::Promoted {
            return Err(RolloutError::Already(self.state));
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
    ) -> Result<Split, RolloutError> {
        match self.state {
            RolloutState::Progressing | RolloutState::Paused => {
                Ok(self.enter_aborted(now, wall, reason))
            }
            RolloutState::Aborted | RolloutState::Promoted => {
                Err(RolloutError::Already(self.state))
            }
            RolloutState::Idle => Err(RolloutError::NotRunning),
        }
    }

    /// Judges the current step. Returns the split to apply when the step changes (next step,
    /// promotion) or on a breach (abort); `None` while waiting (for data, checks or hooks),
    /// when the rollout pauses itself on an undecided step (see [`Self::state`]), or when
    /// not progressing.
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
        self.blocked = None;
        let base = baseline.since(&self.window.baseline);
        let can = canary.since(&self.window.canary);
        let at = self.step_percent(self.step);
        if let Some(breach) = self.gates.breach(&self.cfg, at) {
            return Some(self.abort_on(breach, &base, &can, opened, now, wall));
        }
        if can.requests() < self.cfg.min_requests {
            return None;
        }
        let finding = judge::look(&self.cfg, at, &base, &can);
        if let Finding::Breach(breach) = finding {
            return Some(self.abort_on(breach, &base, &can, opened, now, wall));
        }
        if now.saturating_duration_since(opened.at) < self.cfg.interval {
            return None;
        }
        if let Finding::Above(beyond) = finding {
            self.undecided(&beyond, &base, &can, opened, now, wall);
            return None;
        }
        if let Some(blocker) = self.blocker() {
            self.blocked = Some(blocker);
            return None;
        }
        self.note(Outcome::Passed, None, &base, &can, opened, wall);
        if self.step + 1 < self.cfg.steps.len() {
            self.step += 1;
            self.open_window(now, wall, *baseline, *canary);
            self.pause_if_listed(now, wall);
            Some(Split::of(self.total, self.weight()))
        } else {
            Some(self.enter_promoted(now, wall))
        }
    }

    /// Aborts on `breach`, noting the step's verdict.
    fn abort_on(
        &mut self,
        breach: Breach,
        base: &Snapshot,
        can: &Snapshot,
        opened: Since,
        now: Instant,
        wall: SystemTime,
    ) -> Split {
        let reason = breach.to_string();
        self.note(
            Outcome::Breached,
            Some(reason.clone()),
            base,
            can,
            opened,
            wall,
        );
        self.enter_aborted(now, wall, reason)
    }

    /// A step past its dwell with an estimate above a threshold the data do not confirm:
    /// keeps collecting, then pauses the rollout with the figures as its reason.
    fn undecided(
        &mut self,
        beyond: &Beyond,
        base: &Snapshot,
        can: &Snapshot,
        opened: Since,
        now: Instant,
        wall: SystemTime,
    ) {
        let since = self.inconclusive.as_ref().map_or(now, |(since, ..)| *since);
        let longest = self.cfg.interval * INCONCLUSIVE_WAIT_INTERVALS;
        if now.saturating_duration_since(since) < longest {
            self.inconclusive = Some((since, *base, *can));
            return;
        }
        let reason = format!(
            "inconclusive for {} at step {}%: {beyond}, not yet beyond chance",
            humantime::format_duration(longest),
            self.step_percent(self.step),
        );
        self.note(
            Outcome::Inconclusive,
            Some(reason.clone()),
            base,
            can,
            opened,
            wall,
        );
        self.enter(RolloutState::Paused, now, wall);
        self.reason = Some(reason);
    }

    /// What a step whose own figures passed still waits for: a check that has not passed
    /// in its window, then its `step` hooks, then (when the next move gives the canary
    /// 100%) the `confirm-promotion` hooks.
    fn blocker(&self) -> Option<Blocker> {
        let window = self.windows;
        if let Some(i) = self.gates.unpassed_check(&self.cfg, window) {
            return Some(Blocker::Check(i));
        }
        if self
            .gates
            .waiting_hook(&self.cfg, Phase::Step, window)
            .is_some()
        {
            return Some(Blocker::Hooks(Phase::Step));
        }
        let next = match self.cfg.steps.get(self.step + 1) {
            Some(_) => self.step_percent(self.step + 1),
            None => 100,
        };
        let to_full = next >= 100 && self.step_percent(self.step) < 100;
        let confirm = self.gates.waiting_hook(&self.cfg, Phase::Confirm, window);
        (to_full && confirm.is_some()).then_some(Blocker::Hooks(Phase::Confirm))
    }

    /// The checks to query and hooks to call now (`service` fills in the queries). The
    /// caller makes the calls and hands each answer to [`Self::answered`].
    pub fn due(&mut self, service: &str, now: Instant) -> Vec<Due> {
        if self.state != RolloutState::Progressing {
            return Vec::new();
        }
        let phase = match self.blocked {
            Some(Blocker::Hooks(phase)) => Some(phase),
            _ => None,
        };
        self.gates.due(&self.cfg, service, self.windows, phase, now)
    }

    /// Takes in the answer to a call [`Self::due`] asked for; the next tick acts on it.
    pub fn answered(&mut self, answered: Answered, wall: SystemTime) {
        self.gates.answered(&self.cfg, answered, wall);
    }

    /// The step just applied is listed in `pause_at`: the rollout pauses on it, unjudged.
    fn pause_if_listed(&mut self, now: Instant, wall: SystemTime) {
        let at = self.step_percent(self.step);
        if self.cfg.pause_at.contains(&at) {
            self.enter(RolloutState::Paused, now, wall);
            self.reason = Some(format!("paused at step {at}% (pause_at)"));
        }
    }

    /// JSON for `GET /admin/services/{svc}` "rollout".
    pub fn view(&self) -> RolloutView {
        // While progressing: what the step waits for.
        let waiting = match (&self.state, &self.inconclusive) {
            (RolloutState::Progressing, Some((_, base, can))) => {
                let at = self.step_percent(self.step);
                let text = match judge::look(&self.cfg, at, base, can) {
                    Finding::Above(beyond) => format!("{beyond}, not yet beyond chance"),
                    Finding::Breach(breach) => breach.to_string(),
                    Finding::Within => String::new(),
                };
                Some(format!("more data: inconclusive after its dwell, {text}"))
            }
            // Checks or hooks the step waits on; else a check whose latest evaluation was
            // inconclusive, though the step is not yet held by it.
            (RolloutState::Progressing, None) => match self.blocked {
                Some(blocker) => self.gates.describe(&self.cfg, blocker, self.windows),
                None => self.gates.inconclusive(&self.cfg),
            },
            // Paused by pause_at, by an operator or on an undecided step: only `resume`
            // (or `promote`, `abort`) moves it on.
            (RolloutState::Paused, _) => Some("resume".to_string()),
            _ => None,
        };
        RolloutView {
            state: self.state,
            step: self.step,
            weight: self.weight(),
            since: self.since.map(|s| rfc3339(s.wall)),
            reason: self.reason.clone(),
            confidence: self.cfg.confidence,
            waiting_for: waiting,
            last_verdict: self.last_verdict().map(Verdict::view),
            history: self.history.iter().map(Verdict::view).collect(),
            // What the steps are judged against, so a reader of the view (the dashboard)
            // needs no copy of the config.
            baseline: self.cfg.baseline.clone(),
            canary: self.cfg.canary.clone(),
            steps: self.cfg.steps.clone(),
            min_requests: self.cfg.min_requests,
            interval_s: self.cfg.interval.as_secs_f64(),
            checks: self.gates.check_views(&self.cfg),
            hooks: self
                .cfg
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, hook)| crate::api::HookView {
                    name: hook.name.clone(),
                    on: hook.on.as_str().to_string(),
                    last_call: None,
                    outcome: None,
                    detail: None,
                    failures_in_row: self.gates.hook_failures(i),
                })
                .collect(),
        }
    }

    /// Adds the current step's verdict to the history.
    fn note(
        &mut self,
        outcome: Outcome,
        detail: Option<String>,
        base: &Snapshot,
        can: &Snapshot,
        opened: Since,
        at: SystemTime,
    ) {
        if self.history.len() == HISTORY_LIMIT {
            self.history.remove(0);
        }
        self.history.push(Verdict {
            step: self.step,
            weight: self.step_percent(self.step),
            outcome,
            detail,
            canary_requests: can.requests(),
            baseline_requests: base.requests(),
            figures: judge::figures(&self.cfg, base, can),
            started: opened.wall,
            at,
        });
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
        self.windows += 1;
        self.inconclusive = None;
        self.blocked = None;
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

pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;

/// A rollout's progress as saved beside the config (a single switchyard) or in a fleet's
/// shared state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRollout {
    /// Names the rollout config the progress was made under: progress made under another
    /// config (an edited file, another replica's) is not taken over.
    pub config: String,
    #[serde(flatten)]
    pub progress: RolloutRecord,
}
