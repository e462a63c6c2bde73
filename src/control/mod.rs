//! The control plane's single writer: a task that owns the live config and the registry,
//! applies `Command`s one at a time, and publishes each result as a new `RoutingTable`.
//! Readers (the data path, the admin API's reads) never wait for it; writers (admin, reload)
//! queue behind it. It runs on the control thread only, never on the data path's workers;
//! its I/O is the config file (through `config::persist`) and the rollouts' webhooks. It
//! knows a fleet only through the [`Fleet`] trait (implemented by `fleet`), and never uses
//! that module: what a fleet shares and how is the fleet's business.
pub mod command;
mod evidence;
pub mod gates;
pub mod hooks;
pub mod judge;
pub mod probe;
pub mod rollout;
pub mod state;
pub mod transition;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use command::{
    Change, Command, ControlError, EndpointView, Guard, IfMatch, ReloadSource, RolloutAction,
    ServiceView, StatusView,
};
pub use state::ControlState;

use crate::config::Config;
use crate::health::HealthChecks;

/// What a fleet adds to the single writer. The control plane knows a fleet only through this
/// trait (the `fleet` module implements it), so it can be read, built and tested without one.
/// Every method runs on the control task, between commands.
pub trait Fleet: Send + Sized + 'static {
    /// What the fleet waits on besides the control task's commands (a join attempt's
    /// outcome, a watch event).
    type Wake: Send;

    /// The fleet side for a config, or `None` when it has no `[cluster]` section.
    fn join(config: &Config) -> Option<Self>;
    /// Resolves when the fleet has something to act on; pending otherwise.
    fn wake(&mut self, state: &ControlState) -> impl Future<Output = Self::Wake> + Send;
    fn on_wake(&mut self, state: &mut ControlState, wake: Self::Wake);
    /// An admin change: committed to the fleet's store before it applies here.
    fn change(
        &mut self,
        state: &mut ControlState,
        change: Change,
        guard: &Guard,
    ) -> impl Future<Output = Result<ServiceView, ControlError>> + Send;
    /// The rollout tick: figures published, rollouts judged while this replica leads.
    fn tick(&mut self, state: &mut ControlState) -> impl Future<Output = ()> + Send;
    /// What a reload puts over the file's live fields.
    fn over_file(&self) -> Option<OverFile<'_>>;
    /// After a reload of the file, with the file's config from before it.
    fn after_reload(
        &mut self,
        state: &mut ControlState,
        file_before: &Config,
    ) -> impl Future<Output = ()> + Send;
    /// Whether this replica calls the rollouts' webhooks (the fleet's leader does).
    fn leading(&self) -> bool;
    /// `cluster` in `/admin/status`.
    fn status(&self, generation: u64) -> command::ClusterStatus;
}

/// No fleet: a single switchyard (the type has no values).
pub enum Alone {}

impl Fleet for Alone {
    type Wake = std::convert::Infallible;

    fn join(_: &Config) -> Option<Self> {
        None
    }
    async fn wake(&mut self, _: &ControlState) -> Self::Wake {
        match *self {}
    }
    fn on_wake(&mut self, _: &mut ControlState, _: Self::Wake) {
        match *self {}
    }
    async fn change(
        &mut self,
        _: &mut ControlState,
        _: Change,
        _: &Guard,
    ) -> Result<ServiceView, ControlError> {
        match *self {}
    }
    async fn tick(&mut self, _: &mut ControlState) {
        match *self {}
    }
    fn over_file(&self) -> Option<OverFile<'_>> {
        match *self {}
    }
    async fn after_reload(&mut self, _: &mut ControlState, _: &Config) {
        match *self {}
    }
    fn leading(&self) -> bool {
        match *self {}
    }
    fn status(&self, _: u64) -> command::ClusterStatus {
        match *self {}
    }
}

