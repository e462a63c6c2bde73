//! Metric names, the Prometheus exporter, and the per-pool handle bundle a routing table
//! carries, so the request path increments handles and never formats a label.
//!
//! Counters and gauges go through the `metrics` facade into `metrics-exporter-prometheus`.
//! Request counts by status class and the latency histogram come from `stats::PoolStats`
//! (lock-free, fixed buckets, also read by the rollout controller) and are rendered here,
//! after the exporter's own output.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::router::{Reason, RoutingTable};
use crate::stats::PoolStats;

pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const DECISIONS_TOTAL: &str = "switchyard_decisions_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "switchyard_upstream_errors_total";
pub const INFLIGHT_REQUESTS: &str = "switchyard_inflight_requests";
pub const POOL_WEIGHT: &str = "switchyard_pool_weight";
pub const ENDPOINT_HEALTHY: &str = "switchyard_endpoint_healthy";
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
pub const ROLLOUT_WEIGHT: &str = "switchyard_rollout_weight";
pub const MIRROR_REQUESTS_TOTAL: &str = "switchyard_mirror_requests_total";
pub const CLUSTER_STORE_UP: &str = "switchyard_cluster_store_up";
pub const CLUSTER_APPLIED_GENERATION: &str = "switchyard_cluster_applied_generation";
pub const CLUSTER_LEADER: &str = "switchyard_cluster_leader";
pub const CLUSTER_STATE_INVALID: &str = "switchyard_cluster_state_invalid";
pub const CLUSTER_CONFLICTS: &str = "switchyard_cluster_conflicts";
pub const WEBHOOK_CALLS_TOTAL: &str = "switchyard_webhook_calls_total";
pub const ROLLOUT_CHECK_VALUE: &str = "switchyard_rollout_check_value";

pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "reset"];

/// Installs the process-wide recorder once and returns its handle (for `/metrics`).
/// Later calls (a second instance in one test process) share it.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            describe_counter!(
                DECISIONS_TOTAL,
                "Routing decisions by the reason a pool was chosen."
            );
            describe_counter!(
                UPSTREAM_ERRORS_TOTAL,
                "Failed upstream exchanges by kind (connect, timeout, reset)."
            );
            describe_gauge!(INFLIGHT_REQUESTS, "Requests in flight per pool.");
            describe_gauge!(POOL_WEIGHT, "The pool's weight in its service's split.");
            describe_gauge!(
                ENDPOINT_HEALTHY,
                "1 when health checks and outlier ejection let the endpoint serve, else 0."
            );
            describe_counter!(
                CONFIG_RELOADS_TOTAL,
                "Config reloads by result (success, failure)."
            );
            describe_gauge!(
                ROLLOUT_WEIGHT,
                "The canary's share in percent of the automated rollout."
            );
            describe_counter!(
                WEBHOOK_CALLS_TOTAL,
                "Rollout webhook calls by hook and outcome (ok, failed, timeout)."
            );
            describe_gauge!(
                ROLLOUT_CHECK_VALUE,
                "The last value of each rollout check (a Prometheus query)."
            );
            describe_counter!(
                MIRROR_REQUESTS_TOTAL,
                "Mirrored (shadow) requests by the mirror's answer."
            );
            describe_gauge!(
                CLUSTER_STORE_UP,
                "Fleet mode: 1 while this replica is joined and etcd answers."
            );
            describe_gauge!(
                CLUSTER_APPLIED_GENERATION,
                "Fleet mode: the fleet generation this replica serves."
            );
            describe_gauge!(
                CLUSTER_LEADER,
                "Fleet mode: 1 on the replica holding the fleet's leadership."
            );
            describe_gauge!(
                CLUSTER_STATE_INVALID,
                "Fleet mode: 1 while the fleet's shared state fails validation (the last good one is served)."
            );
            describe_gauge!(
                CLUSTER_CONFLICTS,
                "Fleet mode: how many disagreements there are between this replica's file and the fleet's state."
            );
            // Series that exist from the start, so a dashboard sees 0 rather than nothing.
            for result in ["success", "failure"] {
                counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
            }
            Some(handle)
        })
        .clone()
}

/// Handles of one (service, pool), resolved when the table is built.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// Survives reloads (kept in the registry by service and pool name).
    pub stats: Arc<PoolStats>,
    decisions: [Counter; 8],
    upstream_errors: [Counter; 3],
    /// Only for the service's mirror pool.
    mirror: Option<[Counter; 5]>,
}

