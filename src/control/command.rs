//! Commands to the control task (the single writer), its errors and the answers it gives.

use std::net::SocketAddr;

use tokio::sync::oneshot;

/// Something only the control task may do.
#[derive(Debug)]
pub enum Command {
    /// A change made through the admin API (or by the rollout controller).
    Change {
        change: Change,
        guard: Guard,
        reply: oneshot::Sender<Result<ServiceView, ControlError>>,
    },
    /// Re-read the config file.
    Reload {
        source: ReloadSource,
        reply: Option<oneshot::Sender<Result<StatusView, ControlError>>>,
    },
    /// A successor (`run --takeover`) takes over: answer the live state and hold still (no
    /// changes, no rollout steps, out of the fleet) until [`Command::Resume`] or the end.
    HandOver { take: HandOver },
    /// The successor failed before it took over: go on as before.
    Resume,
}

/// What a successor takes of the live state, run on the control task as it starts to hold
/// still (what the state is handed over as is the successor's business, not the control's).
pub struct HandOver(pub Box<dyn FnOnce(&super::ControlState) + Send>);

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOver")
    }
}

/// A change to one service's split or endpoints.
#[derive(Debug, Clone)]
pub enum Change {
    /// `{"pool": weight, ...}`, or why the body is not such an object. The values are
    /// checked against the service by the control task, so that 404 and 412 come before
    /// a 400 for the body (order: 401, 404, 412, 400).
    SetWeights {
        service: String,
        weights: Result<Vec<(String, serde_json::Value)>, BodyError>,
    },
    /// Blue-green: the standby becomes active. `checked_standby` is the pool whose
    /// prepromotion checks passed (None with `?force=true`); the swap is refused if the
    /// standby changed in the meantime.
    Swap {
        service: String,
        checked_standby: Option<String>,
    },
    Rollback {
        service: String,
    },
    Drain {
        service: String,
        pool: String,
        address: String,
        drain: bool,
    },
    /// Drive the automated canary.
    Rollout {
        service: String,
        action: RolloutAction,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Start,
    Pause,
    Resume,
    Promote,
    Abort,
}

impl RolloutAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => RolloutAction::Start,
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            "promote" => RolloutAction::Promote,
            "abort" => RolloutAction::Abort,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Abort => "abort",
        }
    }
}

impl Change {
    /// `PUT .../weights` with a JSON body `{"pool": weight, ...}`.
    pub fn set_weights(service: String, body: &[u8]) -> Change {
        let weights = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
            Ok(_) => Err(BodyError::NotAnObject),
            Err(e) => Err(BodyError::NotJson(e.to_string())),
        };
        Change::SetWeights { service, weights }
    }

    pub fn service(&self) -> &str {
        match self {
            Change::SetWeights { service, .. }
            | Change::Swap { service, .. }
            | Change::Rollback { service }
            | Change::Drain { service, .. }
            | Change::Rollout { service, .. } => service,
        }
    }

    /// The call, for the audit log.
    pub fn describe(&self) -> String {
        match self {
            Change::SetWeights { service, .. } => format!("PUT /admin/services/{service}/weights"),
            Change::Swap { service, .. } => format!("POST /admin/services/{service}/swap"),
            Change::Rollback { service } => format!("POST /admin/services/{service}/rollback"),
            Change::Drain {
                service,
                pool,
                address,
                drain,
            } => format!(
                "POST /admin/services/{service}/pools/{pool}/endpoints/{address}/{}",
                if *drain { "drain" } else { "undrain" }
            ),
            Change::Rollout { service, action } => {
                format!("POST /admin/services/{service}/rollout/{}", action.as_str())
            }
        }
    }
}

/// Preconditions and mode of a change.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `If-Match: <generation>`: refuse (412) if the live generation differs.
    pub if_match: Option<IfMatch>,
    /// Validate and answer with the resulting state, changing nothing.
    pub dry_run: bool,
    /// Who asked, for the audit log.
    pub caller: Option<SocketAddr>,
    /// Set when the control task makes the change itself (a rollout step): who, and what it
    /// did, for the audit log. `None`: an admin call.
    pub by: Option<(crate::observe::audit::Actor, String)>,
}

/// An `If-Match` header as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    Generation(u64),
    /// Not a generation number: a 400, checked after the 404.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadSource {
    Watcher,
    Signal,
    Admin,
}

impl ReloadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSource::Watcher => "file watcher",
            ReloadSource::Signal => "SIGHUP",
            ReloadSource::Admin => "admin",
        }
    }
}

/// Why a request body is not what the call takes (a 400, after the 404 and 412 checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error(r#"body must be a JSON object like {{"stable": 90, "canary": 10}}"#)]
    NotAnObject,
    #[error("body is not JSON: {0}")]
    NotJson(String),
}

/// Why a command was refused; each maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("generation is {live}, not {expected}: the state changed since you read it")]
    Stale { live: u64, expected: u64 },
    #[error("{0}")]
    BadRequest(String),
    /// A reload that changed nothing.
    #[error(transparent)]
    Reload(#[from] super::state::ReloadError),
    #[error("the control task has stopped")]
    Stopped,
    /// A successor (`run --takeover`) is taking the live state over: nothing changes here
    /// meanwhile; the successor (or this instance, if the hand-over fails) takes changes.
    #[error("handing over to a successor: the change was not applied; send it again")]
    HandingOver,
    /// Fleet mode: the change could not be committed to the fleet's store, so it was not
    /// applied anywhere.
    #[error("{0}")]
    StoreUnavailable(String),
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The action does not fit the rollout's state.
    #[error(transparent)]
    Rollout(#[from] super::rollout::RolloutError),
    /// The change would leave a config the routing table cannot be built from.
    #[error(transparent)]
    Table(std::sync::Arc<crate::router::TableError>),
    /// Fleet mode: the store stopped answering after the change was sent, so whether it
    /// was committed cannot be known yet. If it was, every replica applies and audits it like
    /// any other change; `generation` is the one served before it.
    #[error("outcome unknown: {why}")]
    OutcomeUnknown { why: String, generation: u64 },
}

impl From<crate::router::TableError> for ControlError {
    fn from(e: crate::router::TableError) -> Self {
        ControlError::Table(std::sync::Arc::new(e))
    }
}

// Errors are compared in tests by what they say.
impl PartialEq for ControlError {
    fn eq(&self, other: &Self) -> bool {
        self.status() == other.status() && self.to_string() == other.to_string()
    }
}

impl Eq for ControlError {}

impl ControlError {
    pub fn status(&self) -> u16 {
        match self {
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) | ControlError::Rollout(_) => 409,
            ControlError::Table(_) | ControlError::Body(_) => 400,
            ControlError::Stale { .. } => 412,
            ControlError::BadRequest(_) => 400,
            ControlError::Reload(_) => 422,
            ControlError::Stopped
            | ControlError::HandingOver
            | ControlError::StoreUnavailable(_) => 503,
            ControlError::OutcomeUnknown { .. } => 504,
        }
    }

    /// The generation an error answer carries besides its message, when it has one.
    pub fn generation(&self) -> Option<u64> {
        match self {
            ControlError::OutcomeUnknown { generation, .. } => Some(*generation),
            _ => None,
        }
    }
}

// === views (JSON answers) ===

pub use crate::api::{
    ClusterStatus, EndpointView, MemberView, PoolView, ReloadView, ServiceSummary, ServiceView,
    StatusView, StoreStatus,
};
