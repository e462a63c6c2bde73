//! The control task's side of the automated canary: feeds each `RolloutController` time and
//! pool snapshots, and applies the splits it asks for as ordinary weight changes (atomic,
//! persisted, audited like an admin PUT).

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::ControlState;
use crate::control::command::{Change, ControlError, Guard, RolloutAction, ServiceView};
use crate::control::rollout::SavedRollout;
use crate::control::rollout::{RolloutController, RolloutRecord, RolloutState, Split};
use crate::observe::audit::Actor;
use crate::stats::Snapshot;

impl ControlState {
    /// Makes the controllers match the live config: a service whose `rollout` section is
    /// unchanged keeps its controller (and progress); a new or changed one starts idle.
    pub(super) fn sync_rollouts(&mut self) {
        let mut next = indexmap::IndexMap::new();
        for (name, svc) in &self.config.services {
            let Some(cfg) = &svc.rollout else { continue };
            let total = u32::try_from(svc.weight_total()).unwrap_or(u32::MAX);
            let controller = match self.rollouts.shift_remove(name) {
                Some(mut c) if c.config() == cfg => {
                    c.set_total(total);
                    c
                }
                _ => RolloutController::new(cfg.clone(), total),
            };
            next.insert(name.clone(), controller);
        }
        self.rollouts = next;
        for (name, c) in &self.rollouts {
            metrics::gauge!(crate::metrics::ROLLOUT_WEIGHT, "service" => name.clone())
                .set(f64::from(c.weight()));
        }
    }

    /// Starts the rollouts marked `auto_start` that are idle, unless the canary already has
    /// the whole weight (promoted before a restart: starting again would step it back).
    pub fn start_auto_rollouts(&mut self) {
        for name in self.auto_start_candidates() {
            if let Err(e) = self.rollout_action(&name, RolloutAction::Start, &auto_start()) {
                warn!(service = %name, error = %e, "rollout auto_start failed");
            }
        }
    }

    /// Idle rollouts marked `auto_start`, unless the canary already has the whole weight
    /// (a fleet's leader then checks the fleet has not run them).
    pub fn auto_start_candidates(&self) -> Vec<String> {
        self.rollouts
            .iter()
            .filter(|(_, c)| c.config().auto_start && c.state() == RolloutState::Idle)
            .filter(|(n, c)| {
                let weights = self.config.services.get(*n).map(|s| &s.weights);
                let canary = weights
                    .and_then(|w| w.get(&c.config().canary))
                    .copied()
                    .unwrap_or(0);
                let total: u32 = weights.map_or(0, |w| w.values().sum());
                !(total > 0 && canary == total)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// With `admin.persist = true` (and no fleet, whose store keeps it): writes the running
    /// rollouts' progress to the file beside the config when it changed, so that a restart
    /// resumes each at its step, the dwell counted from that step's `since`. Finished
    /// rollouts are not kept: a restart after a promote or abort starts as before.
    pub fn persist_rollouts(&mut self) {
        if !self.config.admin.persist || self.config.cluster.is_some() {
            return;
        }
        let running: indexmap::IndexMap<String, SavedRollout> = self
            .rollout_records()
            .into_iter()
            .filter(|(_, _, r)| matches!(r.state, RolloutState::Progressing | RolloutState::Paused))
            .map(|(name, config, progress)| (name, SavedRollout { config, progress }))
            .collect();
        let text = if running.is_empty() {
            String::new()
        } else {
            serde_json::to_string_pretty(&running).unwrap_or_default()
        };
        if text == self.rollouts_text {
            return;
        }
        let path = crate::config::persist::rollouts_path(&self.config.path);
        let written = if text.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            crate::config::persist::write_atomically(&path, &text)
        };
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "cannot write the rollouts' progress: a restart would not resume them");
        }
        // Tried once per change: a read-only directory is not written to on every tick.
        self.rollouts_text = text;
    }

