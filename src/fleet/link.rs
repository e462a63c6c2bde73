//! A replica's tie to its fleet, used by the control task: admin changes are committed to
//! etcd before they are applied, and what other replicas commit is applied as it arrives.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::shared::{ChangeNote, InvalidState, SharedState};
use super::store::{Commit, Seen, Store, StoreError, Versioned};
use crate::config::{Cluster, Config};
use crate::control::command::{Change, ControlError, Guard, RolloutAction, ServiceView};
use crate::control::rollout::SavedRollout;
use crate::control::rollout::Split;
use crate::control::state::{ControlState, FleetJudgement, Kept, Origin, Planned};
use crate::observe::audit::Actor;

/// How many times a change is computed again when another replica committed first (without
/// `If-Match`, a change applies to whatever the fleet's state is when it commits).
const COMMIT_ATTEMPTS: usize = 5;

/// What the watch task tells the control task.
#[derive(Debug)]
pub enum Event {
    /// A new version of the fleet's state, from the watch.
    State(Versioned),
    /// The whole state as a fresh read found it (after a reconnect): authoritative even if
    /// its revision is lower than the one served (etcd was replaced by an empty one).
    Read(Versioned),
    /// The store stopped answering; the replica keeps its last state.
    Down(String),
    /// The store answers, and holds no state under the prefix (deleted, or etcd wiped).
    Missing,
    /// The store answers (to the presence task's calls).
    Up,
    /// The live replicas and the leader.
    Roster(super::presence::Roster),
}

pub struct Link {
    store: Store,
    /// This replica's name in the fleet.
    me: String,
    /// The revision of the fleet's state this replica serves (or of the invalid value it
    /// refused to apply: the next commit replaces that), and the state it serves.
    revision: i64,
    current: SharedState,
    /// Why the store is unusable now, if it is.
    down: Option<String>,
    /// Why the fleet's state as last read is not applied, if it is not.
    invalid: Option<Box<InvalidState>>,
    /// The key holding the fleet's state is gone: it is seeded again from this replica's
    /// live state on the next tick.
    missing: bool,
    /// The store holds a state of a lower generation than this replica has served (seeded
    /// again by a replica that was behind): this replica commits its own above both.
    behind: bool,
    /// Where this replica's file and the fleet's state disagree.
    conflicts: Vec<String>,
    /// The latest generation this replica recorded in its audit log: each served generation
    /// is recorded once, whoever made it.
    audited: u64,
}

impl Link {
    /// A link over a connected store; [`Link::adopt`] the fleet's state next.
    pub fn new(store: Store, me: String) -> Link {
        Link {
            store,
            me,
            revision: 0,
            current: SharedState::default(),
            down: None,
            invalid: None,
            missing: false,
            behind: false,
            conflicts: Vec::new(),
            audited: 0,
        }
    }

    /// Why the fleet's state is not applied, if it is not.
    pub fn invalid(&self) -> Option<&InvalidState> {
        self.invalid.as_deref()
    }

    pub fn conflicts(&self) -> &[String] {
        &self.conflicts
    }

    /// The note a commit of this replica carries.
    fn note(&self, actor: Actor, call: String, caller: Option<String>) -> ChangeNote {
        ChangeNote {
            replica: self.me.clone(),
            actor,
            call,
            caller,
        }
    }

