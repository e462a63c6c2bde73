//! Serde mirror of the TOML file: shapes and key names only; rules and defaults live in `validate`.
//!
//! Almost every key is an `Option` (even required ones) so that a missing key becomes a located
//! diagnostic next to all the others, rather than serde's first-and-only error.

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<RawServer>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub services: IndexMap<String, RawService>,
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub etcd: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub name: Option<String>,
    pub lease_ttl: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub request_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub pool_header: Option<String>,
    pub max_connections: Option<i64>,
    pub max_concurrent_streams: Option<i64>,
    pub takeover_socket: Option<String>,
    pub tls: Option<RawServerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub listen: Option<String>,
    pub certs: Option<Vec<RawCertPair>>,
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub persist: Option<bool>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawStrategy {
    Canary,
    Ab,
    BlueGreen,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub strategy: Option<RawStrategy>,
    /// Any TOML value, so a negative, fractional or quoted weight is reported with its own
    /// location, alongside the other problems, instead of ending the parse.
    pub weights: Option<IndexMap<String, toml::Value>>,
    pub hash_key: Option<RawKeySource>,
    pub hash_salt: Option<String>,
    pub affinity_cookie: Option<String>,
    pub affinity_max_age: Option<String>,
    pub failover: Option<bool>,
    pub hold_timeout: Option<String>,
    #[serde(default)]
    pub overrides: Vec<RawOverride>,
    pub active: Option<String>,
    pub preview_header: Option<RawPreviewHeader>,
    pub prepromotion_checks: Option<Vec<String>>,
    #[serde(default)]
    pub pools: IndexMap<String, RawPool>,
    pub health: Option<RawHealth>,
    pub outlier: Option<RawOutlier>,
    pub rollout: Option<RawRollout>,
    pub mirror: Option<RawMirror>,
}

/// `{ header = "x-user-id" }` or `{ cookie = "uid" }`; exactly one is checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeySource {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub equals: Option<String>,
    pub matches: Option<String>,
    pub present: Option<bool>,
    pub pool: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPreviewHeader {
    pub name: Option<String>,
    pub equals: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawBalance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawProtocol {
    Http1,
    H2c,
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub endpoints: Option<Vec<String>>,
    /// Endpoints drained by the admin API, written back so drains survive restarts.
    pub drained: Option<Vec<String>>,
    pub balance: Option<RawBalance>,
    pub min_available: Option<i64>,
    pub protocol: Option<RawProtocol>,
    pub tls: Option<bool>,
    pub ca: Option<String>,
    pub sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_threshold: Option<i64>,
    pub healthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<i64>,
    pub ejection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    pub baseline: Option<String>,
    pub canary: Option<String>,
    pub steps: Option<Vec<i64>>,
    pub interval: Option<String>,
    pub min_requests: Option<i64>,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_increase: Option<String>,
    pub max_p99: Option<String>,
    pub pause_at: Option<Vec<i64>>,
    pub webhooks: Option<Vec<RawWebhook>>,
    pub prometheus: Option<String>,
    pub checks: Option<Vec<RawCheck>>,
    pub confidence: Option<f64>,
    pub auto_start: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub name: Option<String>,
    pub url: Option<String>,
    pub on: Option<String>,
    pub timeout: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    pub name: Option<String>,
    pub query: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub failures: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMirror {
    pub pool: Option<String>,
    pub percent: Option<i64>,
    pub max_body_bytes: Option<i64>,
}