    /// At start, with `admin.persist = true`: takes up the rollouts a previous run of this
    /// config left running (see [`Self::persist_rollouts`]). A record made under another
    /// `rollout` section than the file's now is not taken.
    pub fn resume_rollouts(&mut self) {
        if !self.config.admin.persist || self.config.cluster.is_some() {
            return;
        }
        let path = crate::config::persist::rollouts_path(&self.config.path);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let saved: indexmap::IndexMap<String, SavedRollout> = match serde_json::from_str(&text) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the rollouts' progress file is unreadable: the rollouts start idle");
                return;
            }
        };
        self.restore_rollouts(|name| {
            let r = saved.get(name)?;
            Some((r.config.as_str(), &r.progress))
        });
        for (name, c) in &self.rollouts {
            if let Some(r) = c.to_record() {
                info!(service = %name, state = ?r.state, step = r.step, "rollout resumed where the previous run left it");
            }
        }
        // The file holds each step's weights when persisting worked; when it did not, the
        // rollout's split wins, as after a reload.
        self.reapply_rollout_splits();
        self.rollouts_text = text;
    }

    /// Applies each running rollout's split where the live weights differ (after a reload).
    pub(super) fn reapply_rollout_splits(&mut self) {
        let wanted: Vec<(String, Split)> = self
            .rollouts
            .iter()
            .filter(|(_, c)| matches!(c.state(), RolloutState::Progressing | RolloutState::Paused))
            .filter_map(|(n, c)| c.split().map(|s| (n.clone(), s)))
            .collect();
        for (name, split) in wanted {
            let Some(cfg) = self.rollouts.get(&name).map(|c| c.config().clone()) else {
                continue;
            };
            let live = self.config.services.get(&name).map(|s| {
                (
                    s.weights.get(&cfg.baseline).copied().unwrap_or(0),
                    s.weights.get(&cfg.canary).copied().unwrap_or(0),
                )
            });
            if live != Some((split.baseline, split.canary)) {
                warn!(service = %name, "the reloaded file changed the weights of a running rollout: the rollout's split stays");
                self.apply_split(&name, split);
            }
        }
    }

    /// A rollout's view, with each webhook's last call as this instance made it.
    pub(super) fn rollout_view(&self, service: &str) -> Option<crate::api::RolloutView> {
        let controller = self.rollouts.get(service)?;
        let mut view = controller.view();
        for hook in &mut view.hooks {
            let call = self.probes.log.last(service, &hook.name);
            let cfg = controller
                .config()
                .webhooks
                .iter()
                .find(|w| w.name == hook.name);
            if let (Some(call), Some(cfg)) = (call, cfg) {
                hook.last_call = Some(super::timestamp(call.at));
                hook.outcome = Some(call.outcome.label().to_string());
                // The same words as the 409 and the log line: `status 500`, `no answer within 1s`.
                hook.detail = (!call.outcome.is_ok()).then(|| call.outcome.describe(cfg));
            }
        }
        Some(view)
    }

    /// Where webhook calls are noted, for the admin handlers' and notifications' calls.
    pub fn hook_log(&self) -> std::sync::Arc<crate::control::hooks::HookLog> {
        self.probes.log.clone()
    }

    /// Hands each rollout the answers its gate calls got since the last look.
    fn take_answers(&mut self) {
        let wall = SystemTime::now();
        for (service, answered) in self.probes.answers() {
            if let Some(c) = self.rollouts.get_mut(&service) {
                c.answered(answered, wall);
            }
        }
    }

    /// Starts the gate calls (checks, step and confirm-promotion hooks) a rollout wants now.
    fn start_probes(&mut self, service: &str, now: Instant) {
        let Some(c) = self.rollouts.get_mut(service) else {
            return;
        };
        let due = c.due(service, now);
        if !due.is_empty() {
            self.probes.start(service, c.config(), &c.view(), due);
        }
    }

    /// Judges every progressing rollout; applies the split of a step change or an abort.
    pub fn tick_rollouts(&mut self) {
        self.take_answers();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let names: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, c)| c.state() == RolloutState::Progressing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let (baseline, canary) = self.rollout_snapshots(&name);
            let before = self.live_fields();
            let Some(controller) = self.rollouts.get_mut(&name) else {
                continue;
            };
            let split = controller.tick(now, wall, &baseline, &canary);
            log_judgement(&name, controller, split.is_some());
            if let Some(split) = split {
                let call = judgement_call(controller);
                if self.apply_split(&name, split) {
                    self.record(super::Origin::new(Actor::Rollout, call), &before);
                }
            }
            self.start_probes(&name, now);
        }
    }

    /// `POST /admin/services/{svc}/rollout/{action}`. 404 without a rollout section, 412 on a
    /// stale If-Match, 409 when the action does not fit the rollout's state.
    pub(super) fn rollout_action(
        &mut self,
        service: &str,
        action: RolloutAction,
        guard: &Guard,
    ) -> Result<ServiceView, ControlError> {
        let plan = self.plan_rollout(service, action, guard)?;
        if guard.dry_run {
            return self.rollout_dry_run(service, &plan);
        }
        let before = self.live_fields();
        self.rollouts.insert(service.to_string(), plan.controller);
        if let Some(split) = plan.split {
            self.apply_split(service, split);
        } else {
            self.publish_rollout_weight(service);
        }
        let change = Change::Rollout {
            service: service.to_string(),
            action,
        };
        self.record(super::Origin::of(&change, guard), &before);
        self.service_view(service)
    }

    /// The checks of a rollout action (404, 412, 409) and the rollout it would leave, on a
    /// copy: nothing changes until the caller installs it (here, or through a fleet's store).
    pub fn plan_rollout(
        &self,
        service: &str,
        action: RolloutAction,
        guard: &Guard,
    ) -> Result<RolloutPlan, ControlError> {
        if !self.config.services.contains_key(service) {
            return Err(super::not_found_service(&self.config, service));
        }
        let Some(live) = self.rollouts.get(service) else {
            return Err(ControlError::NotFound(format!(
                "service {service:?} has no [services.{service}.rollout] section"
            )));
        };
        self.check_if_match(guard)?;
        let (baseline, canary) = self.rollout_snapshots(service);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut controller = live.clone();
        let split = match action {
            RolloutAction::Start => controller.start(now, wall, baseline, canary).map(Some),
            RolloutAction::Pause => controller.pause(now, wall).map(|()| None),
            RolloutAction::Resume => controller
                .resume(now, wall, baseline, canary)
                .map(|()| None),
            RolloutAction::Promote => controller.promote(now, wall).map(Some),
            RolloutAction::Abort => controller
                .abort(
                    now,
                    wall,
                    crate::control::rollout::ADMIN_ABORT_REASON.to_string(),
                )
                .map(Some),
        }?;
        Ok(RolloutPlan { controller, split })
    }

    /// The answer to a dry run of a rollout action: the service as it is, with the rollout
    /// the action would leave.
    pub fn rollout_dry_run(
        &self,
        service: &str,
        plan: &RolloutPlan,
    ) -> Result<ServiceView, ControlError> {
        let mut view = self.service_view(service)?;
        view.rollout = Some(plan.controller.view());
        view.dry_run = true;
        Ok(view)
    }

    // === a fleet's rollouts ===

    /// Each started rollout's progress, with the digest of the config it runs under.
    pub fn rollout_records(&self) -> Vec<(String, String, RolloutRecord)> {
        self.rollouts
            .iter()
            .filter_map(|(name, c)| {
                let record = c.to_record()?;
                Some((name.clone(), digest(c.config()), record))
            })
            .collect()
    }

    /// Makes every rollout's progress the fleet's. A record made under another rollout config
    /// than this replica's file has (a file behind or ahead of the fleet's) is not taken: the
    /// rollout is idle here, and the weights are the fleet's all the same.
    pub fn restore_rollouts<'a>(
        &mut self,
        mut record_of: impl FnMut(&str) -> Option<(&'a str, &'a RolloutRecord)>,
    ) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        for (name, c) in &mut self.rollouts {
            match record_of(name) {
                // Also when the record is this controller's own (the leader's judgement, just
                // committed): restoring empties its window, as a fleet's figures count.
                Some((d, record)) if d == digest(c.config()) => c.restore(record, now, wall),
                Some(_) => {
                    warn!(service = %name, "the fleet's rollout runs under another rollout config than this replica's file: shown as idle here");
                    c.reset();
                }
                None => c.reset(),
            }
        }
        let names: Vec<String> = self.rollouts.keys().cloned().collect();
        for name in names {
            self.publish_rollout_weight(&name);
        }
    }

    /// This replica's cumulative figures for a rollout's baseline and canary, and the window
    /// its rollout is in (`None` unless progressing).
    pub fn rollout_window(&self, service: &str) -> Option<(WindowId, Snapshot, Snapshot)> {
        let c = self.rollouts.get(service)?;
        let record = c.to_record()?;
        if record.state != RolloutState::Progressing {
            return None;
        }
        let (baseline, canary) = self.rollout_snapshots(service);
        Some((WindowId::of(&record), baseline, canary))
    }

    /// The digest of `service`'s rollout config, if it has a rollout section.
    pub fn rollout_digest(&self, service: &str) -> Option<String> {
        self.rollouts.get(service).map(|c| digest(c.config()))
    }

    /// Rollouts that are progressing, by service.
    pub fn progressing_rollouts(&self) -> Vec<String> {
        self.rollouts
            .iter()
            .filter(|(_, c)| c.state() == RolloutState::Progressing)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Judges a fleet's progressing rollout on the whole fleet's window figures (the
    /// leader's job). When the judgement changes the rollout (a step, a promotion, an abort,
    /// a pause), returns what to commit; the caller then adopts the committed state, or puts
    /// `before` back when the store did not take it.
    pub fn judge_fleet_rollout(
        &mut self,
        service: &str,
        baseline: &Snapshot,
        canary: &Snapshot,
    ) -> Option<FleetJudgement> {
        self.take_answers();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let controller = self.rollouts.get_mut(service)?;
        let before = controller.to_record()?;
        let split = controller.tick(now, wall, baseline, canary);
        // Only the leader judges, so only the leader queries and calls gate hooks.
        self.start_probes(service, now);
        let controller = self.rollouts.get_mut(service)?;
        let after = controller.to_record()?;
        if after == before {
            return None;
        }
        Some(FleetJudgement {
            split,
            record: after,
            digest: digest(controller.config()),
            before,
        })
    }

    /// Logs a fleet rollout's judgement on the leader once it is committed (its audit
    /// entry is made where the committed state is applied); `stepped`: the split moved.
    pub fn log_fleet_judgement(&self, service: &str, stepped: bool) {
        if let Some(c) = self.rollouts.get(service) {
            log_judgement(service, c, stepped);
        }
    }

    /// What a rollout's latest judgement did, as an audit entry's `call`.
    pub fn rollout_call(&self, service: &str) -> String {
        self.rollouts
            .get(service)
            .map_or_else(|| "rollout".to_string(), judgement_call)
    }

    /// Puts a rollout's progress back (its judgement was not committed).
    pub fn put_back_rollout(&mut self, service: &str, before: &RolloutRecord) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        if let Some(c) = self.rollouts.get_mut(service) {
            c.restore(before, now, wall);
        }
    }

    /// The pools a service's rollout weighs: (baseline, canary).
    pub fn rollout_pools(&self, service: &str) -> Option<(String, String)> {
        let cfg = self.rollouts.get(service)?.config();
        Some((cfg.baseline.clone(), cfg.canary.clone()))
    }

    fn rollout_snapshots(&self, service: &str) -> (Snapshot, Snapshot) {
        let table = self.published.table();
        let snapshot = |pool: &str| {
            table
                .service_by_name(service)
                .and_then(|(_, s)| s.pool_by_name(pool))
                .map(|(_, p)| p.metrics.stats.snapshot())
                .unwrap_or_default()
        };
        match self.rollouts.get(service).map(|c| c.config()) {
            Some(cfg) => (snapshot(&cfg.baseline), snapshot(&cfg.canary)),
            None => (Snapshot::default(), Snapshot::default()),
        }
    }

    /// Sets baseline and canary weights like an admin PUT (no If-Match: the controller owns
    /// the split while it runs).
    /// Applies a rollout's split; the caller records the change. `false` when it could not
    /// be applied (or changed nothing).
    fn apply_split(&mut self, service: &str, split: Split) -> bool {
        let Some(cfg) = self.rollouts.get(service).map(|c| c.config().clone()) else {
            return false;
        };
        let change = Change::SetWeights {
            service: service.to_string(),
            weights: Ok(vec![
                (cfg.baseline, split.baseline.into()),
                (cfg.canary, split.canary.into()),
            ]),
        };
        let applied = match self.plan(&change, &Guard::default()) {
            Ok(super::Planned::Apply(plan)) => self
                .apply_quietly(&change, *plan, super::Kept::File)
                .map(|_| true),
            Ok(super::Planned::Answer(_)) => Ok(false),
            Err(e) => Err(e),
        };
        self.publish_rollout_weight(service);
        applied.unwrap_or_else(|e| {
            warn!(service, error = %e, "rollout could not apply its weights");
            false
        })
    }

    fn publish_rollout_weight(&self, service: &str) {
        if let Some(c) = self.rollouts.get(service) {
            metrics::gauge!(crate::metrics::ROLLOUT_WEIGHT, "service" => service.to_string())
                .set(f64::from(c.weight()));
        }
    }
}

