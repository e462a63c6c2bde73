//! The operator's live view: per-pool figures sampled once a second into bounded rings
//! (`sampler`), the last applied changes (`audit`), and the feed of both that
//! `/admin/events` streams. It only reads the published table and is told of changes by the
//! control task, so the request path does no work for it; it may not change anything.

pub mod audit;
pub mod sampler;

use bytes::Bytes;
use tokio::sync::broadcast;

pub use audit::{AuditEntry, AuditLog};
pub use sampler::{Point, Series};

/// Events queued per subscriber before a slow one starts skipping (it never holds up the
/// sender): about two minutes of `stats` events (one a second) when nothing else is sent,
/// less during a burst of `change` events.
const EVENT_BACKLOG: usize = 128;

/// One server-sent event, formatted once by [`Observer::publish`] and shared by every
/// stream: with many clients, formatting per client multiplied the work and the memory.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    /// `event: {kind}\ndata: {json on one line}\n\n`, as written to the clients.
    pub frame: Bytes,
}

/// What the sampler, the control task and the admin handlers share.
pub struct Observer {
    pub series: Series,
    pub audit: AuditLog,
    events: broadcast::Sender<Event>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            series: Series::default(),
            audit: AuditLog::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }
}

impl Observer {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends to every subscriber; none listening is fine, and a full queue drops the
    /// subscriber's oldest event rather than waiting.
    pub fn publish(&self, kind: &'static str, data: &serde_json::Value) {
        if self.events.receiver_count() == 0 {
            // Nobody listening: not worth formatting.
            return;
        }
        let _ = self.events.send(Event {
            kind,
            frame: Bytes::from(format!("event: {kind}\ndata: {data}\n\n")),
        });
    }

    /// An applied change: into the audit ring, and one `change` event per service it
    /// touched, with that service's state after it.
    pub fn changed(&self, entry: AuditEntry, views: &[crate::api::ServiceView]) {
        let entry = self.audit.push(entry);
        for view in views {
            self.publish(
                "change",
                &serde_json::json!({ "service": view.name, "state": view, "audit": &*entry }),
            );
        }
    }
}
