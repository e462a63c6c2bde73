//! The admin API's model: every body it answers (and the ones it takes), as types that
//! serialize and deserialize. The server builds them, `switchyard ctl` reads them, the
//! dashboard's tests and `docs/openapi.yaml` are checked against them. It depends on no
//! other module of the crate, so every other module (and `ctl`) may use it.

use std::time::SystemTime;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

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
    /// The Prometheus checks, in file order (empty without any).
    #[serde(default)]
    pub checks: Vec<CheckView>,
    /// The webhooks, in file order, with their last call as this instance made it.
    #[serde(default)]
    pub hooks: Vec<HookView>,
}

/// A rollout check: its latest evaluation and how many failed in a row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckView {
    pub name: String,
    /// The latest value (`null` before the first, or when the latest was inconclusive).
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub state: CheckState,
    /// Why it is inconclusive, or which bound the value is past.
    pub detail: Option<String>,
    /// Failed evaluations in a row, and how many abort the rollout.
    pub failures_in_row: u32,
    pub failures: u32,
    /// When the latest evaluation came back: RFC 3339.
    pub at: Option<String>,
}

/// How a check's latest evaluation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Not evaluated yet.
    Pending,
    Ok,
    Failing,
    /// Prometheus unreachable, or not one number: neither a pass nor a failure.
    Inconclusive,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Ok => "ok",
            CheckState::Failing => "failing",
            CheckState::Inconclusive => "inconclusive",
        }
    }
}

/// A rollout webhook and its last call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookView {
    pub name: String,
    /// `pre-rollout`, `step`, `confirm-promotion`, `post-rollout` or `event`.
    pub on: String,
    /// When it was last called (RFC 3339), and how that went: `ok`, `failed` or `timeout`.
    pub last_call: Option<String>,
    pub outcome: Option<String>,
    /// The failure in words (`status 503`, `no answer within 1s`).
    pub detail: Option<String>,
    /// `step` and `confirm-promotion` hooks: failed calls in a row.
    pub failures_in_row: u32,
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

// === the audit ===

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    /// An admin API call (`caller` is the client's address).
    Admin,
    /// A reload of the config file.
    File,
    /// The rollout controller itself: a step, a promotion or an abort it judged.
    Rollout,
    /// Applied from the fleet's shared state after a change on another replica.
    Fleet,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Admin => "admin",
            Actor::File => "file",
            Actor::Rollout => "rollout",
            Actor::Fleet => "fleet",
        }
    }
}

/// A rollout's position, as the audit shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMark {
    pub state: String,
    pub step: usize,
}

/// One service's live fields, or the part of them a change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<IndexMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Drained endpoints as `pool/address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMark>,
}

/// Every service's live fields at one moment, by service.
pub type LiveFields = IndexMap<String, ServiceFields>;

/// What a change touched: `before` and `after` of the fields that differ, for one service as
/// a [`ServiceFields`] object, for several as `{"services": {name: fields}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Touched {
    Many {
        services: IndexMap<String, ServiceFields>,
    },
    One(ServiceFields),
}

impl Default for Touched {
    fn default() -> Self {
        Touched::One(ServiceFields::default())
    }
}

impl Touched {
    /// The fields that differ between `before` and `after`, and the one service changed if
    /// only one was (services that appear or vanish count as changed).
    pub fn between(before: &LiveFields, after: &LiveFields) -> (Option<String>, Touched, Touched) {
        let empty = ServiceFields::default();
        let mut changed: Vec<(String, ServiceFields, ServiceFields)> = Vec::new();
        let names = before
            .keys()
            .chain(after.keys().filter(|k| !before.contains_key(*k)));
        for name in names {
            let (b, a) = (
                before.get(name).unwrap_or(&empty),
                after.get(name).unwrap_or(&empty),
            );
            if b == a {
                continue;
            }
            let mut bd = ServiceFields::default();
            let mut ad = ServiceFields::default();
            if b.weights != a.weights {
                (bd.weights, ad.weights) = (b.weights.clone(), a.weights.clone());
            }
            if b.active != a.active {
                (bd.active, ad.active) = (b.active.clone(), a.active.clone());
            }
            if b.drained != a.drained {
                bd.drained = Some(b.drained.clone().unwrap_or_default());
                ad.drained = Some(a.drained.clone().unwrap_or_default());
            }
            if b.rollout != a.rollout {
                (bd.rollout, ad.rollout) = (b.rollout.clone(), a.rollout.clone());
            }
            changed.push((name.clone(), bd, ad));
        }
        match changed.len() {
            0 => (None, Touched::One(empty.clone()), Touched::One(empty)),
            1 => {
                let Some((name, b, a)) = changed.pop() else {
                    return (None, Touched::default(), Touched::default());
                };
                (Some(name), Touched::One(b), Touched::One(a))
            }
            _ => {
                let (mut b, mut a) = (IndexMap::new(), IndexMap::new());
                for (name, bd, ad) in changed {
                    b.insert(name.clone(), bd);
                    a.insert(name, ad);
                }
                (
                    None,
                    Touched::Many { services: b },
                    Touched::Many { services: a },
                )
            }
        }
    }

    /// One line for the log: `weights={stable:90,canary:10}` and so on; `-` when empty.
    pub fn describe(&self) -> String {
        let fields = |f: &ServiceFields| {
            let mut parts = Vec::new();
            if let Some(w) = &f.weights {
                let w: Vec<String> = w.iter().map(|(p, w)| format!("{p}:{w}")).collect();
                parts.push(format!("weights={{{}}}", w.join(",")));
            }
            if let Some(a) = &f.active {
                parts.push(format!("active={a}"));
            }
            if let Some(d) = &f.drained {
                parts.push(format!("drained=[{}]", d.join(",")));
            }
            if let Some(r) = &f.rollout {
                parts.push(format!("rollout={}@{}", r.state, r.step));
            }
            parts.join(" ")
        };
        let text = match self {
            Touched::One(f) => fields(f),
            Touched::Many { services } => services
                .iter()
                .map(|(n, f)| format!("{n}: {}", fields(f)))
                .collect::<Vec<_>>()
                .join("; "),
        };
        if text.is_empty() { "-".into() } else { text }
    }
}

/// One applied change, with the fields of its audit log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// RFC 3339 UTC, to the millisecond.
    pub at: String,
    pub actor: Actor,
    /// The client's address for an admin call; `null` otherwise.
    pub caller: Option<String>,
    /// What was done: the admin call's method and path, `reload (watcher)`, `rollout step 2
    /// of 4 (25%)`, ...
    pub call: String,
    /// The replica that made the change, in a fleet (`null` on a single instance).
    #[serde(default)]
    pub replica: Option<String>,
    pub before: Touched,
    pub after: Touched,
    pub generation: u64,
    /// The service changed; `None` for a change that touched several (or none).
    pub service: Option<String>,
}

impl AuditEntry {
    pub fn now(actor: Actor, call: String) -> Self {
        AuditEntry {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            actor,
            caller: None,
            call,
            replica: None,
            before: Touched::default(),
            after: Touched::default(),
            generation: 0,
            service: None,
        }
    }
}

#[cfg(test)]
mod tests;
