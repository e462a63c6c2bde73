//! What the proxy knows about one client connection: its address, the forwarding facts
//! worked out once for all its requests, and request counters shared by the service (which
//! starts and finishes requests) and the server's header and idle checks (which read them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::HeaderValue;

use super::forward::ClientFacts;

/// One per client connection, shared by its requests, its I/O wrapper and its watchdog.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub facts: ClientFacts,
    pub activity: ConnActivity,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        let ip = peer.ip().to_string();
        ConnInfo {
            peer,
            facts: ClientFacts {
                peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
                https,
            },
            activity: ConnActivity::default(),
        }
    }
}

/// Request counters of one client connection.
///
/// Only the connection's own thread writes these, so plain load/store suffices (no RMW).
#[derive(Debug, Default)]
pub struct ConnActivity {
    pub bytes_read: AtomicU64,
    /// `bytes_read` when the last response finished: bytes past it are a new request's head.
    pub bytes_at_finish: AtomicU64,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// The connection speaks HTTP/2 (its first bytes were the h2 preface).
    h2: AtomicBool,
}

impl ConnActivity {
    pub(crate) fn start(&self) {
        bump(&self.started);
    }

    pub(crate) fn finish(&self) {
        bump(&self.finished);
        self.bytes_at_finish
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Looks at the first bytes of the connection for the HTTP/2 preface.
    pub(crate) fn note_preface(&self, first: &[u8]) {
        if first.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub(crate) fn add_read(&self, n: usize) {
        let v = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read.store(v + n as u64, Ordering::Relaxed);
    }

    /// Requests started whose response has not been fully sent.
    pub fn in_flight(&self) -> u64 {
        let started = self.started.load(Ordering::Relaxed);
        started.saturating_sub(self.finished.load(Ordering::Relaxed))
    }
}

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// A request in progress on its client connection: counted as started when made, finished
/// when dropped. The response body carries it, so a request ends when the client has its
/// last byte or goes away. It is also how the request reaches its connection's facts.
pub(crate) struct RequestGuard(Arc<ConnInfo>);

impl RequestGuard {
    pub(crate) fn start(conn: Arc<ConnInfo>) -> Self {
        conn.activity.start();
        RequestGuard(conn)
    }

    pub(crate) fn conn(&self) -> &ConnInfo {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.activity.finish();
    }
}
