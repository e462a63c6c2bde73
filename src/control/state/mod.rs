//! `ControlState`: the live config and what is done with it. Every change builds a new
//! immutable table from a new config and swaps it in with one store.
//!
//! Decisions and effects are apart: what an admin change makes of the config is the pure
//! `transition`, a rollout's next step the pure `RolloutController`; this state checks them
//! against the live one (404, 412, a table that builds) and carries them out through its
//! effects (`effects.rs`: the published table, the config file) and the one audit record.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use indexmap::IndexMap;
use tracing::info;

use super::command::*;
use super::rollout::RolloutController;
use super::transition::{EndpointFacts, Facts, HistoryStep, ServiceSplit, transition};
use crate::config::{Config, Strategy};
use crate::observe::AuditEntry;
use crate::observe::audit::{Actor, LiveFields, RolloutMark, ServiceFields, Touched};
use crate::router::RoutingTable;
use crate::upstream::EndpointState;

/// What [`ControlState::plan`] found.
pub enum Planned {
    /// Nothing to carry out: the answer is ready (a dry run, or the state already asked for).
    Answer(Box<ServiceView>),
    Apply(Box<Plan>),
}

/// A checked change, ready for [`ControlState::apply`].
pub struct Plan {
    pub transition: super::transition::Transition,
    endpoint: Option<Arc<EndpointState>>,
}

/// Where an applied change is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Written into the config file (with `admin.persist`), at the next generation.
    File,
    /// Already committed to the fleet's store, at this generation.
    Fleet(u64),
}

/// How many earlier splits `rollback` can step back through, per service.
const HISTORY: usize = 16;

pub struct ControlState {
    /// The live configuration, admin changes included.
    config: Config,
    generation: u64,
    /// The effects of the state: the table readers see, and the config file.
    published: Published,
    file: FileSide,
    history: IndexMap<String, Vec<ServiceSplit>>,
    /// Automated canaries, by service (those with a `rollout` section).
    rollouts: IndexMap<String, RolloutController>,
    /// The running rollouts' progress as last written beside the config file ("" for none).
    rollouts_text: String,
    /// The TLS certificates, when `server.tls` is set: a reload with a new list loads them.
    certs: Option<Arc<crate::tls::CertStore>>,
    /// Where applied changes are recorded for the live view (`/admin/audit`, `/admin/events`).
    observer: Option<Arc<crate::observe::Observer>>,
    /// The rollouts' gate calls (checks, step and confirm-promotion hooks) and hook log.
    probes: crate::control::probe::Probes,
}

mod effects;
mod reload;
mod rollouts;
#[cfg(test)]
mod tests;

use effects::{FileSide, Published};

pub use reload::ReloadError;
pub use rollouts::{FleetJudgement, RolloutPlan, WindowId, auto_start};

/// Who made a change and what they did, for its audit entry.
pub struct Origin {
    pub actor: Actor,
    pub call: String,
    /// The admin client's address.
    pub caller: Option<String>,
    /// The replica that made the change (in a fleet; this one's name when `None`).
    pub replica: Option<String>,
}

impl Origin {
    /// The origin of `change` made under `guard`: an admin call, unless the control task
    /// made it itself.
    pub fn of(change: &Change, guard: &Guard) -> Origin {
        match &guard.by {
            Some((actor, call)) => Origin {
                actor: *actor,
                call: call.clone(),
                caller: None,
                replica: None,
            },
            None => Origin {
                actor: Actor::Admin,
                call: change.describe(),
                caller: guard.caller.map(|c| c.to_string()),
                replica: None,
            },
        }
    }

    pub fn new(actor: Actor, call: String) -> Origin {
        Origin {
            actor,
            call,
            caller: None,
            replica: None,
        }
    }
}