/// A checked rollout action: the rollout it leaves and the split to apply with it.
pub struct RolloutPlan {
    pub controller: RolloutController,
    pub split: Option<Split>,
}

impl RolloutPlan {
    /// The progress to share, with its config's digest.
    pub fn record(&self) -> Option<(String, RolloutRecord)> {
        Some((
            digest(self.controller.config()),
            self.controller.to_record()?,
        ))
    }
}

/// A fleet rollout's judgement that changed it: what to commit, and what to put back.
pub struct FleetJudgement {
    pub split: Option<Split>,
    pub record: RolloutRecord,
    pub digest: String,
    pub before: RolloutRecord,
}

/// Names a rollout config: a replica takes a fleet's progress only for the config it runs.
/// Each field is written out by name (not a `Debug` print, which may change between builds),
/// so replicas of different versions with the same section agree.
fn digest(cfg: &crate::config::Rollout) -> String {
    use md5::Digest as _;
    let text = format!(
        "baseline={}\ncanary={}\nsteps={}\ninterval_ms={}\nmin_requests={}\nmax_error_rate={}\n\
         max_error_rate_increase={}\nmax_p99_increase_us={}\nconfidence={}\nauto_start={}",
        cfg.baseline,
        cfg.canary,
        cfg.steps
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        cfg.interval.as_millis(),
        cfg.min_requests,
        cfg.max_error_rate.map_or("-".into(), |v| v.to_string()),
        cfg.max_error_rate_increase
            .map_or("-".into(), |v| v.to_string()),
        cfg.max_p99_increase
            .map_or("-".into(), |v| v.as_micros().to_string()),
        cfg.confidence,
        cfg.auto_start,
    );
    // Keys added later are written only when set, so a section without them keeps the
    // digest older replicas compute.
    let mut text = text;
    if let Some(max) = cfg.max_p99 {
        text += &format!("\nmax_p99_us={}", max.as_micros());
    }
    if !cfg.pause_at.is_empty() {
        let list: Vec<String> = cfg.pause_at.iter().map(u32::to_string).collect();
        text += &format!("\npause_at={}", list.join(","));
    }
    if let Some(prom) = &cfg.prometheus {
        text += &format!("\nprometheus={}", prom.url);
    }
    for c in &cfg.checks {
        let bound = |b: Option<f64>| b.map_or("-".into(), |v| v.to_string());
        text += &format!(
            "\ncheck={}|{}|{}|{}|{}",
            c.name,
            c.query,
            bound(c.min),
            bound(c.max),
            c.failures
        );
    }
    let hash = md5::Md5::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names a rollout's current window for a fleet: its number in the run and when it opened, so
/// a window of a later run (numbers start again) is never taken for one of an earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowId {
    pub window: u64,
    /// Milliseconds since the Unix epoch.
    pub opened_ms: u64,
}

