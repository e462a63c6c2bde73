//! The control task's fleet side: joins the fleet (retrying while etcd is away, serving the
//! file's state meanwhile), follows the fleet's state through a watch task, commits admin
//! changes before they apply, publishes this replica's rollout figures and, while it leads,
//! judges the rollouts on the whole fleet's.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use super::link::{self, Event, Link};
use super::presence::{self, Figures, Roster, WindowFigures};
use super::shared::SharedState;
use super::store::{Store, StoreError, Versioned};
use crate::config::{Cluster, Config};
use crate::control::command::{
    Change, ClusterStatus, ControlError, Guard, RolloutAction, ServiceView, StoreStatus,
};
use crate::control::state::{ControlState, WindowId};
use crate::control::{Fleet, OverFile};
use crate::stats::Snapshot;

/// Between attempts to join while the store is away.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// The least age limit of the fleet's figures for the leader to judge on them (the limit is
/// `lease_ttl`, at least this: a few presence ticks). Older means the store, or this
/// replica's tie to it, is not answering: no judgement.
const FIGURES_FRESH: Duration = Duration::from_secs(2);

type Joined = Result<(Store, Versioned), StoreError>;

/// What the control task waits on besides its commands.
pub enum Wake {
    Joined(Box<Joined>),
    Event(Event),
}

pub struct FleetSide {
    cluster: Cluster,
    link: Option<Link>,
    joining: Option<oneshot::Receiver<Joined>>,
    next_join: Instant,
    events: Option<mpsc::Receiver<Event>>,
    /// Why the last attempt to join failed (before the link exists).
    join_error: Option<String>,
    /// The live replicas, the leader and their figures, as last reported by the presence
    /// task.
    roster: Roster,
    /// This replica's figures for the presence task to publish.
    figures: Option<watch::Sender<Figures>>,
    /// Per progressing rollout: the window it is in and this replica's cumulative baseline
    /// and canary figures when this replica first saw that window.
    bases: HashMap<String, (WindowId, Snapshot, Snapshot)>,
    /// The leader found the fleet's figures too old to judge on (said once in the log).
    stale: bool,
}

impl Fleet for FleetSide {
    type Wake = Wake;

    fn join(config: &Config) -> Option<FleetSide> {
        config.cluster.clone().map(FleetSide::new)
    }

