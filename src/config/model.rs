//! Validated configuration: every reference checked, every default applied.
//!
//! Pools and weights are referred to by name here; `router::table` resolves names to
//! indices once, so the request path never looks a name up.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;
use regex::Regex;

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (as given on the command line).
    pub path: PathBuf,
    pub server: Server,
    pub admin: Admin,
    /// Tried in file order; the first that matches wins.
    pub routes: Vec<Route>,
    /// In file order.
    pub services: IndexMap<String, Service>,
    /// Problems that do not stop the config from loading (e.g. a weight total other than 100).
    pub warnings: Vec<String>,
    /// Fleet mode: replicas with the same prefix share their live state through etcd.
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// etcd v3 endpoints, all `http://host:port` or all `https://host:port`.
    pub etcd: Vec<String>,
    /// Replicas with the same prefix form one fleet; no trailing `/`.
    pub prefix: String,
    /// This replica's name in the fleet.
    pub name: String,
    /// A replica silent this long is gone; also bounds every call to etcd.
    pub lease_ttl: Duration,
    /// etcd's user and password, when etcd has authentication on.
    pub auth: Option<EtcdAuth>,
    /// TLS to etcd: `Some` exactly when the endpoints are `https://`.
    pub tls: Option<EtcdTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    /// From the environment variable `password_env` names: never in the file.
    pub password: Secret,
}

/// The PEM texts, read and checked when the config loads, so that a bad file is a config
/// error at its key rather than a store that never answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate; `None` trusts Mozilla's roots.
    pub ca: Option<String>,
    /// The client certificate and its key, for etcd's `--client-cert-auth`.
    pub identity: Option<(String, Secret)>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// `None` when `pool_header = ""`.
    pub pool_header: Option<HeaderName>,
    /// Client connections open at once (plain and TLS together); past it, new ones are
    /// closed at once, so a flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// HTTP/2 streams open at once on one client connection.
    pub max_concurrent_streams: u32,
    /// The Unix socket a running instance hands its listeners and live state over on
    /// (`run --takeover`); resolved against the config file's directory.
    pub takeover_socket: PathBuf,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: SocketAddr,
    /// The first is the default certificate. Paths are resolved against the config's directory.
    pub certs: Vec<CertPair>,
    /// A client that has not finished its TLS handshake by then is closed.
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// From `token`, or read from the variable named by `token_env` at load time.
    pub token: Option<Secret>,
    pub persist: bool,
    /// Host names the admin API answers to besides IP literals and `localhost`, lower-case.
    pub allowed_hosts: Vec<String>,
}

/// A value that must never be printed (the admin token, etcd's password and client key).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub host: Option<HostMatch>,
    /// Always starts with `/`; never ends with `/` unless it is exactly `/`.
    pub path_prefix: String,
    pub service: String,
}

/// Host patterns are stored lower-case, without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `shop.example.com`
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: any deeper name, not the bare one.
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    Ab,
    BlueGreen,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::Ab => "ab",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub strategy: Strategy,
    /// In file order.
    pub pools: IndexMap<String, Pool>,
    /// Canary and ab: in the order written; pools not named here weigh 0 and come after.
    /// Blue-green: empty.
    pub weights: IndexMap<String, u32>,
    pub hash_key: Option<KeySource>,
    pub hash_salt: String,
    pub affinity_cookie: Option<String>,
    pub affinity_max_age: Duration,
    pub failover: bool,
    pub hold_timeout: Duration,
    pub overrides: Vec<Override>,
    /// Blue-green only.
    pub active: Option<String>,
    pub preview_header: Option<HeaderEquals>,
    pub prepromotion_checks: Vec<String>,
    pub health: Option<Health>,
    pub outlier: Option<Outlier>,
    pub rollout: Option<Rollout>,
    pub mirror: Option<Mirror>,
}

impl Service {
    /// Pool names in decision order: weights order first, then the unweighted pools in file order.
    /// Blue-green: file order.
    pub fn pool_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = self.weights.keys().map(String::as_str).collect();
        for name in self.pools.keys() {
            if !self.weights.contains_key(name) {
                order.push(name);
            }
        }
        order
    }

    /// Sum of the weights (0 for blue-green).
    pub fn weight_total(&self) -> u64 {
        self.weights.values().map(|w| u64::from(*w)).sum()
    }
}

