//! The audit ring: the last applied changes (admin calls, rollout steps and actions, reloads,
//! changes applied from a fleet), each as the control task logs it on the `switchyard::audit`
//! target, kept for `/admin/audit`. Written by the control task only, read by admin handlers.
//!
//! An entry says who made the change (`actor`) and what it touched: `before` and `after` are
//! the touched fields in the shapes of the service state (`weights`, `active`, `drained`,
//! `rollout`), computed in one place ([`Touched::between`]) from the live state before and
//! after the change, so every kind of change is recorded alike.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use crate::api::{Actor, AuditEntry, LiveFields, RolloutMark, ServiceFields, Touched};

/// Entries kept; `/admin/audit?limit=` goes up to this.
pub const CAPACITY: usize = 1000;

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
            let mut e = AuditEntry::now(Actor::Admin, format!("call {i}"));
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
