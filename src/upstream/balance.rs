//! Endpoint choice within a pool: round-robin, or least-requests by power of two choices.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngExt};

use super::EndpointState;
use crate::config::Balance;

/// Picks an available endpoint of `eps` by `balance` (`cursor` is the pool's round-robin
/// position), skipping `exclude` (the one a retry moves away from) when another is available.
pub fn pick<'a, R: Rng + ?Sized>(
    eps: &'a [Arc<EndpointState>],
    balance: Balance,
    cursor: &AtomicUsize,
    rng: &mut R,
    exclude: Option<u64>,
) -> Option<&'a Arc<EndpointState>> {
    let usable = |e: &&Arc<EndpointState>| e.is_available() && Some(e.id) != exclude;
    match eps.len() {
        0 => None,
        1 => eps.first().filter(usable),
        n => match balance {
            Balance::RoundRobin => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
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
