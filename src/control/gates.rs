//! A rollout's gates besides its own figures: Prometheus checks and the `step` and
//! `confirm-promotion` webhooks. Pure bookkeeping: the controller says what is due, the
//! control side makes the calls off the data path (`probe`) and hands the answers back.
//!
//! - A check is asked when a step's window opens and then once per `interval` while the
//!   rollout progresses. A value outside `min`/`max` is a failure, `failures` of them in a
//!   row abort; a value within resets the count; an inconclusive reading (Prometheus
//!   unreachable, not one number) leaves the count as it is and never passes.
//! - A step passes only when every check's latest reading was taken in its window and passed.
//! - Hooks of the phase the step waits on are called at once, then again every `interval`
//!   until they answer 2xx in this window. Three `step` failures in a row abort; a failing
//!   `confirm-promotion` only keeps the rollout waiting.

use std::time::SystemTime;

use tokio::time::Instant;

use super::hooks::HookOutcome;
use super::judge::{Bound, Breach};
use crate::api::{CheckState, CheckView};
use crate::config::{HookMoment, Rollout};

/// `step` hook failures in a row that abort the rollout.
pub const STEP_HOOK_FAILURES: u32 = 3;

/// What one evaluation of a check gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Value(f64),
    /// Neither a pass nor a failure: why, in words.
    Inconclusive(String),
}

/// A call the controller wants made, for the window it is in.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub window: u64,
    pub ask: Ask,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Query check `index` (into `checks`) with its placeholders filled in.
    Check { index: usize, query: String },
    /// Call webhook `index` (into `webhooks`).
    Hook { index: usize },
}

/// The answer to a [`Due`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub window: u64,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Check { index: usize, reading: Reading },
    Hook { index: usize, outcome: HookOutcome },
}

/// Which hooks a step that passed its judgement waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Step,
    Confirm,
}

impl Phase {
    fn moment(self) -> HookMoment {
        match self {
            Phase::Step => HookMoment::Step,
            Phase::Confirm => HookMoment::ConfirmPromotion,
        }
    }
}

/// What a step whose own figures passed still waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    Check(usize),
    Hooks(Phase),
}

#[derive(Debug, Clone, Default)]
struct CheckGate {
    last: Option<Reading>,
    /// The window the last reading was asked in, and when it came.
    window: u64,
    at: Option<SystemTime>,
    failures: u32,
    asked: Option<(u64, Instant)>,
    in_flight: bool,
}

#[derive(Debug, Clone, Default)]
struct HookGate {
    /// The window it last answered 2xx in.
    passed: Option<u64>,
    failures: u32,
    last: Option<HookOutcome>,
    asked: Option<(u64, Instant)>,
    in_flight: bool,
}

/// The state of a rollout's checks and gate hooks, parallel to its config's lists.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    checks: Vec<CheckGate>,
    hooks: Vec<HookGate>,
}

/// Due when never asked in this window, or asked at least `interval` ago.
fn due_again(asked: Option<(u64, Instant)>, window: u64, now: Instant, cfg: &Rollout) -> bool {
    asked.is_none_or(|(w, at)| w != window || now.saturating_duration_since(at) >= cfg.interval)
}

impl Gates {
    pub fn new(cfg: &Rollout) -> Gates {
        Gates {
            checks: vec![CheckGate::default(); cfg.checks.len()],
            hooks: vec![HookGate::default(); cfg.webhooks.len()],
        }
    }

    /// The checks to query now and, when a step waits on hooks (`phase`), the hooks to call.
    pub fn due(
        &mut self,
        cfg: &Rollout,
        service: &str,
        window: u64,
        phase: Option<Phase>,
        now: Instant,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        for (index, (gate, check)) in self.checks.iter_mut().zip(&cfg.checks).enumerate() {
            if gate.in_flight || !due_again(gate.asked, window, now, cfg) {
                continue;
            }
            gate.in_flight = true;
            gate.asked = Some((window, now));
            let query = check
                .query
                .replace("$service", service)
                .replace("$canary", &cfg.canary)
                .replace("$baseline", &cfg.baseline);
            due.push(Due {
                window,
                ask: Ask::Check { index, query },
            });
        }
        let Some(phase) = phase else { return due };
        for (index, (gate, hook)) in self.hooks.iter_mut().zip(&cfg.webhooks).enumerate() {
            let waiting = hook.on == phase.moment() && gate.passed != Some(window);
            if !waiting || gate.in_flight || !due_again(gate.asked, window, now, cfg) {
                continue;
            }
            gate.in_flight = true;
            gate.asked = Some((window, now));
            due.push(Due {
                window,
                ask: Ask::Hook { index },
            });
        }
        due
    }

    /// Takes an answer in. A hook's answer for an earlier window only frees its slot: the
    /// step it was about is gone.
    pub fn answered(&mut self, cfg: &Rollout, answered: Answered, wall: SystemTime) {
        match answered.answer {
            Answer::Check { index, reading } => {
                let (Some(gate), Some(check)) = (self.checks.get_mut(index), cfg.checks.get(index))
                else {
                    return;
                };
                gate.in_flight = false;
                if let Reading::Value(v) = reading {
                    match Bound::broken(check.min, check.max, v) {
                        Some(_) => gate.failures += 1,
                        None => gate.failures = 0,
                    }
                }
                gate.last = Some(reading);
                gate.window = answered.window;
                gate.at = Some(wall);
            }
            Answer::Hook { index, outcome } => {
                let Some(gate) = self.hooks.get_mut(index) else {
                    return;
                };
                gate.in_flight = false;
                if outcome.is_ok() {
                    gate.failures = 0;
                    gate.passed = Some(answered.window);
                } else {
                    gate.failures += 1;
                }
                gate.last = Some(outcome);
            }
        }
    }

