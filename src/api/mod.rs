//! The admin API's model: every body it answers (and the ones it takes), as types that
//! serialize and deserialize. The server builds them, `switchyard ctl` reads them, the
//! dashboard's tests and `docs/openapi.yaml` are checked against them. It depends on nothing
//! else in the crate, so every other module may use it.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use crate::observe::audit::{Actor, AuditEntry, RolloutMark, ServiceFields, Touched};

// === a service ===

/// `GET /admin/services/{svc}`, and the answer to every change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    pub name: String,
    /// `canary`, `ab` or `blue-green`.
    pub strategy: String,
    pub generation: u64,
    pub persisted: bool,
    /// Null for blue-green.
    pub weights: Option<IndexMap<String, u32>>,
    pub active: Option<String>,
    pub standby: Option<String>,
    pub pools: IndexMap<String, PoolView>,
    /// Null without a rollout section.
    pub rollout: Option<RolloutView>,
    /// Present on change answers when something deserves attention (e.g. a new weight
    /// total reshuffles buckets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// True on a `?dry_run=true` answer: nothing was applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolView {
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointView {
    pub address: String,
    pub healthy: bool,
    pub draining: bool,
    /// RFC 3339 UTC, or null.
    pub ejected_until: Option<String>,
    pub inflight: usize,
}

// === a rollout ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Idle,
    Progressing,
    Paused,
    Promoted,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Idle => "idle",
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Breached,
    /// Still undecided after the longest wait: the rollout paused.
    Inconclusive,
}

/// A service's automated rollout: where it is, what it waits for, how its steps were
/// judged, and what they are judged against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutView {
    pub state: RolloutState,
    /// 0-based index into `steps`.
    pub step: usize,
    /// The canary's share, in percent.
    pub weight: u32,
    /// When the state (and, while progressing, the step) began: RFC 3339.
    pub since: Option<String>,
    pub reason: Option<String>,
    pub confidence: f64,
    /// While progressing: what the step waits for.
    pub waiting_for: Option<String>,
    pub last_verdict: Option<VerdictView>,
    pub history: Vec<VerdictView>,
    pub baseline: String,
    pub canary: String,
    pub steps: Vec<u32>,
    pub min_requests: u64,
    pub interval_s: f64,
}

/// One judged step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerdictView {
    pub step: usize,
    pub weight: u32,
    pub outcome: Outcome,
    pub passed: bool,
    pub detail: Option<String>,
    pub canary_requests: u64,
    pub baseline_requests: u64,
    pub started: String,
    pub at: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The figures a step was judged on: estimates and the bounds at `confidence`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub confidence: f64,
    pub canary: SideFigures,
    pub baseline: SideFigures,
}

// The figures are finite numbers (never NaN), so equality is total: the fleet's shared state,
// which holds them, compares states.
impl Eq for Figures {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SideFigures {
    pub requests: u64,
    /// Null without requests.
    pub error_rate: Option<f64>,
    /// Null without requests.
    pub error_rate_interval: Option<[f64; 2]>,
    pub p99_ms: Option<f64>,
    pub p99_ms_at_least: Option<f64>,
    pub p99_ms_at_most: Option<f64>,
}

// === the instance ===

/// `GET /admin/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub config_path: String,
    pub generation: u64,
    pub persisted: bool,
    pub last_reload: ReloadView,
    /// Set when the file asks for something only a restart can apply (a new listen address).
    pub restart_required: Option<String>,
    pub services: IndexMap<String, ServiceSummary>,
    /// Fleet mode only: this replica and the fleet's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Whether the config file is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_watcher: Option<WatchView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSummary {
    pub strategy: String,
    pub weights: Option<IndexMap<String, u32>>,
    pub active: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadView {
    pub ok: bool,
    pub at: String,
    pub error: Option<String>,
}

/// Whether the config file is being watched.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchView {
    pub watching: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

/// `GET /admin/cluster` (fleet mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub name: String,
    pub prefix: String,
    /// The replica holding the fleet's leadership, when etcd last said.
    pub leader: Option<String>,
    /// The live replicas (a replica silent for `lease_ttl` is gone), by name.
    pub members: Vec<MemberView>,
    pub store: StoreStatus,
    /// The fleet generation this replica serves.
    pub applied_generation: u64,
    /// Where this replica's file and the fleet's state disagree (what matches is applied).
    #[serde(default)]
    pub conflicts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    /// When the replica last refreshed its presence (RFC 3339).
    pub seen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    /// Joined, and the last call to the store answered.
    pub up: bool,
    pub endpoints: Vec<String>,
    pub error: Option<String>,
}

/// Every refusal: `{"error": "..."}`; a 504 also carries the generation served before the
/// change whose outcome is unknown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[cfg(test)]
mod tests;