    /// The fleet's state as this replica last read or committed it.
    pub fn shared(&self) -> &SharedState {
        &self.current
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Why the store is unusable, if it is.
    pub fn down(&self) -> Option<&str> {
        self.down.as_deref()
    }

    /// Applies an admin change fleet-wide: computed on the fleet's current state, committed
    /// to etcd (compared on its revision), then applied here. 503 when the store does not
    /// answer: the change is applied nowhere.
    pub async fn change(
        &mut self,
        state: &mut ControlState,
        change: Change,
        guard: &Guard,
    ) -> Result<ServiceView, ControlError> {
        if let Change::Rollout { service, action } = &change {
            return self.rollout(state, service, *action, guard).await;
        }
        for _ in 0..COMMIT_ATTEMPTS {
            let plan = match state.plan(&change, guard)? {
                Planned::Answer(view) => return Ok(*view),
                Planned::Apply(plan) => *plan,
            };
            let generation = state.generation() + 1;
            let mut next = self.merged(SharedState::of(&plan.transition.next, generation));
            let service = change.service();
            if let Some(svc) = next.services.get_mut(service) {
                svc.history = state.history_after(service, &plan.transition.history);
            }
            let origin = Origin::of(&change, guard);
            next.last = Some(self.note(origin.actor, origin.call.clone(), origin.caller.clone()));
            let before_generation = state.generation();
            match self.store.commit(self.revision, &next).await {
                Ok(Commit::Done(done)) => {
                    self.revision = done.revision;
                    self.current = done.state;
                    self.down = None;
                    self.invalid = None;
                    let before = state.live_fields();
                    match state.apply(&change, guard, plan, Kept::Fleet(generation)) {
                        Ok(view) => {
                            state.record(origin, &before);
                            self.audited = self.audited.max(generation);
                            return Ok(view);
                        }
                        // The fleet has the change whatever happened here: answering an
                        // error would report as failed a change every other replica applies.
                        // Serve the fleet's state the way a watched commit is served.
                        Err(e) => {
                            warn!(error = %e, "a committed change did not apply directly; serving the fleet's state instead");
                            self.reassert(state);
                            return state.service_view(change.service());
                        }
                    }
                }
                // Someone else committed first: take their state, then the If-Match check
                // (in `plan`) answers 412, or the change is computed again on it.
                Ok(Commit::Conflict(now)) => {
                    self.down = None;
                    self.adopt(state, now);
                }
                // Nothing to compare with: seed the key again from the live state first.
                Ok(Commit::Missing) => {
                    self.down = None;
                    self.missing = true;
                    self.reseed(state).await?;
                }
                Err(e) => return Err(self.failed(e, before_generation)),
            }
        }
        Err(ControlError::Conflict(
            "the fleet's state kept changing while this change was committed; try again".into(),
        ))
    }

    /// The answer to a commit the store did not take: 503 when it never reached the store
    /// (it will never apply), 504 when it was sent and no answer came (it may still apply;
    /// if it does, it is applied and audited like any other change).
    fn failed(&mut self, e: StoreError, generation: u64) -> ControlError {
        self.down = Some(e.to_string());
        match e {
            StoreError::Unknown(why) => ControlError::OutcomeUnknown {
                why: format!("{why}; the change may still apply (read the state before retrying)"),
                generation,
            },
            other => ControlError::StoreUnavailable(other.to_string()),
        }
    }

    /// Drives a rollout fleet-wide: the action is checked and carried out on a copy, the
    /// rollout's progress and split committed to etcd, then applied here (and by the watch,
    /// on every other replica).
    pub async fn rollout(
        &mut self,
        state: &mut ControlState,
        service: &str,
        action: RolloutAction,
        guard: &Guard,
    ) -> Result<ServiceView, ControlError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let plan = state.plan_rollout(service, action, guard)?;
            if guard.dry_run {
                return state.rollout_dry_run(service, &plan);
            }
            let Some((config, progress)) = plan.record() else {
                return Err(ControlError::Conflict(format!(
                    "the rollout of {service:?} has no progress to share"
                )));
            };
            let origin = Origin::of(
                &Change::Rollout {
                    service: service.to_string(),
                    action,
                },
                guard,
            );
            let mut next = self.with_rollout(
                state,
                service,
                SavedRollout { config, progress },
                plan.split,
            );
            next.last = Some(self.note(origin.actor, origin.call, origin.caller));
            match self.commit(state, next).await? {
                true => return state.service_view(service),
                // Another replica committed first: check and carry out the action again on
                // the fleet's state (If-Match then answers 412).
                false => continue,
            }
        }
        Err(ControlError::Conflict(
            "the fleet's state kept changing while this change was committed; try again".into(),
        ))
    }

    /// Whether the leader may start `service`'s rollout for `auto_start`: when the fleet has
    /// never run it, or its last run (under another rollout config) has ended. A run in
    /// progress under another config is left alone: this replica's file is behind or ahead
    /// of the fleet's, and the run goes on once the files agree.
    pub fn may_auto_start(&self, state: &ControlState, service: &str) -> bool {
        use crate::control::rollout::RolloutState;
        let shared = self
            .current
            .services
            .get(service)
            .and_then(|s| s.rollout.as_ref());
        match shared {
            None => true,
            Some(r) => {
                let ended = matches!(
                    r.progress.state,
                    RolloutState::Promoted | RolloutState::Aborted | RolloutState::Idle
                );
                ended && state.rollout_digest(service).as_deref() != Some(r.config.as_str())
            }
        }
    }

    /// Commits the leader's judgement of a rollout. When the store does not take it (it
    /// failed, or another replica committed first), the rollout's progress is put back and
    /// the next judgement decides again.
    pub async fn commit_judgement(
        &mut self,
        state: &mut ControlState,
        service: &str,
        judgement: FleetJudgement,
    ) -> Result<(), ControlError> {
        let FleetJudgement {
            split,
            record,
            digest,
            before,
        } = judgement;
        let rollout = SavedRollout {
            config: digest,
            progress: record,
        };
        let stepped = split.is_some();
        let mut next = self.with_rollout(state, service, rollout, split);
        next.last = Some(self.note(Actor::Rollout, state.rollout_call(service), None));
        match self.commit(state, next).await {
            Ok(true) => {
                state.log_fleet_judgement(service, stepped);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                state.put_back_rollout(service, &before);
                Err(e)
            }
        }
    }

    /// Commits `next` on the revision this replica serves. `Ok(true)`: committed and
    /// applied here; `Ok(false)`: another replica committed first, and its state is applied
    /// here instead (or the key was missing and is seeded again).
    async fn commit(
        &mut self,
        state: &mut ControlState,
        next: SharedState,
    ) -> Result<bool, ControlError> {
        let generation = state.generation();
        match self.store.commit(self.revision, &next).await {
            Ok(Commit::Done(done)) => {
                self.adopt(state, done);
                Ok(true)
            }
            Ok(Commit::Conflict(now)) => {
                self.adopt(state, now);
                Ok(false)
            }
            Ok(Commit::Missing) => {
                self.missing = true;
                self.reseed(state).await?;
                Ok(false)
            }
            Err(e) => {
                let e = self.failed(e, generation);
                // The rollout this replica judged on a copy goes back to the fleet's.
                self.reassert(state);
                Err(e)
            }
        }
    }

    /// Seeds the fleet's state again from this replica's live one, at a generation above
    /// every one it has seen: when the key is gone (deleted, or etcd replaced by an empty
    /// one), or when it holds a lower generation than this replica served (another replica
    /// that was behind seeded it), so that no generation is ever reused for another state.
    /// When another replica wrote first, its state is applied instead (and judged again).
    pub async fn reseed(&mut self, state: &mut ControlState) -> Result<(), ControlError> {
        if !self.missing && !self.behind {
            return Ok(());
        }
        let generation = state.generation().max(self.current.generation) + 1;
        let mut seed = SharedState::of_state(state);
        seed.generation = generation;
        let why = if self.missing {
            "re-seed the fleet's state (it was missing from the store)"
        } else {
            "re-seed the fleet's state (the store held an older generation than this replica served)"
        };
        seed.last = Some(self.note(Actor::Fleet, why.into(), None));
        let before = state.generation();
        let written = if self.missing {
            self.store.reseed(&seed).await
        } else {
            self.store.commit(self.revision, &seed).await
        };
        match written {
            Ok(Commit::Done(v) | Commit::Conflict(v)) => {
                self.missing = false;
                self.behind = false;
                warn!(generation = v.state.generation, "{why}");
                self.revision = v.revision;
                self.adopt_from(state, v, true);
                Ok(())
            }
            Ok(Commit::Missing) => {
                self.missing = true;
                Err(ControlError::StoreUnavailable(
                    "cluster store unavailable: the fleet's state vanished while it was seeded again"
                        .into(),
                ))
            }
            Err(e) => Err(self.failed(e, before)),
        }
    }

    /// Whether the fleet's state waits to be seeded again by this replica.
    pub fn missing(&self) -> bool {
        self.missing || self.behind
    }

    /// The fleet's state with `service`'s rollout progress (and split) replaced.
    fn with_rollout(
        &self,
        state: &ControlState,
        service: &str,
        rollout: SavedRollout,
        split: Option<Split>,
    ) -> SharedState {
        let mine = SharedState::of(state.config(), state.generation() + 1);
        let mut next = self.merged(mine);
        if let Some(svc) = next.services.get_mut(service) {
            if let (Some(split), Some((baseline, canary))) = (split, state.rollout_pools(service)) {
                svc.weights.insert(baseline, split.baseline);
                svc.weights.insert(canary, split.canary);
            }
            svc.rollout = Some(rollout);
        }
        next
    }

    /// The fleet's state with the live fields of this replica's services as `mine` says, at
    /// `mine`'s generation. A service this replica's file lacks keeps the fleet's state, and
    /// every service keeps the fleet's rollback history and rollout progress.
    fn merged(&self, mine: SharedState) -> SharedState {
        let mut next = self.current.clone();
        next.generation = mine.generation;
        for (name, mut svc) in mine.services {
            if let Some(fleet) = next.services.get(&name) {
                svc.history = fleet.history.clone();
                svc.rollout = svc.rollout.or_else(|| fleet.rollout.clone());
            }
            next.services.insert(name, svc);
        }
        next
    }

    /// Makes the fleet's live fields those of `edited` (the file's, generation ignored),
    /// unless they are already: one commit fleet-wide however many replicas read the edit.
    /// On failure this replica keeps serving the fleet's last state.
    pub async fn commit_file(
        &mut self,
        state: &mut ControlState,
        edited: SharedState,
    ) -> Result<(), ControlError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let edited = self.with_running_splits(state, edited.clone());
            let already = SharedState {
                generation: 0,
                ..self.current.live_fields()
            };
            if already == edited {
                self.reassert(state);
                return Ok(());
            }
            // The file says nothing of the rollouts' progress: the fleet's stays.
            let mut next = self.merged(SharedState {
                generation: self.current.generation + 1,
                ..edited.clone()
            });
            next.last = Some(self.note(Actor::File, "reload (file edit)".into(), None));
            // Another replica committed first: compare the edit with its state again.
            if self.commit(state, next).await? {
                return Ok(());
            }
        }
        self.reassert(state);
        Ok(())
    }

    /// A file's live fields with the split of each rollout running in the fleet kept: the
    /// rollout owns its baseline and canary weights while it runs, as on one instance.
    fn with_running_splits(&self, state: &ControlState, mut edited: SharedState) -> SharedState {
        use crate::control::rollout::RolloutState;
        for (name, svc) in &mut edited.services {
            let Some(fleet) = self.current.services.get(name) else {
                continue;
            };
            let running = fleet.rollout.as_ref().is_some_and(|r| {
                matches!(
                    r.progress.state,
                    RolloutState::Progressing | RolloutState::Paused
                )
            });
            let Some((baseline, canary)) = state.rollout_pools(name).filter(|_| running) else {
                continue;
            };
            for pool in [baseline, canary] {
                if let Some(w) = fleet.weights.get(&pool) {
                    svc.weights.insert(pool, *w);
                }
            }
        }
        edited
    }

    /// Serves `fleet` if it is newer than what this replica serves.
    pub fn adopt(&mut self, state: &mut ControlState, fleet: Versioned) {
        self.adopt_from(state, fleet, false);
    }

    /// Serves `fleet` if it is newer than what this replica serves, or whatever its revision
    /// when `fresh` (a full read: etcd may have been replaced by an empty one, whose
    /// revisions start again). A state that fails validation is not applied: the last good
    /// one keeps serving, and the next commit (compared on its revision) replaces it.
    fn adopt_from(&mut self, state: &mut ControlState, fleet: Versioned, fresh: bool) {
        // The store just answered, whatever the version.
        self.down = None;
        if fleet.revision < self.revision && !fresh {
            return;
        }
        self.revision = fleet.revision;
        if let Some(why) = fleet.invalid {
            if self.invalid.as_ref() != Some(&why) {
                warn!(error = %why, "the fleet's state is invalid: not applied; serving the last good state until the next valid commit");
            }
            self.invalid = Some(why);
            return;
        }
        self.invalid = None;
        self.missing = false;
        if fleet.state.generation < state.generation() {
            // Going back would give an older generation number to another state: this
            // replica writes its own above both instead (compared on this revision).
            if !self.behind {
                warn!(
                    fleet = fleet.state.generation,
                    served = state.generation(),
                    "the store holds an older generation than this replica served: writing this replica's state above it"
                );
            }
            self.behind = true;
            return;
        }
        self.behind = false;
        self.current = fleet.state;
        self.reassert(state);
    }

    /// Makes `state` serve the fleet's state again (after a reload of the file, whose live
    /// fields are only the seed of an empty fleet), and records a generation it had not
    /// served before, once, with the note of the change that made it.
    pub fn reassert(&mut self, state: &mut ControlState) {
        let served = SharedState::of_state(state);
        let (before, generation) = (state.live_fields(), state.generation());
        let shared = &self.current;
        if shared.live_fields() != SharedState::of(state.config(), state.generation()) {
            let generation = shared.generation;
            if let Err(e) = state.adopt(|config: &mut Config| shared.apply_to(config), generation) {
                warn!(error = %e, "the fleet's state does not fit this replica's file: kept the last one");
            }
        }
        shared.restore_into(state);
        let conflicts = shared.conflicts(state.config());
        if conflicts != self.conflicts {
            for c in &conflicts {
                warn!(conflict = %c, "this replica's file and the fleet's state disagree: what matches is applied");
            }
            self.conflicts = conflicts;
        }
        if state.generation() != generation && state.generation() > self.audited {
            self.audited = state.generation();
            state.record(self.origin_of_current(), &before);
        } else if SharedState::of_state(state) != served {
            state.announce_all();
        }
    }

    /// Who made the change that led to the fleet's current state, as this replica records
    /// it: its own commit under its own actor (a commit whose answer was lost), another
    /// replica's as `fleet`.
    fn origin_of_current(&self) -> Origin {
        match &self.current.last {
            Some(note) if note.replica == self.me => Origin {
                actor: note.actor,
                call: note.call.clone(),
                caller: note.caller.clone(),
                replica: None,
            },
            Some(note) => Origin {
                actor: Actor::Fleet,
                call: note.call.clone(),
                caller: note.caller.clone(),
                replica: Some(note.replica.clone()),
            },
            None => Origin {
                actor: Actor::Fleet,
                call: "fleet state".into(),
                caller: None,
                replica: None,
            },
        }
    }

    /// Notes an event of the watch task.
    pub fn on_event(&mut self, state: &mut ControlState, event: Event) {
        match event {
            Event::State(v) => self.adopt(state, v),
            Event::Read(v) => self.adopt_from(state, v, true),
            Event::Down(why) => self.down = Some(why),
            Event::Up => self.down = None,
            Event::Missing => {
                self.down = None;
                self.missing = true;
            }
            // The fleet side keeps the roster.
            Event::Roster(_) => {}
        }
    }
}