/// What a reload puts over the file's config before it is published (a fleet's live fields).
pub type OverFile<'a> = Box<dyn Fn(&mut Config) + 'a>;

/// How often progressing rollouts are judged.
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// What readers see of the control state: the answers to `GET /admin/status` and
/// `GET /admin/services/{svc}`, made by the control task after every change, judgement and
/// tick. Reads come from here and never wait for the control task, which may be waiting on
/// a fleet's store.
#[derive(Debug, Clone, Default)]
pub struct ReadView {
    pub status: Option<StatusView>,
    pub services: indexmap::IndexMap<String, ServiceView>,
    /// Each rollout's webhooks, for the admin handlers that call them before a change.
    pub webhooks: indexmap::IndexMap<String, Vec<crate::config::Webhook>>,
}

/// Sends commands to the control task; cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<Command>,
    reads: Arc<ArcSwap<ReadView>>,
    tables: Arc<ArcSwap<crate::router::RoutingTable>>,
    hook_log: Arc<hooks::HookLog>,
}

impl ControlHandle {
    /// The state of one service as last published, with its endpoints' live figures
    /// (health, drain, inflight) read now.
    pub async fn get(&self, service: &str) -> Result<ServiceView, ControlError> {
        let reads = self.reads.load();
        let Some(view) = reads.services.get(service) else {
            let known: Vec<&str> = reads.services.keys().map(String::as_str).collect();
            return Err(ControlError::NotFound(format!(
                "unknown service {service:?} (services: {})",
                known.join(", ")
            )));
        };
        let mut view = view.clone();
        state::refresh_endpoints(&mut view, &self.tables.load());
        Ok(view)
    }

    /// A rollout's webhooks, its state and the generation as last published; `None`
    /// without webhooks.
    pub fn rollout_hooks(
        &self,
        service: &str,
    ) -> Option<(Vec<crate::config::Webhook>, crate::api::RolloutView, u64)> {
        let reads = self.reads.load();
        let hooks = reads.webhooks.get(service)?.clone();
        let view = reads.services.get(service)?;
        Some((hooks, view.rollout.clone()?, view.generation))
    }

    /// Where webhook calls are noted for the rollouts' views.
    pub fn hook_log(&self) -> Arc<hooks::HookLog> {
        self.hook_log.clone()
    }

    /// `/admin/status` as last published.
    pub async fn status(&self) -> Result<StatusView, ControlError> {
        self.reads
            .load()
            .status
            .clone()
            .ok_or(ControlError::Stopped)
    }

    pub async fn change(&self, change: Change, guard: Guard) -> Result<ServiceView, ControlError> {
        self.ask(|reply| Command::Change {
            change,
            guard,
            reply,
        })
        .await?
    }

    pub async fn reload(&self, source: ReloadSource) -> Result<StatusView, ControlError> {
        self.ask(|reply| Command::Reload {
            source,
            reply: Some(reply),
        })
        .await?
    }

    /// The live state for a successor; from then on the control task holds still until
    /// [`Self::resume`] (or its end), so nothing changes after the state was handed over.
    pub async fn hand_over<T: Send + 'static>(
        &self,
        take: impl FnOnce(&ControlState) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        self.ask(|reply| Command::HandOver {
            take: command::HandOver(Box::new(move |state| {
                let _ = reply.send(take(state));
            })),
        })
        .await
    }

    /// Ends a hand-over that did not happen (the successor went away).
    pub async fn resume(&self) {
        let _ = self.tx.send(Command::Resume).await;
    }

    /// Asks for a reload without waiting for its outcome (watcher, SIGHUP).
    pub fn request_reload(&self, source: ReloadSource) {
        // A full queue already holds work that will read the file; dropping this is fine.
        let _ = self.tx.try_send(Command::Reload {
            source,
            reply: None,
        });
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)
    }
}

