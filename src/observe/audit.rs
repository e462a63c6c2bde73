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
use std::time::SystemTime;

use arc_swap::ArcSwap;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Entries kept; `/admin/audit?limit=` goes up to this.
pub const CAPACITY: usize = 1000;

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    /// An admin API call (`caller` is the client's address).
    Admin,
    /// A reload of the config file.
    File,
    /// The rollout controller itself: a step, a promotion or an abort it judged.
    Rollout,
    /// Applied from the fleet's shared state after a change on another replica.
    Fleet,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Admin => "admin",
            Actor::File => "file",
            Actor::Rollout => "rollout",
            Actor::Fleet => "fleet",
        }
    }
}

/// A rollout's position, as the audit shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMark {
    pub state: String,
    pub step: usize,
}

/// One service's live fields, or the part of them a change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<IndexMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Drained endpoints as `pool/address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMark>,
}

/// Every service's live fields at one moment, by service.
pub type LiveFields = IndexMap<String, ServiceFields>;

/// What a change touched: `before` and `after` of the fields that differ, for one service as
/// a [`ServiceFields`] object, for several as `{"services": {name: fields}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Touched {
    Many {
        services: IndexMap<String, ServiceFields>,
    },
    One(ServiceFields),
}

impl Default for Touched {
    fn default() -> Self {
        Touched::One(ServiceFields::default())
    }
}

impl Touched {
    /// The fields that differ between `before` and `after`, and the one service changed if
    /// only one was (services that appear or vanish count as changed).
    pub fn between(before: &LiveFields, after: &LiveFields) -> (Option<String>, Touched, Touched) {
        let empty = ServiceFields::default();
        let mut changed: Vec<(String, ServiceFields, ServiceFields)> = Vec::new();
        let names = before
            .keys()
            .chain(after.keys().filter(|k| !before.contains_key(*k)));
        for name in names {
            let (b, a) = (
                before.get(name).unwrap_or(&empty),
                after.get(name).unwrap_or(&empty),
            );
            if b == a {
                continue;
            }
            let mut bd = ServiceFields::default();
            let mut ad = ServiceFields::default();
            if b.weights != a.weights {
                (bd.weights, ad.weights) = (b.weights.clone(), a.weights.clone());
            }
            if b.active != a.active {
                (bd.active, ad.active) = (b.active.clone(), a.active.clone());
            }
            if b.drained != a.drained {
                bd.drained = Some(b.drained.clone().unwrap_or_default());
                ad.drained = Some(a.drained.clone().unwrap_or_default());
            }
            if b.rollout != a.rollout {
                (bd.rollout, ad.rollout) = (b.rollout.clone(), a.rollout.clone());
            }
            changed.push((name.clone(), bd, ad));
        }
        match changed.len() {
            0 => (None, Touched::One(empty.clone()), Touched::One(empty)),
            1 => {
                let Some((name, b, a)) = changed.pop() else {
                    return (None, Touched::default(), Touched::default());
                };
                (Some(name), Touched::One(b), Touched::One(a))
            }
            _ => {
                let (mut b, mut a) = (IndexMap::new(), IndexMap::new());
                for (name, bd, ad) in changed {
                    b.insert(name.clone(), bd);
                    a.insert(name, ad);
                }
                (
                    None,
                    Touched::Many { services: b },
                    Touched::Many { services: a },
                )
            }
        }
    }

    /// One line for the log: `weights={stable:90,canary:10}` and so on; `-` when empty.
    pub fn describe(&self) -> String {
        let fields = |f: &ServiceFields| {
            let mut parts = Vec::new();
            if let Some(w) = &f.weights {
                let w: Vec<String> = w.iter().map(|(p, w)| format!("{p}:{w}")).collect();
                parts.push(format!("weights={{{}}}", w.join(",")));
            }
            if let Some(a) = &f.active {
                parts.push(format!("active={a}"));
            }
            if let Some(d) = &f.drained {
                parts.push(format!("drained=[{}]", d.join(",")));
            }
            if let Some(r) = &f.rollout {
                parts.push(format!("rollout={}@{}", r.state, r.step));
            }
            parts.join(" ")
        };
        let text = match self {
            Touched::One(f) => fields(f),
            Touched::Many { services } => services
                .iter()
                .map(|(n, f)| format!("{n}: {}", fields(f)))
                .collect::<Vec<_>>()
                .join("; "),
        };
        if text.is_empty() { "-".into() } else { text }
    }
}

/// One applied change, with the fields of its audit log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// RFC 3339 UTC, to the millisecond.
    pub at: String,
    pub actor: Actor,
    /// The client's address for an admin call; `null` otherwise.
    pub caller: Option<String>,
    /// What was done: the admin call's method and path, `reload (watcher)`, `rollout step 2
    /// of 4 (25%)`, ...
    pub call: String,
    /// The replica that made the change, in a fleet (`null` on a single instance).
    #[serde(default)]
    pub replica: Option<String>,
    pub before: Touched,
    pub after: Touched,
    pub generation: u64,
    /// The service changed; `None` for a change that touched several (or none).
    pub service: Option<String>,
}

impl AuditEntry {
    pub fn now(actor: Actor, call: String) -> Self {
        AuditEntry {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            actor,
            caller: None,
            call,
            replica: None,
            before: Touched::default(),
            after: Touched::default(),
            generation: 0,
            service: None,
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
