//! The control plane's single writer: a task that owns the live config and the registry,
//! applies `Command`s one at a time, and publishes each result as a new `RoutingTable`.
//! Readers (the data path) never wait for it; writers (admin, reload) queue behind it.

pub mod command;
mod evidence;
pub mod judge;
pub mod rollout;
pub mod state;
pub mod transition;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use command::{
    Change, Command, ControlError, EndpointView, Guard, IfMatch, ReloadSource, RolloutAction,
    ServiceView, StatusView,
};
pub use state::ControlState;

use crate::health::HealthChecks;

#[cfg(feature = "fleet")]
use crate::fleet::FleetSide;

/// Without the `fleet` feature there is no fleet: config validation refuses `[cluster]`.
#[cfg(not(feature = "fleet"))]
enum FleetSide {}

#[cfg(not(feature = "fleet"))]
enum Wake {}

/// The fleet side for a `[cluster]` section.
#[cfg(feature = "fleet")]
fn fleet_side(cluster: Option<crate::config::Cluster>) -> Option<FleetSide> {
    cluster.map(FleetSide::new)
}

/// Never one: config validation refuses `[cluster]` without the `fleet` feature.
#[cfg(not(feature = "fleet"))]
fn fleet_side(_: Option<crate::config::Cluster>) -> Option<FleetSide> {
    None
}

#[cfg(not(feature = "fleet"))]
impl FleetSide {
    async fn wake(&mut self, _: &ControlState) -> Wake {
        match *self {}
    }
    fn on_wake(&mut self, _: &mut ControlState, wake: Wake) {
        match wake {}
    }
    async fn change(
        &mut self,
        _: &mut ControlState,
        _: Change,
        _: &Guard,
    ) -> Result<ServiceView, ControlError> {
        match *self {}
    }
    async fn after_reload(&mut self, _: &mut ControlState, _: &crate::config::Config) {
        match *self {}
    }
    async fn tick(&mut self, _: &mut ControlState) {
        match *self {}
    }
    fn over_file(&self) -> Option<OverFile<'_>> {
        match *self {}
    }
    fn status(&self, _: u64) -> command::ClusterStatus {
        match *self {}
    }
}

/// What a reload puts over the file's config before it is published (a fleet's live fields).
pub type OverFile<'a> = Box<dyn Fn(&mut crate::config::Config) + 'a>;

/// How often progressing rollouts are judged.
const ROLLOUT_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends commands to the control task; cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<Command>,
}

impl ControlHandle {
    pub async fn get(&self, service: &str) -> Result<ServiceView, ControlError> {
        self.ask(|reply| Command::Get {
            service: service.to_string(),
            reply,
        })
        .await?
    }

    pub async fn status(&self) -> Result<StatusView, ControlError> {
        self.ask(|reply| Command::Status { reply }).await
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

/// Starts the control task on the current runtime; it ends when `token` is cancelled.
pub fn spawn(state: ControlState, token: CancellationToken) -> ControlHandle {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(state, rx, token));
    ControlHandle { tx }
}

async fn run(mut state: ControlState, mut rx: mpsc::Receiver<Command>, token: CancellationToken) {
    // Health probes follow the live table: synced after every command that published one.
    let mut health = HealthChecks::default();
    let mut synced = 0;
    // Rollout steps are judged on this tick (a step's dwell is seconds to minutes).
    let mut rollout_tick = tokio::time::interval(ROLLOUT_TICK);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fleet = fleet_side(state.config().cluster.clone());
    // A fleet's rollouts start on its leader, once this replica has joined.
    if fleet.is_none() {
        state.start_auto_rollouts();
    }
    loop {
        let generation = state.generation();
        if generation != synced {
            health.sync(&state.tables().load(), state.config());
            synced = generation;
        }
        let cmd = tokio::select! {
            _ = token.cancelled() => return,
            _ = rollout_tick.tick() => {
                match &mut fleet {
                    Some(f) => f.tick(&mut state).await,
                    None => state.tick_rollouts(),
                }
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
                continue;
            }
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => return,
            },
        };
        match cmd {
            Command::Get { service, reply } => {
                let _ = reply.send(state.service_view(&service));
            }
            Command::Status { reply } => {
                let mut view = state.status_view();
                if let Some(f) = &fleet {
                    view.cluster = Some(f.status(state.generation()));
                }
                let _ = reply.send(view);
            }
            Command::Change {
                change,
                guard,
                reply,
            } => {
                let result = match &mut fleet {
                    Some(f) => f.change(&mut state, change, &guard).await,
                    None => state.change(change, &guard),
                };
                let _ = reply.send(result);
            }
            Command::Reload { source, reply } => {
                let file_before = fleet.as_ref().map(|_| state.file_config().clone());
                let result = {
                    let over = fleet.as_ref().and_then(|f| f.over_file());
                    state.reload_over(source, over.as_deref())
                };
                if let (Some(f), Some(before)) = (&mut fleet, file_before) {
                    f.after_reload(&mut state, &before).await;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
}