    /// The next thing to act on: a join attempt's outcome or a watch event. Starts a join
    /// attempt when one is due.
    async fn wake(&mut self, state: &ControlState) -> Wake {
        if self.link.is_none() && self.joining.is_none() {
            tokio::time::sleep_until(self.next_join).await;
            let (tx, rx) = oneshot::channel();
            let cluster = self.cluster.clone();
            let seed = SharedState::of(state.config(), state.generation());
            tokio::spawn(async move {
                let joined = async {
                    let mut store = Store::open(&cluster).await?;
                    let (fleet, _seeded) = store.load_or_seed(&seed).await?;
                    Ok((store, fleet))
                };
                let _ = tx.send(joined.await);
            });
            self.joining = Some(rx);
        }
        if let Some(rx) = &mut self.joining {
            let joined = rx.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable("the join attempt stopped".into()))
            });
            self.joining = None;
            return Wake::Joined(Box::new(joined));
        }
        match &mut self.events {
            Some(events) => match events.recv().await {
                Some(event) => Wake::Event(event),
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn on_wake(&mut self, state: &mut ControlState, wake: Wake) {
        self.handle(state, wake);
        // A window opened by what was just adopted counts from now, with the new split.
        self.publish_figures(state);
        self.gauges(state.generation());
    }

    /// An admin change, fleet-wide: 503 while this replica is not in touch with the store.
    async fn change(
        &mut self,
        state: &mut ControlState,
        change: Change,
        guard: &Guard,
    ) -> Result<ServiceView, ControlError> {
        let Some(link) = &mut self.link else {
            let why = self.join_error.as_deref().unwrap_or("joining the fleet");
            return Err(ControlError::StoreUnavailable(format!(
                "cluster store unavailable: {why}"
            )));
        };
        let result = link.change(state, change, guard).await;
        self.publish_figures(state);
        self.gauges(state.generation());
        result
    }

    /// The rollouts' tick: publishes this replica's window figures; on the leader, judges
    /// each progressing rollout on the fleet's summed figures and starts the `auto_start` ones
    /// the fleet has not run. Nothing is judged while the store or the figures are stale: a
    /// rollout neither steps nor aborts on partial data.
    async fn tick(&mut self, state: &mut ControlState) {
        self.publish_figures(state);
        // The presence task reads the figures every 500 ms plus its calls to etcd; older than
        // a lease means it is not getting answers.
        let fresh = self
            .roster
            .read_at
            .is_some_and(|t| t.elapsed() < self.cluster.lease_ttl.max(FIGURES_FRESH));
        let leading = self.roster.leader.as_deref() == Some(self.cluster.name.as_str());
        let Some(link) = &mut self.link else { return };
        // The fleet's state vanished from the store: every replica offers its live state
        // (one wins, the others apply it).
        if link.missing()
            && let Err(e) = link.reseed(state).await
        {
            warn!(error = %e, "the fleet's state is missing from the store and could not be seeded again yet");
            return;
        }
        if !leading || link.down().is_some() || link.invalid().is_some() {
            return;
        }
        let progressing = state.progressing_rollouts();
        if !fresh {
            if !self.stale && !progressing.is_empty() {
                warn!(
                    "the fleet's rollout figures are stale: no rollout is judged until they are read again"
                );
                self.stale = true;
            }
            return;
        }
        self.stale = false;
        for service in progressing {
            let Some((window, ..)) = state.rollout_window(&service) else {
                continue;
            };
            let (baseline, canary) = self.roster.window(&service, window);
            if let Some(judgement) = state.judge_fleet_rollout(&service, &baseline, &canary)
                && let Err(e) = link.commit_judgement(state, &service, judgement).await
            {
                // A store that does not answer would hold every other judgement as long.
                warn!(service = %service, error = %e, "the rollout's judgement was not committed; judging again once the store answers");
                return;
            }
        }
        for service in state.auto_start_candidates() {
            if !link.may_auto_start(state, &service) {
                continue;
            }
            let start = link
                .rollout(
                    state,
                    &service,
                    RolloutAction::Start,
                    &crate::control::state::auto_start(),
                )
                .await;
            if let Err(e) = start {
                warn!(service = %service, error = %e, "rollout auto_start failed");
                if matches!(e, ControlError::StoreUnavailable(_)) {
                    return;
                }
            }
        }
        self.publish_figures(state);
        self.gauges(state.generation());
    }

    /// What a reload puts over the file's live fields once this replica is in the fleet: the
    /// fleet's (the file's own are committed by [`Self::after_reload`] first).
    fn over_file(&self) -> Option<OverFile<'_>> {
        let link = self.link.as_ref()?;
        Some(Box::new(move |config: &mut Config| {
            link.shared().apply_to(config);
        }))
    }

    /// After a reload of the file. When its live fields (weights, active pools, drains)
    /// changed since the file was last read (a ConfigMap update every replica sees), they are
    /// committed to the fleet once: the replica that commits first changes the fleet, the
    /// others find the fleet already there. Otherwise the fleet's live fields stay.
    async fn after_reload(&mut self, state: &mut ControlState, file_before: &Config) {
        let Some(link) = &mut self.link else { return };
        let edited = SharedState::of(state.file_config(), 0);
        if edited == SharedState::of(file_before, 0) {
            link.reassert(state);
            return;
        }
        if let Err(e) = link.commit_file(state, edited).await {
            warn!(error = %e, "the file's new weights, active pools or drains were not applied: the fleet's store did not take them");
        }
        self.gauges(state.generation());
    }

    /// `cluster` in `/admin/status`.
    /// Whether this replica is the fleet's rollout leader now.
    fn leading(&self) -> bool {
        self.roster.leader.as_deref() == Some(self.cluster.name.as_str())
    }

    fn status(&self, generation: u64) -> ClusterStatus {
        ClusterStatus {
            name: self.cluster.name.clone(),
            prefix: self.cluster.prefix.clone(),
            leader: self.roster.leader.clone(),
            members: self.roster.members.clone(),
            store: StoreStatus {
                up: self.up(),
                endpoints: self.cluster.etcd.clone(),
                error: self.error(),
            },
            applied_generation: generation,
            conflicts: self
                .link
                .as_ref()
                .map(|l| l.conflicts().to_vec())
                .unwrap_or_default(),
        }
    }
}

