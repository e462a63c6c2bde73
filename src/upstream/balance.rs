//! Endpoint choice within a pool: round-robin, or least-requests by power of two choices.

use std::sync::Arc;

use rand::{Rng, RngExt};

use super::EndpointState;
use crate::config::Balance;
use crate::router::PoolTable;

/// Picks an available endpoint of `pool`, skipping `exclude` (the one a retry moves away from)
/// when another is available.
pub fn pick<'a, R: Rng + ?Sized>(
    pool: &'a PoolTable,
    rng: &mut R,
    exclude: Option<u64>,
) -> Option<&'a Arc<EndpointState>> {
    let eps = &pool.endpoints;
    let usable = |e: &&Arc<EndpointState>| e.is_available() && Some(e.id) != exclude;
    match eps.len() {
        0 => None,
        1 => eps.first().filter(usable),
        n => match pool.balance {
            Balance::RoundRobin => {
                let start = pool.next_cursor();
                (0..n).map(|i| &eps[(start + i) % n]).find(usable)
            }
            Balance::LeastRequests => {
                // Power of two choices: two random distinct candidates, the less loaded wins.
                let a = rng.random_range(0..n);
                let b = (a + 1 + rng.random_range(0..n - 1)) % n;
                let (ea, eb) = (&eps[a], &eps[b]);
                match (usable(&ea), usable(&eb)) {
                    (true, true) => Some(if eb.inflight() < ea.inflight() {
                        eb
                    } else {
                        ea
                    }),
                    (true, false) => Some(ea),
                    (false, true) => Some(eb),
                    (false, false) => eps.iter().filter(usable).min_by_key(|e| e.inflight()),
                }
            }
        },
    }
}
