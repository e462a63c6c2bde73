//! `hold_timeout`: a request that finds nothing to serve it waits for an endpoint to come
//! back (a health check passing, an ejection ending, an instance restarting) instead of
//! failing at once.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// Requests held per worker thread at most; past it, a request that would wait gets its
/// 503 at once, so a long outage cannot pile up unbounded memory.
const MAX_HELD_PER_WORKER: usize = 10_000;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// The wait of one request: backs off from 10 ms to 200 ms between tries.
pub struct Hold {
    timeout: Duration,
    /// When the request arrived: the hold counts from there.
    started: Instant,
    step: Duration,
    counted: bool,
}

impl Hold {
    pub fn new(timeout: Duration, started: std::time::Instant) -> Self {
        Hold {
            timeout,
            started: Instant::from_std(started),
            step: Duration::from_millis(10),
            counted: false,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.timeout.is_zero()
    }

    /// Waits one step; false when holding is off, over, or the worker holds too many.
    pub async fn wait(&mut self) -> bool {
        if !self.enabled() {
            return false;
        }
        let now = Instant::now();
        let deadline = self.started + self.timeout;
        if now >= deadline {
            return false;
        }
        if !self.counted {
            if HELD.with(Cell::get) >= MAX_HELD_PER_WORKER {
                return false;
            }
            HELD.with(|h| h.set(h.get() + 1));
            self.counted = true;
        }
        tokio::time::sleep(self.step.min(deadline - now)).await;
        self.step = (self.step * 2).min(Duration::from_millis(200));
        true
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.counted {
            HELD.with(|h| h.set(h.get().saturating_sub(1)));
        }
    }
}