/// Starts the control task on the current runtime; it ends when `token` is cancelled. `F`
/// joins a fleet when the config has a `[cluster]` section.
pub fn spawn<F: Fleet>(state: ControlState, token: CancellationToken) -> ControlHandle {
    let (tx, rx) = mpsc::channel(64);
    let reads = Arc::new(ArcSwap::from_pointee(ReadView::default()));
    let tables = state.tables();
    let hook_log = state.hook_log();
    let fleet = F::join(state.config());
    publish_reads(&state, fleet.as_ref(), &reads);
    tokio::spawn(run(state, fleet, rx, token, reads.clone()));
    ControlHandle {
        tx,
        reads,
        tables,
        hook_log,
    }
}

/// Makes what readers see the control state's now.
fn publish_reads<F: Fleet>(state: &ControlState, fleet: Option<&F>, reads: &ArcSwap<ReadView>) {
    let mut status = state.status_view();
    if let Some(f) = fleet {
        status.cluster = Some(f.status(state.generation()));
    }
    let services = state
        .config()
        .services
        .keys()
        .filter_map(|name| Some((name.clone(), state.service_view(name).ok()?)))
        .collect();
    let webhooks = state
        .config()
        .services
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.rollout.as_ref()?.webhooks.clone())))
        .filter(|(_, hooks)| !hooks.is_empty())
        .collect();
    reads.store(Arc::new(ReadView {
        status: Some(status),
        services,
        webhooks,
    }));
}

/// Tells a rollout's informational webhooks about its changes: compares each published
/// rollout with the one published before. In a fleet only the leader calls them.
#[derive(Default)]
struct Announcer {
    last: std::collections::HashMap<String, crate::api::RolloutView>,
}

impl Announcer {
    fn announce<F: Fleet>(
        &mut self,
        state: &ControlState,
        fleet: Option<&F>,
        reads: &ArcSwap<ReadView>,
        token: &CancellationToken,
    ) {
        let leading = fleet.is_none_or(F::leading);
        let reads = reads.load();
        for (name, view) in &reads.services {
            let Some(rollout) = &view.rollout else {
                continue;
            };
            let before = self.last.get(name);
            let event = hooks::event(before, rollout);
            let first = before.is_none();
            self.last.insert(name.clone(), rollout.clone());
            // What was already so when switchyard started is no news.
            let (Some(event), false, true) = (event, first, leading) else {
                continue;
            };
            let hooks = state
                .config()
                .services
                .get(name)
                .and_then(|s| s.rollout.as_ref())
                .map_or(&[][..], |r| &r.webhooks[..]);
            hooks::notify(name, hooks, rollout, event, token, &state.hook_log());
        }
    }
}

async fn run<F: Fleet>(
    mut state: ControlState,
    mut fleet: Option<F>,
    mut rx: mpsc::Receiver<Command>,
    token: CancellationToken,
    reads: Arc<ArcSwap<ReadView>>,
) {
    // Health probes follow the live table: synced after every command that published one.
    let mut health = HealthChecks::default();
    let mut synced = 0;
    let mut announcer = Announcer::default();
    announcer.announce(&state, fleet.as_ref(), &reads, &token);
    // Rollout steps are judged on this tick (a step's dwell is seconds to minutes).
    let mut rollout_tick = tokio::time::interval(ROLLOUT_TICK);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A fleet's rollouts start on its leader, once this replica has joined.
    if fleet.is_none() {
        state.start_auto_rollouts();
    }
    // While handing over to a successor: what was handed over must stay what is served.
    let mut held = false;
    loop {
        // Every change of a rollout's progress comes from a tick or a command, before this.
        if fleet.is_none() && !held {
            state.persist_rollouts();
        }
        let generation = state.generation();
        if generation != synced {
            health.sync(&state.tables().load(), state.config());
            synced = generation;
        }
        let cmd = tokio::select! {
            _ = token.cancelled() => return,
            _ = rollout_tick.tick(), if !held => {
                match &mut fleet {
                    Some(f) => f.tick(&mut state).await,
                    None => state.tick_rollouts(),
                }
                publish_reads(&state, fleet.as_ref(), &reads);
                announcer.announce(&state, fleet.as_ref(), &reads, &token);
                continue;
            }
            wake = async {
                match &mut fleet {
                    Some(f) => f.wake(&state).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(f) = &mut fleet {
                    f.on_wake(&mut state, wake);
                }
                publish_reads(&state, fleet.as_ref(), &reads);
                announcer.announce(&state, fleet.as_ref(), &reads, &token);
                continue;
            }
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => return,
            },
        };
        execute(&mut state, &mut fleet, &mut held, cmd, &reads).await;
        announcer.announce(&state, fleet.as_ref(), &reads, &token);
    }
}