/// `rfc3339(now)`, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ControlState {
    /// Builds the first table from a config just loaded from `file_text`.
    pub fn new(config: Config, file_text: String) -> Result<Self, crate::router::TableError> {
        let published = Published::first(&config)?;
        Ok(ControlState {
            file: FileSide::loaded(&config, file_text),
            config,
            published,
            generation: 1,
            history: IndexMap::new(),
            rollouts: IndexMap::new(),
            rollouts_text: String::new(),
            certs: None,
            observer: None,
            probes: Default::default(),
        })
        .map(|mut state: ControlState| {
            state.sync_rollouts();
            state
        })
    }

    pub fn tables(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.published.tables()
    }

    pub fn set_cert_store(&mut self, certs: Option<Arc<crate::tls::CertStore>>) {
        self.certs = certs;
    }

    pub fn set_observer(&mut self, observer: Arc<crate::observe::Observer>) {
        self.observer = Some(observer);
    }

    /// Every service's live fields (weights, active pool, drains, rollout position): what
    /// an audit entry's `before` and `after` are cut from.
    pub fn live_fields(&self) -> LiveFields {
        self.config
            .services
            .iter()
            .map(|(name, svc)| {
                let drained: Vec<String> = svc
                    .pool_order()
                    .into_iter()
                    .filter_map(|p| svc.pools.get(p).map(|pool| (p, pool)))
                    .flat_map(|(p, pool)| pool.drained.iter().map(move |a| format!("{p}/{a}")))
                    .collect();
                let fields = ServiceFields {
                    weights: (svc.strategy != Strategy::BlueGreen).then(|| svc.weights.clone()),
                    active: svc.active.clone(),
                    drained: Some(drained),
                    rollout: self.rollouts.get(name).map(|c| RolloutMark {
                        state: c.state().to_string(),
                        step: c.step(),
                    }),
                };
                (name.clone(), fields)
            })
            .collect()
    }

    /// The one place a live change is recorded: one audit log line and one audit entry
    /// (with a `change` event per service it touched), `before` and `after` cut from the
    /// live fields before the change and now.
    pub fn record(&self, origin: Origin, before: &LiveFields) {
        let (service, b, a) = Touched::between(before, &self.live_fields());
        let own = self.config.cluster.as_ref().map(|c| c.name.clone());
        let replica = origin.replica.or(own);
        info!(
            target: "switchyard::audit",
            actor = %origin.actor.as_str(),
            call = %origin.call,
            caller = %origin.caller.as_deref().unwrap_or("-"),
            replica = %replica.as_deref().unwrap_or("-"),
            before = %b.describe(),
            after = %a.describe(),
            generation = self.generation,
            persisted = self.file.persisted,
            "change applied"
        );
        let Some(o) = &self.observer else { return };
        let touched: Vec<String> = match &service {
            Some(s) => vec![s.clone()],
            None => self.config.services.keys().cloned().collect(),
        };
        let mut entry = AuditEntry::now(origin.actor, origin.call);
        entry.caller = origin.caller;
        entry.replica = replica;
        (entry.before, entry.after) = (b, a);
        entry.generation = self.generation;
        entry.service = service;
        let views: Vec<_> = touched
            .iter()
            .filter_map(|s| self.service_view(s).ok())
            .collect();
        o.changed(entry, &views);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config as the file last said (before admin changes).
    pub fn file_config(&self) -> &Config {
        &self.file.config
    }

    pub fn path(&self) -> PathBuf {
        self.config.path.clone()
    }

    // === reads ===

    pub fn service_view(&self, name: &str) -> Result<ServiceView, ControlError> {
        self.view_of(&self.config, name, self.generation, self.file.persisted)
    }

    /// The state of service `name` as `config` describes it, with endpoint state from the
    /// live table (used for dry runs, where `config` is not live).
    fn view_of(
        &self,
        config: &Config,
        name: &str,
        generation: u64,
        persisted: bool,
    ) -> Result<ServiceView, ControlError> {
        let svc = config
            .services
            .get(name)
            .ok_or_else(|| not_found_service(config, name))?;
        let table = self.published.table();
        let mut pools = IndexMap::new();
        let live = table.service_by_name(name).map(|(_, s)| s);
        for pool_name in svc.pool_order() {
            let Some(pool) = svc.pools.get(pool_name) else {
                continue;
            };
            let live_pool = live.and_then(|s| s.pool_by_name(pool_name)).map(|(_, p)| p);
            let endpoints = pool
                .endpoints
                .iter()
                .map(|addr| {
                    let state = live_pool
                        .and_then(|p| p.endpoints.iter().find(|e| &e.address == addr))
                        .or_else(|| self.published.registry.get(name, pool_name, addr));
                    endpoint_view(addr, state.map(|s| &**s))
                })
                .collect();
            pools.insert(pool_name.to_string(), PoolView { endpoints });
        }
        let (active, standby) = match svc.strategy {
            Strategy::BlueGreen => {
                let active = svc.active.clone();
                let standby = svc
                    .pools
                    .keys()
                    .find(|p| Some(*p) != active.as_ref())
                    .cloned();
                (active, standby)
            }
            _ => (None, None),
        };
        Ok(ServiceView {
            name: name.to_string(),
            strategy: svc.strategy.as_str().to_string(),
            generation,
            persisted,
            weights: (svc.strategy != Strategy::BlueGreen).then(|| svc.weights.clone()),
            active,
            standby,
            pools,
            rollout: self.rollout_view(name),
            warnings: Vec::new(),
            dry_run: false,
        })
    }

    pub fn status_view(&self) -> StatusView {
        StatusView {
            config_path: self.config.path.display().to_string(),
            generation: self.generation,
            persisted: self.file.persisted,
            last_reload: self.file.last_reload.clone(),
            restart_required: self.file.restart_required.clone(),
            services: self
                .config
                .services
                .iter()
                .map(|(name, svc)| {
                    let bg = svc.strategy == Strategy::BlueGreen;
                    (
                        name.clone(),
                        ServiceSummary {
                            strategy: svc.strategy.as_str().to_string(),
                            weights: (!bg).then(|| svc.weights.clone()),
                            active: svc.active.clone(),
                        },
                    )
                })
                .collect(),
            cluster: None,
            config_watcher: None,
        }
    }

    // === changes ===

    /// 412 when `If-Match` names another generation; 400 when it is not a number.
    pub(super) fn check_if_match(&self, guard: &Guard) -> Result<(), ControlError> {
        match guard.if_match {
            Some(IfMatch::Malformed) => Err(ControlError::BadRequest(
                "If-Match must be a generation number".into(),
            )),
            Some(IfMatch::Generation(expected)) if expected != self.generation => {
                Err(ControlError::Stale {
                    live: self.generation,
                    expected,
                })
            }
            _ => Ok(()),
        }
    }

    /// Applies (or, with `dry_run`, previews) an admin change: checks (404, then 412), the
    /// pure transition (400, 409), then its effects (endpoint state, history, table, file,
    /// audit).
    pub fn change(&mut self, change: Change, guard: &Guard) -> Result<ServiceView, ControlError> {
        if let Change::Rollout { service, action } = &change {
            return self.rollout_action(service, *action, guard);
        }
        match self.plan(&change, guard)? {
            Planned::Answer(view) => Ok(*view),
            Planned::Apply(plan) => self.apply(&change, guard, *plan, Kept::File),
        }
    }

    /// The checks and the transition of `change`: either the answer already (a dry run, or
    /// nothing to change) or what [`Self::apply`] carries out.
    pub fn plan(&mut self, change: &Change, guard: &Guard) -> Result<Planned, ControlError> {
        let name = change.service().to_string();
        let endpoint = self.check_exists(change)?;
        self.check_if_match(guard)?;
        let facts = Facts {
            history: self.history.get(&name).map_or(&[], Vec::as_slice),
            endpoint: endpoint.as_ref().map(|(_, facts)| *facts),
        };
        let t = transition(&self.config, change, &facts)?;
        // Prove the new config builds before anything changes (nothing registered).
        RoutingTable::validate(&t.next)?;
        if t.unchanged {
            let mut view = self.service_view(&name)?;
            view.warnings = t.warnings;
            view.dry_run = guard.dry_run;
            return Ok(Planned::Answer(Box::new(view)));
        }
        if guard.dry_run {
            let mut view = self.view_of(&t.next, &name, self.generation + 1, false)?;
            if let Some(drain) = t.drain {
                mark_draining(&mut view, change, drain);
            }
            view.warnings = t.warnings;
            view.dry_run = true;
            return Ok(Planned::Answer(Box::new(view)));
        }
        Ok(Planned::Apply(Box::new(Plan {
            transition: t,
            endpoint: endpoint.map(|(state, _)| state),
        })))
    }

    /// Carries out a planned change: the endpoint's drain, the rollback history, the table,
    /// where the change is kept (`kept`) and, on a single instance, the audit entry (in a
    /// fleet, the fleet side records the change once it is served).
    pub fn apply(
        &mut self,
        change: &Change,
        guard: &Guard,
        plan: Plan,
        kept: Kept,
    ) -> Result<ServiceView, ControlError> {
        let before = self.live_fields();
        let view = self.apply_quietly(change, plan, kept)?;
        if kept == Kept::File {
            self.record(Origin::of(change, guard), &before);
        }
        Ok(view)
    }

    /// [`Self::apply`] without the audit entry, for a caller that records the change itself.
    fn apply_quietly(
        &mut self,
        change: &Change,
        plan: Plan,
        kept: Kept,
    ) -> Result<ServiceView, ControlError> {
        let Plan {
            transition: t,
            endpoint,
        } = plan;
        let name = change.service().to_string();
        if let (Some(state), Some(drain)) = (&endpoint, t.drain) {
            state.set_draining(drain);
        }
        let history = self.history_after(&name, &t.history);
        self.history.insert(name.clone(), history);
        self.config = t.next;
        match kept {
            Kept::File => {
                self.publish_as(self.generation + 1)?;
                self.sync_rollouts();
                self.file.persist(&self.config);
            }
            Kept::Fleet(generation) => {
                self.publish_as(generation)?;
                self.sync_rollouts();
                // The fleet's store has the change: that is what "persisted" means there.
                self.file.persisted = true;
            }
        }
        let mut view = self.service_view(&name)?;
        view.warnings = t.warnings;
        Ok(view)
    }

    /// The earlier splits `rollback` can step back through, newest last.
    pub fn rollback_history(&self, service: &str) -> &[ServiceSplit] {
        self.history.get(service).map_or(&[], Vec::as_slice)
    }

    /// `service`'s rollback history once `step` is taken (nothing changes yet).
    pub fn history_after(&self, service: &str, step: &HistoryStep) -> Vec<ServiceSplit> {
        let mut h = self.rollback_history(service).to_vec();
        match step {
            HistoryStep::Keep => {}
            HistoryStep::Push(before) => {
                h.push(before.clone());
                if h.len() > HISTORY {
                    h.remove(0);
                }
            }
            HistoryStep::Pop => {
                h.pop();
            }
        }
        h
    }

    /// Whether the live state is what the file holds, as a predecessor said (`run
    /// --takeover`): its live state is this one's now.
    pub fn set_persisted(&mut self, persisted: bool) {
        self.file.persisted = persisted;
        self.file.live_matches_text = persisted;
    }

    /// Makes `service`'s rollback history a fleet's.
    pub fn set_rollback_history(&mut self, service: &str, history: Vec<ServiceSplit>) {
        if history.is_empty() {
            self.history.shift_remove(service);
        } else {
            self.history.insert(service.to_string(), history);
        }
    }

    /// Replaces the live config with `edit` applied to it and publishes it at `generation`:
    /// the fleet's state, committed by another replica (or found at start).
    pub fn adopt(
        &mut self,
        edit: impl FnOnce(&mut Config),
        generation: u64,
    ) -> Result<(), ControlError> {
        let mut next = self.config.clone();
        edit(&mut next);
        RoutingTable::validate(&next)?;
        // The drains that differ from the live ones, as a reload applies a file's.
        reload::apply_file_drains(&mut self.published.registry, &next, Some(&self.config));
        self.config = next;
        self.publish_as(generation)?;
        self.sync_rollouts();
        self.file.persisted = true;
        Ok(())
    }

    /// Tells the live view every service's state: the fleet's state was just applied here
    /// without changing the generation (a rollout's progress put back, say).
    pub fn announce_all(&self) {
        let Some(o) = &self.observer else { return };
        for name in self.config.services.keys() {
            if let Ok(view) = self.service_view(name) {
                o.publish(
                    "change",
                    &serde_json::json!({ "service": name, "state": view, "audit": null }),
                );
            }
        }
    }

    /// 404 unless the change's service (and, for a drain, its pool and endpoint) exists; for
    /// a drain, the endpoint's live state and what the transition needs to know of it.
    fn check_exists(
        &mut self,
        change: &Change,
    ) -> Result<Option<(Arc<EndpointState>, EndpointFacts)>, ControlError> {
        let name = change.service();
        let Some(svc) = self.config.services.get(name) else {
            return Err(not_found_service(&self.config, name));
        };
        let Change::Drain { pool, address, .. } = change else {
            return Ok(None);
        };
        let p = svc.pools.get(pool).ok_or_else(|| {
            ControlError::NotFound(format!("service {name:?} has no pool {pool:?}"))
        })?;
        if !p.endpoints.contains(address) {
            return Err(ControlError::NotFound(format!(
                "pool {pool:?} of service {name:?} has no endpoint {address:?} (endpoints: {})",
                p.endpoints.join(", ")
            )));
        }
        let state = self.published.registry.endpoint(name, pool, address);
        let others_available = self
            .published
            .table()
            .service_by_name(name)
            .and_then(|(_, s)| s.pool_by_name(pool))
            .map_or(0, |(_, lp)| {
                lp.endpoints
                    .iter()
                    .filter(|e| e.is_available() && e.address != *address)
                    .count()
            });
        let facts = EndpointFacts {
            draining: state.is_draining(),
            others_available,
        };
        Ok(Some((state, facts)))
    }

    /// Builds a table from the live config with `generation` and stores it.
    fn publish_as(&mut self, generation: u64) -> Result<(), ControlError> {
        self.published.publish(&self.config, generation)?;
        self.generation = generation;
        Ok(())
    }
}

