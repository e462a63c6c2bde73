//! Passive outlier ejection: consecutive connect errors or 5xx answers eject an endpoint
//! for a while. Never the last available endpoint of its pool (passive evidence alone must
//! not empty a pool, as Envoy's max ejection percent guards).

use tracing::warn;

use crate::config::Outlier;
use crate::router::PoolTable;
use crate::upstream::EndpointState;

/// Records one outcome of `ep` (in `pool`) and ejects it when its failure streak is long enough.
#[inline]
pub fn observe(outlier: &Outlier, pool: &PoolTable, ep: &EndpointState, failed: bool) {
    let streak = ep.record_result(failed);
    if !failed || streak < outlier.consecutive_failures {
        return;
    }
    let others = pool
        .endpoints
        .iter()
        .filter(|e| e.id != ep.id && e.is_available())
        .count();
    if others == 0 {
        return;
    }
    ep.eject_for(outlier.ejection);
    ep.record_result(false);
    warn!(
        endpoint = %ep.address,
        pool = %pool.name,
        failures = streak,
        ejection = ?outlier.ejection,
        "endpoint ejected after consecutive failures"
    );
}
