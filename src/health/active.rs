//! Active health checks: one probe task per checked endpoint, started and stopped as the
//! live table changes; unchanged endpoints keep their task and their state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::probe;
use crate::config::{Config, Health};
use crate::router::RoutingTable;
use crate::upstream::{EndpointState, UpstreamProtocol};

struct Running {
    endpoint: Arc<EndpointState>,
    health: Health,
    /// Identifies the pool's protocol settings: a change restarts the probe.
    fingerprint: u64,
    task: AbortHandle,
}

/// The set of probe tasks, owned by the control task.
#[derive(Default)]
pub struct HealthChecks {
    running: HashMap<u64, Running>,
}

impl HealthChecks {
    /// Makes the running probes match `table`: new endpoints (or a changed `health`
    /// section) get a task, removed ones lose theirs. Must run inside a tokio runtime.
    pub fn sync(&mut self, table: &RoutingTable, config: &Config) {
        type Want = (Arc<EndpointState>, Health, Arc<UpstreamProtocol>, String);
        let mut want: HashMap<u64, Want> = HashMap::new();
        let mut present: HashMap<u64, Arc<EndpointState>> = HashMap::new();
        for svc in &table.services {
            let health = config
                .services
                .get(&*svc.name)
                .and_then(|s| s.health.clone());
            for pool in &svc.pools {
                for ep in &pool.endpoints {
                    present.insert(ep.id, ep.clone());
                    if let Some(h) = &health {
                        let label = format!("{}/{}/{}", svc.name, pool.name, ep.address);
                        want.insert(ep.id, (ep.clone(), h.clone(), pool.upstream.clone(), label));
                    }
                }
            }
        }
        self.running.retain(|id, r| {
            let keep = want
                .get(id)
                .is_some_and(|(_, h, p, _)| *h == r.health && p.fingerprint == r.fingerprint);
            if !keep {
                r.task.abort();
                // No longer checked: only passive evidence may take it out of rotation now.
                if present.contains_key(id) {
                    r.endpoint.set_healthy(true);
                }
            }
            keep
        });
        for (id, (ep, health, proto, label)) in want {
            if self.running.contains_key(&id) {
                continue;
            }
            let fingerprint = proto.fingerprint;
            let task =
                tokio::spawn(probe_loop(ep.clone(), health.clone(), proto, label)).abort_handle();
            self.running.insert(
                id,
                Running {
                    endpoint: ep,
                    health,
                    fingerprint,
                    task,
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// `d` scaled by a random factor in 0.9..1.1, so a fleet does not probe in lockstep.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..1.1))
}

async fn probe_loop(
    ep: Arc<EndpointState>,
    h: Health,
    proto: Arc<UpstreamProtocol>,
    label: String,
) {
    // Spread the first probes of many endpoints (and replicas) over one interval.
    let first = h.interval.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(first).await;
    let (mut passes, mut fails) = (0u32, 0u32);
    // One probe at a time: the next starts an interval after this one ended (its timeout
    // included), so a timeout longer than the interval never makes probes overlap.
    loop {
        match probe::get_ok(&ep, &proto, &h.path, h.timeout).await {
            Ok(()) => {
                passes = passes.saturating_add(1);
                fails = 0;
                if !ep.is_healthy() && passes >= h.healthy_threshold {
                    ep.set_healthy(true);
                    info!(endpoint = %label, "health check passed: endpoint back in rotation");
                }
            }
            Err(why) => {
                fails = fails.saturating_add(1);
                passes = 0;
                if ep.is_healthy() && fails >= h.unhealthy_threshold {
                    ep.set_healthy(false);
                    warn!(endpoint = %label, error = %why, failures = fails, "health check failed: endpoint out of rotation");
                }
            }
        }
        tokio::time::sleep(jittered(h.interval)).await;
    }
}