impl PoolMetrics {
    pub fn new(service: &str, pool: &str, stats: Arc<PoolStats>, is_mirror: bool) -> Self {
        let (s, p) = (service.to_string(), pool.to_string());
        PoolMetrics {
            stats,
            decisions: Reason::ALL.map(|r| {
                counter!(DECISIONS_TOTAL, "service" => s.clone(), "pool" => p.clone(), "reason" => r.as_str())
            }),
            upstream_errors: UPSTREAM_ERROR_KINDS.map(|k| {
                counter!(UPSTREAM_ERRORS_TOTAL, "service" => s.clone(), "pool" => p.clone(), "kind" => k)
            }),
            mirror: is_mirror.then(|| {
                STATUS_CLASSES.map(|c| {
                    counter!(MIRROR_REQUESTS_TOTAL, "service" => s.clone(), "pool" => p.clone(), "status_class" => c)
                })
            }),
        }
    }

    /// Handles registered nowhere (they count into nothing), for a table that is built only
    /// to prove a config builds.
    pub fn detached(stats: Arc<PoolStats>, is_mirror: bool) -> Self {
        PoolMetrics {
            stats,
            decisions: Reason::ALL.map(|_| Counter::noop()),
            upstream_errors: UPSTREAM_ERROR_KINDS.map(|_| Counter::noop()),
            mirror: is_mirror.then(|| STATUS_CLASSES.map(|_| Counter::noop())),
        }
    }

    #[inline]
    pub fn decision(&self, reason: Reason) {
        // `Reason::ALL` lists the variants in declaration order: the discriminant is the index.
        if let Some(c) = self.decisions.get(reason as usize) {
            c.increment(1);
        }
    }

    pub fn upstream_error(&self, kind: crate::upstream::client::UpstreamErrorKind) {
        use crate::upstream::client::UpstreamErrorKind as K;
        let i = match kind {
            K::Connect => 0,
            K::Timeout => 1,
            K::Reset => 2,
        };
        if let Some(c) = self.upstream_errors.get(i) {
            c.increment(1);
        }
    }

    /// A mirrored request answered with `status` (0: no answer, counted as 5xx).
    pub fn mirrored(&self, status: u16) {
        let i = if status == 0 {
            4
        } else {
            crate::stats::class_index(status)
        };
        if let Some(c) = self.mirror.as_ref().and_then(|m| m.get(i)) {
            c.increment(1);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` body: gauges refreshed from the live table, the exporter's output, then
/// request counts and latency histograms from the pools' statistics.
pub fn render(handle: Option<&PrometheusHandle>, table: &RoutingTable) -> String {
    // Gauges read from live state at scrape time: nothing to do on the request path.
    for svc in &table.services {
        for pool in &svc.pools {
            let inflight: usize = pool.endpoints.iter().map(|e| e.inflight()).sum();
            gauge!(INFLIGHT_REQUESTS, "service" => svc.name.to_string(), "pool" => pool.name.to_string())
                .set(inflight as f64);
            if svc.strategy != crate::config::Strategy::BlueGreen {
                gauge!(POOL_WEIGHT, "service" => svc.name.to_string(), "pool" => pool.name.to_string())
                    .set(f64::from(pool.weight));
            }
            for ep in &pool.endpoints {
                let up = ep.is_healthy() && ep.ejected_for().is_none();
                gauge!(ENDPOINT_HEALTHY, "service" => svc.name.to_string(), "pool" => pool.name.to_string(), "endpoint" => ep.address.clone())
                    .set(if up { 1.0 } else { 0.0 });
            }
        }
    }
    let mut out = handle.map(PrometheusHandle::render).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let series = table.services.iter().flat_map(|svc| {
        svc.pools
            .iter()
            .map(move |p| {
                (
                    svc.name.to_string(),
                    p.name.to_string(),
                    p.metrics.stats.snapshot(),
                )
            })
            .chain(std::iter::once((
                svc.name.to_string(),
                String::new(),
                svc.unserved.snapshot(),
            )))
    });
    let series: Vec<_> = series
        .chain(std::iter::once((
            String::new(),
            String::new(),
            table.unrouted.snapshot(),
        )))
        .collect();

    let _ = writeln!(
        out,
        "# HELP {REQUESTS_TOTAL} Requests answered, by service, serving pool (\"\" when none was chosen) and status class."
    );
    let _ = writeln!(out, "# TYPE {REQUESTS_TOTAL} counter");
    for (s, p, snap) in &series {
        for (class, n) in STATUS_CLASSES.iter().zip(snap.by_class) {
            let _ = writeln!(
                out,
                "{REQUESTS_TOTAL}{{service=\"{}\",pool=\"{}\",status_class=\"{class}\"}} {n}",
                escape(s),
                escape(p)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP {REQUEST_DURATION} Time from the request to its response headers."
    );
    let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
    for (s, p, snap) in &series {
        let labels = format!("service=\"{}\",pool=\"{}\"", escape(s), escape(p));
        snap.render_histogram(&mut out, REQUEST_DURATION, &labels);
    }
    out
}
