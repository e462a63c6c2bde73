//! The pure part of an admin change: `(live config, change, facts) → (next config, what else
//! changes)`. No I/O, no clock, no table: the control task checks 404 and 412 before it and
//! carries out the effects after it (publish the table, persist, audit; `state/mod.rs`).

use indexmap::IndexMap;
use serde_json::Value;

use super::command::{BodyError, Change, ControlError};
use crate::config::{Config, Service, Strategy};

/// A service's split: what `rollback` restores.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSplit {
    pub weights: IndexMap<String, u32>,
    pub active: Option<String>,
}

impl ServiceSplit {
    pub fn of(svc: &Service) -> ServiceSplit {
        ServiceSplit {
            weights: svc.weights.clone(),
            active: svc.active.clone(),
        }
    }

    /// `stable=90,canary=10` or `active=blue`, then ` draining`/` serving` for a drain.
    pub fn describe(&self, drain: Option<bool>) -> String {
        let mut out = match &self.active {
            Some(a) => format!("active={a}"),
            None => self
                .weights
                .iter()
                .map(|(p, w)| format!("{p}={w}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        if let Some(d) = drain {
            out.push_str(if d { " draining" } else { " serving" });
        }
        out
    }
}

/// What the transition decides on besides the config: live facts the control task reads.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The service's earlier splits, newest last.
    pub history: &'a [ServiceSplit],
    /// For a drain: the endpoint's live state.
    pub endpoint: Option<EndpointFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointFacts {
    pub draining: bool,
    /// Endpoints of the pool, other than this one, available to serve now.
    pub others_available: usize,
}

/// What happens to the service's rollback history.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryStep {
    Keep,
    /// The split before this change becomes the newest earlier split.
    Push(ServiceSplit),
    /// A rollback used the newest earlier split.
    Pop,
}

/// The outcome of a change that passed its checks.
#[derive(Debug, Clone)]
pub struct Transition {
    pub next: Config,
    pub before: ServiceSplit,
    pub after: ServiceSplit,
    /// Told to the caller along with the new state.
    pub warnings: Vec<String>,
    /// For a drain: the endpoint's draining to set.
    pub drain: Option<bool>,
    pub history: HistoryStep,
    /// The change asks for what is already live: no new generation, no write.
    pub unchanged: bool,
}

/// Applies `change` to `config`. The service (and, for a drain, the pool and endpoint) must
/// exist: the caller answers 404 before. Errors are the 400s and 409s of the change itself.
pub fn transition(
    config: &Config,
    change: &Change,
    facts: &Facts<'_>,
) -> Result<Transition, ControlError> {
    let name = change.service();
    let mut next = config.clone();
    let svc = next
        .services
        .get_mut(name)
        .ok_or_else(|| ControlError::NotFound(format!("unknown service {name:?}")))?;
    let before = ServiceSplit::of(svc);
    let mut warnings = Vec::new();
    let mut history = HistoryStep::Keep;
    match change {
        Change::SetWeights { weights, .. } => set_weights(svc, weights, &mut warnings)?,
        Change::Swap {
            checked_standby, ..
        } => swap(svc, checked_standby.as_ref())?,
        Change::Rollback { .. } => {
            rollback(svc, facts)?;
            history = HistoryStep::Pop;
        }
        Change::Rollout { .. } => {
            return Err(ControlError::BadRequest(
                "rollout actions are the rollout controller's".into(),
            ));
        }
        Change::Drain {
            pool,
            address,
            drain: wanted,
            ..
        } => {
            let unchanged = drain(svc, pool, address, *wanted, facts)?;
            let after = ServiceSplit::of(svc);
            return Ok(Transition {
                next,
                after,
                unchanged,
                before,
                warnings,
                drain: Some(*wanted),
                history,
            });
        }
    }
    let after = ServiceSplit::of(svc);
    // Weights and swaps are what `rollback` undoes; a rollback pops instead.
    let undoable = matches!(change, Change::SetWeights { .. } | Change::Swap { .. });
    let unchanged = undoable && after == before;
    if undoable && !unchanged {
        history = HistoryStep::Push(before.clone());
    }
    Ok(Transition {
        next,
        before,
        after,
        warnings,
        drain: None,
        history,
        unchanged,
    })
}

/// `PUT .../weights`: the named pools get their weights; a new total is worth a warning.
fn set_weights(
    svc: &mut Service,
    requested: &Result<Vec<(String, Value)>, BodyError>,
    warnings: &mut Vec<String>,
) -> Result<(), ControlError> {
    let weights = check_requested(requested, svc)?;
    let old_total = svc.weight_total();
    for (pool, w) in weights {
        svc.weights.insert(pool, w);
    }
    check_weights(svc)?;
    let new_total = svc.weight_total();
    if new_total != old_total {
        warnings.push(format!(
            "weight total changed from {old_total} to {new_total}: users are reshuffled between buckets"
        ));
    }
    Ok(())
}

/// Blue-green: the standby becomes active, unless it is not the one whose checks passed.
fn swap(svc: &mut Service, checked_standby: Option<&String>) -> Result<(), ControlError> {
    if svc.strategy != Strategy::BlueGreen {
        return Err(ControlError::BadRequest(format!(
            "service {:?} is {}, not blue-green",
            svc.name,
            svc.strategy.as_str()
        )));
    }
    let standby = svc
        .pools
        .keys()
        .find(|p| Some(*p) != svc.active.as_ref())
        .cloned();
    if let Some(checked) = checked_standby
        && standby.as_ref() != Some(checked)
    {
        return Err(ControlError::Conflict(
            "the standby pool changed while its checks ran; try again".into(),
        ));
    }
    svc.active = standby;
    Ok(())
}

/// The split before the last change comes back.
fn rollback(svc: &mut Service, facts: &Facts<'_>) -> Result<(), ControlError> {
    let previous = facts.history.last().cloned().ok_or_else(|| {
        ControlError::Conflict(format!(
            "service {:?} has no earlier split to roll back to",
            svc.name
        ))
    })?;
    svc.weights = previous.weights;
    svc.active = previous.active;
    Ok(())
}

/// Drains or undrains `address` of `pool`, guarded by `min_available`; `true` when it already
/// was as wanted (live and in the config).
fn drain(
    svc: &mut Service,
    pool: &str,
    address: &String,
    wanted: bool,
    facts: &Facts<'_>,
) -> Result<bool, ControlError> {
    let name = svc.name.clone();
    let p = svc
        .pools
        .get_mut(pool)
        .ok_or_else(|| ControlError::NotFound(format!("service {name:?} has no pool {pool:?}")))?;
    let endpoint = facts.endpoint.unwrap_or(EndpointFacts {
        draining: p.drained.contains(address),
        others_available: p.endpoints.len().saturating_sub(1),
    });
    if wanted && !endpoint.draining && endpoint.others_available < p.min_available {
        return Err(ControlError::Conflict(format!(
            "draining {address} would leave {} available endpoint(s) in pool {pool:?}, below min_available = {}",
            endpoint.others_available, p.min_available
        )));
    }
    let in_config = p.drained.contains(address);
    p.drained.retain(|a| a != address);
    if wanted {
        p.drained.push(address.clone());
    }
    Ok(endpoint.draining == wanted && in_config == wanted)
}

/// The requested weights checked against the service: known pools, integers from 0 to
/// 1,000,000.
fn check_requested(
    requested: &Result<Vec<(String, Value)>, BodyError>,
    svc: &Service,
) -> Result<Vec<(String, u32)>, ControlError> {
    if svc.strategy == Strategy::BlueGreen {
        return Err(ControlError::BadRequest(format!(
            "service {:?} is blue-green: use POST /admin/services/{}/swap",
            svc.name, svc.name
        )));
    }
    let requested = requested.as_ref().map_err(|e| e.clone())?;
    if requested.is_empty() {
        return Err(ControlError::BadRequest("no weights given".into()));
    }
    let mut out = Vec::with_capacity(requested.len());
    for (pool, w) in requested {
        if !svc.pools.contains_key(pool) {
            let known: Vec<&str> = svc.pools.keys().map(String::as_str).collect();
            return Err(ControlError::BadRequest(format!(
                "unknown pool {pool:?} (pools: {})",
                known.join(", ")
            )));
        }
        let w = w.as_u64().filter(|w| *w <= 1_000_000).ok_or_else(|| {
            ControlError::BadRequest(format!(
                "weight of {pool:?} must be an integer from 0 to 1000000, got {w}"
            ))
        })?;
        out.push((pool.clone(), w as u32));
    }
    Ok(out)
}

fn check_weights(svc: &Service) -> Result<(), ControlError> {
    if svc.weight_total() == 0 {
        return Err(ControlError::BadRequest(
            "the weights must add up to more than 0".into(),
        ));
    }
    if let Some(r) = &svc.rollout
        && let Some((pool, _)) = svc
            .weights
            .iter()
            .find(|(p, w)| **w > 0 && **p != r.baseline && **p != r.canary)
    {
        return Err(ControlError::BadRequest(format!(
            "pool {pool:?} cannot carry weight: the rollout weights only {} and {}",
            r.baseline, r.canary
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> Config {
        crate::config::fixture::shop_and_bg()
    }

    fn weights(pairs: Value) -> Change {
        Change::set_weights("shop".into(), pairs.to_string().as_bytes())
    }

    fn run(change: &Change, facts: &Facts<'_>) -> Result<Transition, ControlError> {
        transition(&config(), change, facts)
    }

    fn bad_request(r: Result<Transition, ControlError>) -> String {
        match r {
            Err(e) if e.status() == 400 => e.to_string(),
            other => panic!("want a 400, got {other:?}"),
        }
    }

    #[test]
    fn weights_change_the_split_and_push_the_old_one() {
        let t = run(
            &weights(json!({"stable": 50, "canary": 50})),
            &Facts::default(),
        )
        .unwrap();
        assert_eq!(t.next.services["shop"].weights["canary"], 50);
        assert_eq!(t.before.describe(None), "stable=90,canary=10");
        assert_eq!(t.after.describe(None), "stable=50,canary=50");
        assert_eq!(t.history, HistoryStep::Push(t.before.clone()));
        assert!(!t.unchanged && t.warnings.is_empty());
        // The live config is untouched: the transition is pure.
        assert_eq!(config().services["shop"].weights["canary"], 10);
    }

    #[test]
    fn the_same_weights_change_nothing() {
        let t = run(&weights(json!({"canary": 10})), &Facts::default()).unwrap();
        assert!(t.unchanged);
        assert_eq!(t.history, HistoryStep::Keep);
    }

    #[test]
    fn a_new_total_is_warned_about() {
        let t = run(&weights(json!({"canary": 20})), &Facts::default()).unwrap();
        assert_eq!(
            t.warnings,
            ["weight total changed from 100 to 110: users are reshuffled between buckets"]
        );
    }

    #[test]
    fn bad_weights_are_400s() {
        for (change, want) in [
            (Change::set_weights("shop".into(), b"{"), "body is not JSON"),
            (weights(json!([1])), "body must be a JSON object"),
            (weights(json!({})), "no weights given"),
            (
                weights(json!({"beta": 1})),
                "unknown pool \"beta\" (pools: stable, canary)",
            ),
            (
                weights(json!({"canary": -1})),
                "must be an integer from 0 to 1000000, got -1",
            ),
            (weights(json!({"canary": 1.5})), "got 1.5"),
            (
                weights(json!({"stable": 0, "canary": 0})),
                "must add up to more than 0",
            ),
        ] {
            let message = bad_request(run(&change, &Facts::default()));
            assert!(message.contains(want), "{message} (want {want})");
        }
        let bg = Change::set_weights("bg".into(), b"{\"blue\": 1}");
        assert!(
            bad_request(run(&bg, &Facts::default())).contains("use POST /admin/services/bg/swap")
        );
    }

    #[test]
    fn swap_makes_the_standby_active() {
        let swap = |checked: Option<&str>| Change::Swap {
            service: "bg".into(),
            checked_standby: checked.map(str::to_owned),
        };
        let t = run(&swap(Some("green")), &Facts::default()).unwrap();
        assert_eq!(t.next.services["bg"].active.as_deref(), Some("green"));
        assert_eq!(
            (t.before.describe(None), t.after.describe(None)),
            ("active=blue".into(), "active=green".into())
        );
        assert!(matches!(
            run(&swap(Some("blue")), &Facts::default()),
            Err(ControlError::Conflict(_))
        ));
        let not_bg = Change::Swap {
            service: "shop".into(),
            checked_standby: None,
        };
        assert!(bad_request(run(&not_bg, &Facts::default())).contains("is canary, not blue-green"));
    }

    #[test]
    fn rollback_restores_the_newest_earlier_split() {
        let rollback = Change::Rollback {
            service: "shop".into(),
        };
        assert!(matches!(
            run(&rollback, &Facts::default()),
            Err(ControlError::Conflict(_))
        ));
        let earlier = [
            ServiceSplit {
                weights: [("stable".into(), 1), ("canary".into(), 1)]
                    .into_iter()
                    .collect(),
                active: None,
            },
            ServiceSplit {
                weights: [("stable".into(), 70), ("canary".into(), 30)]
                    .into_iter()
                    .collect(),
                active: None,
            },
        ];
        let facts = Facts {
            history: &earlier,
            endpoint: None,
        };
        let t = run(&rollback, &facts).unwrap();
        assert_eq!(t.after.describe(None), "stable=70,canary=30");
        assert_eq!(t.history, HistoryStep::Pop);
    }

    #[test]
    fn drains_respect_min_available() {
        let drain = |address: &str, drain: bool| Change::Drain {
            service: "shop".into(),
            pool: "stable".into(),
            address: address.into(),
            drain,
        };
        let live = |draining, others_available| Facts {
            history: &[],
            endpoint: Some(EndpointFacts {
                draining,
                others_available,
            }),
        };
        let t = run(&drain("127.0.0.1:1", true), &live(false, 1)).unwrap();
        assert_eq!(t.drain, Some(true));
        assert_eq!(
            t.next.services["shop"].pools["stable"].drained,
            ["127.0.0.1:1"]
        );
        assert!(!t.unchanged);
        // The other endpoint is down: draining this one would leave none.
        match run(&drain("127.0.0.1:1", true), &live(false, 0)) {
            Err(ControlError::Conflict(m)) => assert!(m.contains("below min_available = 1"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Undraining what serves already changes nothing.
        assert!(
            run(&drain("127.0.0.1:1", false), &live(false, 1))
                .unwrap()
                .unchanged
        );
    }
}