/// Carries out one command; readers see its outcome before its caller does. While `held`
/// (handing over to a successor), what was handed over must stay what is served: changes
/// and reloads are refused.
async fn execute<F: Fleet>(
    state: &mut ControlState,
    fleet: &mut Option<F>,
    held: &mut bool,
    cmd: Command,
    reads: &ArcSwap<ReadView>,
) {
    match cmd {
        Command::HandOver { take } => {
            *held = true;
            // Out of the fleet at once, before the successor hears back: the presence task
            // revokes this replica's lease, which frees its name for the successor.
            *fleet = None;
            (take.0)(state);
        }
        Command::Resume => {
            *held = false;
            if fleet.is_none() {
                *fleet = F::join(state.config());
            }
        }
        Command::Change { reply, .. } if *held => {
            let _ = reply.send(Err(ControlError::HandingOver));
        }
        Command::Reload { reply, .. } if *held => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ControlError::HandingOver));
            }
        }
        Command::Change {
            change,
            guard,
            reply,
        } => {
            let result = match fleet {
                Some(f) => f.change(state, change, &guard).await,
                None => state.change(change, &guard),
            };
            publish_reads(state, fleet.as_ref(), reads);
            let _ = reply.send(result);
        }
        Command::Reload { source, reply } => {
            let file_before = fleet.as_ref().map(|_| state.file_config().clone());
            let result = {
                let over = fleet.as_ref().and_then(|f| f.over_file());
                state.reload_over(source, over.as_deref())
            };
            if let (Some(f), Some(before)) = (fleet.as_mut(), file_before) {
                f.after_reload(state, &before).await;
            }
            publish_reads(state, fleet.as_ref(), reads);
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control task alone (no fleet, no sockets): a change through the handle is
    /// published to readers before its caller hears back, and a refused one changes nothing.
    #[tokio::test]
    async fn the_control_task_applies_and_refuses_through_its_handle_without_a_fleet() {
        let state = match ControlState::new(crate::config::fixture::shop_and_bg(), String::new()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let token = CancellationToken::new();
        let handle = spawn::<Alone>(state, token.clone());
        let body = br#"{"stable": 50, "canary": 50}"#;
        let answer = handle
            .change(Change::set_weights("shop".into(), body), Guard::default())
            .await;
        let view = match answer {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(view.generation, 2);
        let read = handle.get("shop").await.map(|v| (v.generation, v.weights));
        let weights = [("stable".to_string(), 50), ("canary".to_string(), 50)];
        assert_eq!(read.ok(), Some((2, Some(weights.into_iter().collect()))));

        let refused = handle
            .change(Change::set_weights("shop".into(), b"[1]"), Guard::default())
            .await;
        assert!(matches!(refused, Err(ControlError::Body(_))), "{refused:?}");
        let status = handle.status().await.map(|s| s.generation);
        assert_eq!(
            status.ok(),
            Some(2),
            "a refused change is no new generation"
        );
        let unknown = handle.get("nope").await;
        assert!(
            matches!(unknown, Err(ControlError::NotFound(_))),
            "{unknown:?}"
        );
        token.cancel();
    }
}