    /// A check or `step` hook that failed often enough in a row to abort, at step `at`%.
    pub fn breach(&self, cfg: &Rollout, at: u32) -> Option<Breach> {
        for (gate, check) in self.checks.iter().zip(&cfg.checks) {
            if gate.failures < check.failures {
                continue;
            }
            if let Some(Reading::Value(value)) = gate.last
                && let Some(bound) = Bound::broken(check.min, check.max, value)
            {
                return Some(Breach::Check {
                    name: check.name.clone(),
                    value,
                    bound,
                    failures: gate.failures,
                    at,
                });
            }
        }
        let hooks = self.hooks.iter().zip(&cfg.webhooks);
        let (gate, hook) = hooks
            .filter(|(_, h)| h.on == HookMoment::Step)
            .find(|(g, _)| g.failures >= STEP_HOOK_FAILURES)?;
        Some(Breach::Hook {
            name: hook.name.clone(),
            outcome: gate
                .last
                .as_ref()
                .map_or(String::new(), |o| o.describe(hook)),
            failures: gate.failures,
            at,
        })
    }

    /// The first check that has not passed in `window`: its latest reading is from before it,
    /// failed, or was inconclusive.
    pub fn unpassed_check(&self, cfg: &Rollout, window: u64) -> Option<usize> {
        self.checks
            .iter()
            .zip(&cfg.checks)
            .position(|(gate, check)| {
                let passed = matches!(gate.last, Some(Reading::Value(v))
                if Bound::broken(check.min, check.max, v).is_none());
                !(passed && gate.window == window)
            })
    }

    /// The first hook of `phase` that has not answered 2xx in `window`.
    pub fn waiting_hook(&self, cfg: &Rollout, phase: Phase, window: u64) -> Option<usize> {
        self.hooks
            .iter()
            .zip(&cfg.webhooks)
            .position(|(gate, hook)| hook.on == phase.moment() && gate.passed != Some(window))
    }

    /// What `waiting_for` says about a blocker.
    pub fn describe(&self, cfg: &Rollout, blocker: Blocker, window: u64) -> Option<String> {
        match blocker {
            Blocker::Check(i) => {
                let (gate, check) = (self.checks.get(i)?, cfg.checks.get(i)?);
                let state = match &gate.last {
                    Some(Reading::Inconclusive(why)) => format!("inconclusive ({why})"),
                    Some(Reading::Value(v)) if gate.window == window => {
                        match Bound::broken(check.min, check.max, *v) {
                            Some(bound) => format!("failing ({v} {bound})"),
                            None => "passing".to_string(),
                        }
                    }
                    _ => "no value at this step yet".to_string(),
                };
                Some(format!("check {}: {state}", check.name))
            }
            Blocker::Hooks(phase) => {
                let i = self.waiting_hook(cfg, phase, window)?;
                let (gate, hook) = (self.hooks.get(i)?, cfg.webhooks.get(i)?);
                Some(match &gate.last {
                    Some(outcome) if !outcome.is_ok() => {
                        format!("webhook {} ({})", hook.name, outcome.describe(hook))
                    }
                    _ => format!("webhook {}", hook.name),
                })
            }
        }
    }

    /// The first check whose latest reading is inconclusive, in words for `waiting_for`.
    pub fn inconclusive(&self, cfg: &Rollout) -> Option<String> {
        let (_, check, why) =
            self.checks
                .iter()
                .zip(&cfg.checks)
                .find_map(|(g, c)| match &g.last {
                    Some(Reading::Inconclusive(why)) => Some((g, c, why)),
                    _ => None,
                })?;
        Some(format!("check {}: inconclusive ({why})", check.name))
    }

    /// The checks as the rollout's view shows them.
    pub fn check_views(&self, cfg: &Rollout) -> Vec<CheckView> {
        self.checks
            .iter()
            .zip(&cfg.checks)
            .map(|(gate, check)| {
                let (value, state, detail) = match &gate.last {
                    None => (None, CheckState::Pending, None),
                    Some(Reading::Inconclusive(why)) => {
                        (None, CheckState::Inconclusive, Some(why.clone()))
                    }
                    Some(Reading::Value(v)) => match Bound::broken(check.min, check.max, *v) {
                        Some(bound) => {
                            (Some(*v), CheckState::Failing, Some(format!("{v} {bound}")))
                        }
                        None => (Some(*v), CheckState::Ok, None),
                    },
                };
                CheckView {
                    name: check.name.clone(),
                    value,
                    min: check.min,
                    max: check.max,
                    state,
                    detail,
                    failures_in_row: gate.failures,
                    failures: check.failures,
                    at: gate.at.map(super::rollout::rfc3339),
                }
            })
            .collect()
    }

    /// Failures in a row of each hook (only gate hooks count them).
    pub fn hook_failures(&self, index: usize) -> u32 {
        self.hooks.get(index).map_or(0, |g| g.failures)
    }
}