/// An endpoint as the service state shows it, from its live state (none yet: healthy, idle).
fn endpoint_view(address: &str, state: Option<&EndpointState>) -> EndpointView {
    EndpointView {
        address: address.to_string(),
        healthy: state.is_none_or(|s| s.is_healthy()),
        draining: state.is_some_and(|s| s.is_draining()),
        ejected_until: state
            .and_then(|s| s.ejected_for())
            .map(|d| timestamp(SystemTime::now() + d)),
        inflight: state.map_or(0, |s| s.inflight()),
    }
}

/// Puts the live figures of `table`'s endpoints (health, drain, ejection, inflight) into a
/// service state made earlier: they move without the control task.
pub fn refresh_endpoints(view: &mut ServiceView, table: &RoutingTable) {
    let Some((_, live)) = table.service_by_name(&view.name) else {
        return;
    };
    for (pool_name, pool) in &mut view.pools {
        let Some((_, live_pool)) = live.pool_by_name(pool_name) else {
            continue;
        };
        for e in &mut pool.endpoints {
            if let Some(state) = live_pool.endpoints.iter().find(|s| s.address == e.address) {
                *e = endpoint_view(&e.address, Some(state));
            }
        }
    }
}

fn mark_draining(view: &mut ServiceView, change: &Change, drain: bool) {
    if let Change::Drain { pool, address, .. } = change
        && let Some(p) = view.pools.get_mut(pool)
    {
        for e in p.endpoints.iter_mut().filter(|e| &e.address == address) {
            e.draining = drain;
        }
    }
}

fn not_found_service(config: &Config, name: &str) -> ControlError {
    let known: Vec<&str> = config.services.keys().map(String::as_str).collect();
    ControlError::NotFound(format!(
        "unknown service {name:?} (services: {})",
        known.join(", ")
    ))
}