impl FleetSide {
    pub fn new(cluster: Cluster) -> FleetSide {
        FleetSide {
            cluster,
            link: None,
            joining: None,
            next_join: Instant::now(),
            events: None,
            join_error: None,
            roster: Roster::default(),
            figures: None,
            bases: HashMap::new(),
            stale: false,
        }
    }

    fn handle(&mut self, state: &mut ControlState, wake: Wake) {
        match wake {
            Wake::Joined(joined) => self.on_joined(state, *joined),
            Wake::Event(Event::Roster(roster)) => {
                // The store answered the presence task just now: it is up, whatever the
                // last commit's fate (a 504 leaves no other sign that it is back).
                if let Some(link) = &mut self.link {
                    link.on_event(state, Event::Up);
                }
                self.roster = roster;
            }
            Wake::Event(event) => {
                if let Some(link) = &mut self.link {
                    link.on_event(state, event);
                }
            }
        }
    }

    fn on_joined(&mut self, state: &mut ControlState, joined: Joined) {
        match joined {
            Ok((store, fleet)) => {
                let mut joined = Link::new(store, self.cluster.name.clone());
                joined.adopt(state, fleet);
                let (tx, rx) = mpsc::channel(16);
                tokio::spawn(link::watch(
                    self.cluster.clone(),
                    joined.revision(),
                    tx.clone(),
                ));
                let (figures, published) = watch::channel(Figures::default());
                tokio::spawn(presence::run(self.cluster.clone(), tx, published));
                self.figures = Some(figures);
                self.events = Some(rx);
                self.link = Some(joined);
                self.join_error = None;
            }
            Err(e) => {
                warn!(error = %e, "cannot join the fleet yet: serving this replica's file; retrying");
                self.join_error = Some(e.to_string());
                self.next_join = Instant::now() + JOIN_RETRY;
            }
        }
    }

    /// Hands this replica's traffic in each progressing rollout's current window to the
    /// presence task. A window is counted from when this replica first sees it.
    fn publish_figures(&mut self, state: &ControlState) {
        let Some(tx) = &self.figures else { return };
        let mut figures = Figures::default();
        for service in state.progressing_rollouts() {
            let Some((window, baseline, canary)) = state.rollout_window(&service) else {
                continue;
            };
            let base = self
                .bases
                .entry(service.clone())
                .or_insert((window, baseline, canary));
            if base.0 != window {
                *base = (window, baseline, canary);
            }
            let counted = WindowFigures {
                window,
                baseline: baseline.since(&base.1),
                canary: canary.since(&base.2),
            };
            figures.services.insert(service, counted);
        }
        self.bases
            .retain(|service, _| figures.services.contains_key(service));
        tx.send_replace(figures);
    }

    /// Why this replica is not (or no longer) in touch with the fleet, or why the fleet's
    /// state is not applied.
    fn error(&self) -> Option<String> {
        match &self.link {
            Some(link) => link
                .down()
                .map(str::to_owned)
                .or_else(|| link.invalid().map(ToString::to_string)),
            None => self.join_error.clone(),
        }
    }

    /// Joined, and the last call to the store answered.
    fn up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.down().is_none())
    }

    /// Publishes the store's health and the served generation as gauges.
    fn gauges(&self, generation: u64) {
        let up = if self.up() { 1.0 } else { 0.0 };
        metrics::gauge!(crate::metrics::CLUSTER_STORE_UP).set(up);
        metrics::gauge!(crate::metrics::CLUSTER_APPLIED_GENERATION).set(generation as f64);
        let leading = self.roster.leader.as_deref() == Some(self.cluster.name.as_str());
        metrics::gauge!(crate::metrics::CLUSTER_LEADER).set(if leading { 1.0 } else { 0.0 });
        let (invalid, conflicts) = self
            .link
            .as_ref()
            .map_or((false, 0), |l| (l.invalid().is_some(), l.conflicts().len()));
        metrics::gauge!(crate::metrics::CLUSTER_STATE_INVALID).set(if invalid { 1.0 } else { 0.0 });
        metrics::gauge!(crate::metrics::CLUSTER_CONFLICTS).set(conflicts as f64);
    }
}
