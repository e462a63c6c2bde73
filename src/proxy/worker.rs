//! What one worker owns for the connections it serves: the upstream connection pools and the
//! counters that bound held requests and mirror copies. The worker makes it when its thread
//! starts and lends it (`Rc`) to each connection's service; only that thread ever touches it,
//! so nothing here locks or needs an atomic.

use std::cell::Cell;

use crate::upstream::client::Pools;

/// Requests held (`hold_timeout`) per worker at most; past it, a request that would wait gets
/// its 503 at once, so a long outage cannot pile up unbounded memory.
const MAX_HELD: usize = 10_000;

/// Mirror copies in flight per worker at most; past it, requests are not mirrored.
const MAX_MIRRORING: usize = 512;

#[derive(Debug, Default)]
pub struct Worker {
    /// Idle HTTP/1.1 and shared HTTP/2 connections to the upstreams, per endpoint.
    pub pools: Pools,
    held: Cell<usize>,
    mirroring: Cell<usize>,
}

impl Worker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more held request, unless the worker holds its maximum already.
    pub(crate) fn hold_one(&self) -> bool {
        take(&self.held, MAX_HELD)
    }

    pub(crate) fn release_held(&self) {
        self.held.set(self.held.get().saturating_sub(1));
    }

    /// Has the worker room for another mirror copy?
    pub(crate) fn can_mirror(&self) -> bool {
        self.mirroring.get() < MAX_MIRRORING
    }

    pub(crate) fn mirror_started(&self) {
        self.mirroring.set(self.mirroring.get() + 1);
    }

    pub(crate) fn mirror_ended(&self) {
        self.mirroring.set(self.mirroring.get().saturating_sub(1));
    }
}

fn take(counter: &Cell<usize>, max: usize) -> bool {
    let n = counter.get();
    if n >= max {
        return false;
    }
    counter.set(n + 1);
    true
}
