//! The control task's side of the automated canary: feeds each `RolloutController` time and
//! pool snapshots, and applies the splits it asks for as ordinary weight changes (atomic,
//! persisted, audited like an admin PUT).

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::ControlState;
use crate::control::command::{Change, ControlError, Guard, RolloutAction, ServiceView};
use crate::control::rollout::{RolloutController, RolloutState, Split};
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
        let names: Vec<String> = self
            .rollouts
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
            .collect();
        for name in names {
            if let Err(e) = self.rollout_action(&name, RolloutAction::Start, &Guard::default()) {
                warn!(service = %name, error = %e, "rollout auto_start failed");
            }
        }
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

    /// Judges every progressing rollout; applies the split of a step change or an abort.
    pub fn tick_rollouts(&mut self) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let names: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, c)| c.state() == RolloutState::Progressing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let (baseline, canary) = self.rollout_snapshots(&name);
            let Some(controller) = self.rollouts.get_mut(&name) else {
                continue;
            };
            let split = controller.tick(now, wall, &baseline, &canary);
            let (state, weight) = (controller.state(), controller.weight());
            match (state, controller.reason()) {
                (RolloutState::Aborted, Some(reason)) => {
                    warn!(service = %name, %reason, "rollout aborted");
                }
                (RolloutState::Paused, Some(reason)) => {
                    warn!(service = %name, %reason, "rollout paused: the data do not decide the step");
                }
                _ if split.is_some() => {
                    info!(service = %name, state = state.as_str(), weight, "rollout step");
                }
                _ => {}
            }
            if let Some(split) = split {
                self.apply_split(&name, split);
            }
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
        if !self.config.services.contains_key(service) {
            return Err(super::not_found_service(&self.config, service));
        }
        if !self.rollouts.contains_key(service) {
            return Err(ControlError::NotFound(format!(
                "service {service:?} has no [services.{service}.rollout] section"
            )));
        }
        self.check_if_match(guard)?;
        let (baseline, canary) = self.rollout_snapshots(service);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let Some(live) = self.rollouts.get_mut(service) else {
            return Err(ControlError::NotFound(format!(
                "service {service:?} has no rollout"
            )));
        };
        // Dry runs act on a copy.
        let mut copy = guard.dry_run.then(|| live.clone());
        let controller = copy.as_mut().unwrap_or(live);
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
        }
        .map_err(ControlError::Conflict)?;
        let rollout_view = controller.view();
        if guard.dry_run {
            let mut view = self.service_view(service)?;
            view.rollout = Some(rollout_view);
            view.dry_run = true;
            return Ok(view);
        }
        info!(
            target: "switchyard::audit",
            call = %Change::Rollout { service: service.to_string(), action }.describe(),
            caller = %guard.caller.map_or("-".to_string(), |c| c.to_string()),
            generation = self.generation,
            "rollout {}",
            action.as_str()
        );
        if let Some(split) = split {
            self.apply_split(service, split);
        } else {
            self.publish_rollout_weight(service);
        }
        self.service_view(service)
    }

    fn rollout_snapshots(&self, service: &str) -> (Snapshot, Snapshot) {
        let table = self.tables.load();
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
    fn apply_split(&mut self, service: &str, split: Split) {
        let Some(cfg) = self.rollouts.get(service).map(|c| c.config().clone()) else {
            return;
        };
        let change = Change::SetWeights {
            service: service.to_string(),
            weights: Ok(vec![
                (cfg.baseline, split.baseline.into()),
                (cfg.canary, split.canary.into()),
            ]),
        };
        if let Err(e) = self.change(change, &Guard::default()) {
            warn!(service, error = %e, "rollout could not apply its weights");
        }
        self.publish_rollout_weight(service);
    }

    fn publish_rollout_weight(&self, service: &str) {
        if let Some(c) = self.rollouts.get(service) {
            metrics::gauge!(crate::metrics::ROLLOUT_WEIGHT, "service" => service.to_string())
                .set(f64::from(c.weight()));
        }
    }
}