/// Where a per-request value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct Override {
    pub source: KeySource,
    pub matcher: ValueMatch,
    pub pool: String,
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Equals(String),
    Matches(Regex),
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEquals {
    pub name: HeaderName,
    pub equals: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    /// HTTP/2 over TLS.
    H2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// `host:port`, as written.
    pub endpoints: Vec<String>,
    /// Endpoints taking no new requests (`drained = [...]`, kept there by admin drains);
    /// each is one of `endpoints`. Empty when the key is absent.
    pub drained: Vec<String>,
    pub balance: Balance,
    pub min_available: usize,
    pub protocol: Protocol,
    /// True for `tls = true` and for `protocol = "h2"`.
    pub tls: bool,
    pub ca: Option<CaBundle>,
    pub sni: Option<String>,
}

/// A pool's `ca`: where the bundle was read from (for messages) and what it held, read when
/// the config is loaded so that building a routing table opens no file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: std::sync::Arc<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub ejection: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub baseline: String,
    pub canary: String,
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub min_requests: u64,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_increase: Option<Duration>,
    /// The canary's own p99, judged without a baseline.
    pub max_p99: Option<Duration>,
    /// Steps (percentages, each one of `steps`) where the rollout pauses itself once applied.
    pub pause_at: Vec<u32>,
    /// Called at the rollout's moments (`on`), in file order.
    pub webhooks: Vec<Webhook>,
    /// Where `checks` are queried (Prometheus's HTTP API); set whenever `checks` is not empty.
    pub prometheus: Option<Prometheus>,
    /// PromQL queries judged once per `interval` while a step runs, in file order.
    pub checks: Vec<Check>,
    /// How sure a judgement must be before it aborts: over a whole rollout, a canary whose
    /// true figures meet every threshold is aborted with a chance of at most `1 − confidence`.
    pub confidence: f64,
    pub auto_start: bool,
}

/// A rollout's webhook: a POST of JSON at one of the rollout's moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub name: String,
    /// As written: `http://` or `https://`.
    pub url: String,
    /// `host:port` (the scheme's port when the url names none).
    pub authority: String,
    /// The path and query, at least `/`.
    pub path: String,
    pub tls: bool,
    pub on: HookMoment,
    pub timeout: Duration,
    pub format: HookFormat,
}

/// A Prometheus server's HTTP API, as the rollout's `prometheus` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    /// As written.
    pub url: String,
    /// `host:port` (the scheme's port when the url names none).
    pub authority: String,
    /// The path before `/api/v1/query`, without a trailing `/` (empty for the root).
    pub base_path: String,
    pub tls: bool,
}

/// A rollout check: a PromQL query whose value must stay within `min`/`max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    /// As written; `$service`, `$canary` and `$baseline` are replaced when it is sent.
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Failed evaluations in a row that abort the rollout.
    pub failures: u32,
}

/// When a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMoment {
    /// Before the first step: a failure refuses the start.
    PreRollout,
    /// After a step's judgement passes, before the next step applies.
    Step,
    /// Before promotion to 100%: the rollout waits until it answers 2xx.
    ConfirmPromotion,
    /// After promotion or abort, informational.
    PostRollout,
    /// Every rollout change, informational.
    Event,
}

impl HookMoment {
    pub const ALL: [(&'static str, HookMoment); 5] = [
        ("pre-rollout", HookMoment::PreRollout),
        ("step", HookMoment::Step),
        ("confirm-promotion", HookMoment::ConfirmPromotion),
        ("post-rollout", HookMoment::PostRollout),
        ("event", HookMoment::Event),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("event", |(name, _)| name)
    }
}

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFormat {
    /// `{service, rollout: {state, step, weight, reason}, event, at}`.
    Json,
    /// `{"text": "…"}`, for a Slack incoming webhook (or anything that takes one).
    Slack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub pool: String,
    pub percent: u32,
    pub max_body_bytes: usize,
}
