//! The audit ring: the last applied changes (admin calls, rollout actions and steps,
//! reloads), each as the control task logs it on the `switchyard::audit` target, kept for
//! `/admin/audit`. Written by the control task only, read by admin handlers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

/// Entries kept; `/admin/audit?limit=` goes up to this.
pub const CAPACITY: usize = 1000;

/// One applied change, with the fields of its audit log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    /// RFC 3339 UTC, to the millisecond.
    pub at: String,
    /// The client's address, or `-` for the control task's own changes (rollout steps, reloads).
    pub caller: String,
    pub call: String,
    pub before: String,
    pub after: String,
    pub generation: u64,
    /// The service changed; `None` for a reload, which may touch all of them.
    pub service: Option<String>,
}

impl AuditEntry {
    pub fn now(service: Option<&str>, call: String, caller: String) -> Self {
        AuditEntry {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            caller,
            call,
            before: String::new(),
            after: String::new(),
            generation: 0,
            service: service.map(str::to_string),
        }
    }
}

/// Copy-on-write: a change is seconds apart at most, so copying a thousand pointers per
/// change costs nothing, and readers never wait for the writer.
#[derive(Default)]
pub struct AuditLog {
    ring: ArcSwap<VecDeque<Arc<AuditEntry>>>,
}

impl AuditLog {
    pub fn push(&self, entry: AuditEntry) -> Arc<AuditEntry> {
        let entry = Arc::new(entry);
        self.ring.rcu(|ring| {
            let mut next = VecDeque::clone(ring);
            if next.len() == CAPACITY {
                next.pop_front();
            }
            next.push_back(entry.clone());
            next
        });
        entry
    }

    /// The last `limit` entries, newest first.
    pub fn latest(&self, limit: usize) -> Vec<Arc<AuditEntry>> {
        self.ring.load().iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_first_and_stays_bounded() {
        let log = AuditLog::default();
        for i in 0..CAPACITY + 5 {
            let mut e = AuditEntry::now(Some("svc"), format!("call {i}"), "-".into());
            e.generation = i as u64;
            log.push(e);
        }
        let all = log.latest(usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].generation, (CAPACITY + 4) as u64);
        assert_eq!(all[CAPACITY - 1].generation, 5);
        assert_eq!(log.latest(2).len(), 2);
    }
}
