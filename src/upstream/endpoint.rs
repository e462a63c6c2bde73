//! Runtime state of one endpoint, kept in atomics so the data path reads it without locks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Identity of an endpoint across table rebuilds: (service, pool, address).
pub type EndpointKey = (String, String, String);

/// State that survives reloads: a new table reuses the same `Arc<EndpointState>` for the
/// same key, so health, drains, in-flight counts and pooled connections carry over.
#[derive(Debug)]
pub struct EndpointState {
    /// Unique for the process lifetime; keys the per-worker connection pools.
    pub id: u64,
    /// `host:port` as configured.
    pub address: String,
    /// Set when the address is an IP literal; otherwise resolved at connect time.
    pub socket_addr: Option<SocketAddr>,
    healthy: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since [`clock_origin`]; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    inflight: AtomicUsize,
    consecutive_failures: AtomicU32,
}

/// The process-wide origin for the millisecond timestamps kept in atomics.
pub fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since [`clock_origin`], never 0 (0 means "unset" in the atomics).
pub fn now_ms() -> u64 {
    clock_origin().elapsed().as_millis() as u64 + 1
}

impl EndpointState {
    pub fn new(address: &str) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        EndpointState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            address: address.to_string(),
            socket_addr: address.parse().ok(),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    /// Can take new requests: healthy (or unchecked), not draining, not ejected.
    #[inline]
    pub fn is_available(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) || self.draining.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Time left in an ejection, if any.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn eject_for(&self, d: Duration) {
        self.ejected_until_ms
            .store(now_ms() + d.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Records a success or failure for passive outlier detection; returns the new streak.
    pub fn record_result(&self, failed: bool) -> u32 {
        if failed {
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            0
        }
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InflightGuard(Arc<EndpointState>);

impl InflightGuard {
    /// Counts a request to `ep` as in flight until the guard drops.
    #[inline]
    pub fn begin(ep: Arc<EndpointState>) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(ep)
    }

    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
