//! `hold_timeout`: a request that finds nothing to serve it waits for an endpoint to come
//! back (a health check passing, an ejection ending, an instance restarting) instead of
//! failing at once.

use std::time::Duration;

use tokio::time::Instant;

use super::worker::Worker;

/// The wait of one request: backs off from 10 ms to 200 ms between tries. Counted in its
/// worker's held requests while it waits.
pub struct Hold<'w> {
    worker: &'w Worker,
    timeout: Duration,
    /// When the request arrived: the hold counts from there.
    started: Instant,
    step: Duration,
    counted: bool,
}

impl<'w> Hold<'w> {
    pub fn new(worker: &'w Worker, timeout: Duration, started: std::time::Instant) -> Self {
        Hold {
            worker,
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
            if !self.worker.hold_one() {
                return false;
            }
            self.counted = true;
        }
        tokio::time::sleep(self.step.min(deadline - now)).await;
        self.step = (self.step * 2).min(Duration::from_millis(200));
        true
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.worker.release_held();
        }
    }
}