/// Watches the fleet's state from `revision` and sends each new version to the control task;
/// reconnects (reading the whole state again) while the store is away. Ends when `tx` closes.
pub async fn watch(cluster: Cluster, mut revision: i64, tx: mpsc::Sender<Event>) {
    let retry = Duration::from_secs(1);
    loop {
        let outcome = watch_once(&cluster, &mut revision, &tx).await;
        if tx.is_closed() {
            return;
        }
        if let Err(e) = outcome {
            warn!(error = %e, "fleet store watch interrupted; retrying");
            if tx.send(Event::Down(e.to_string())).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(retry).await;
    }
}

async fn watch_once(
    cluster: &Cluster,
    revision: &mut i64,
    tx: &mpsc::Sender<Event>,
) -> Result<(), StoreError> {
    let mut store = Store::open(cluster).await?;
    // A full read first: what was committed while the watch was away, compacted or not. It
    // is sent even when nothing changed: it says the store answers again. The watch goes on
    // from what the read saw, even below the last revision (an etcd replaced by an empty one).
    let (found, at) = store.read_at().await?;
    let event = match found {
        Some(now) => Event::Read(now),
        None => Event::Missing,
    };
    *revision = at;
    if tx.send(event).await.is_err() {
        return Ok(());
    }
    let mut watch = store.watch(*revision).await?;
    while let Some(seen) = watch.next().await? {
        let event = match seen {
            Seen::Put(v) => {
                *revision = v.revision;
                Event::State(v)
            }
            Seen::Deleted(at) => {
                *revision = at;
                Event::Missing
            }
        };
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