impl WindowId {
    fn of(record: &RolloutRecord) -> WindowId {
        let opened_ms = record
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WindowId {
            window: record.window,
            opened_ms,
        }
    }
}

/// The log line of a judgement that changed a rollout.
fn log_judgement(service: &str, controller: &RolloutController, stepped: bool) {
    let (state, weight) = (controller.state(), controller.weight());
    match (state, controller.reason()) {
        (RolloutState::Aborted, Some(reason)) => {
            warn!(service, %reason, "rollout aborted");
        }
        (RolloutState::Paused, Some(reason)) if stepped => {
            info!(service, %reason, weight, "rollout step, paused (pause_at)");
        }
        (RolloutState::Paused, Some(reason)) => {
            warn!(service, %reason, "rollout paused: the data do not decide the step");
        }
        _ if stepped => {
            info!(service, state = state.as_str(), weight, "rollout step");
        }
        _ => {}
    }
}

/// What a rollout's latest judgement did, in words: `rollout step 2 of 4 (25%)`, `rollout
/// promoted (100%)`, `rollout aborted: <reason>`.
fn judgement_call(c: &RolloutController) -> String {
    match c.state() {
        RolloutState::Promoted => format!("rollout promoted ({}%)", c.weight()),
        RolloutState::Aborted => format!("rollout aborted: {}", c.reason().unwrap_or("-")),
        RolloutState::Paused => format!("rollout paused: {}", c.reason().unwrap_or("-")),
        _ => format!(
            "rollout step {} of {} ({}%)",
            c.step() + 1,
            c.config().steps.len(),
            c.weight()
        ),
    }
}

/// The guard of a rollout the controller starts by itself (`auto_start`).
pub fn auto_start() -> Guard {
    Guard {
        by: Some((Actor::Rollout, "rollout start (auto_start)".to_string())),
        ..Guard::default()
    }
}
