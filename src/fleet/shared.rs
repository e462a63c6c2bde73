//! The part of the live state a fleet shares: per service, the weights, the blue-green active
//! pool, the drained endpoints, the splits `rollback` steps back through and the rollout's
//! progress, with the fleet-wide generation.
//! Everything else (routes, pools, endpoints, settings) stays in each replica's file.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::control::rollout::SavedRollout;
use crate::control::state::ControlState;
use crate::control::transition::ServiceSplit;
use crate::observe::audit::Actor;

/// Why a value found in the store is not a state a replica may apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    #[error("the fleet state at {key} is not readable: {error}")]
    Unreadable { key: String, error: String },
    #[error("the fleet's state has no generation")]
    NoGeneration,
    #[error("the fleet's weights of service {service:?} are all 0 (the sum must be above 0)")]
    ZeroWeights { service: String },
    #[error(
        "the fleet's rollback history of service {service:?} holds weights that are all 0: {weights:?}"
    )]
    ZeroHistory {
        service: String,
        weights: IndexMap<String, u32>,
    },
}

/// What every replica of a fleet applies, as stored in etcd (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedState {
    /// One more for each committed change: the same number on every replica for the same
    /// state.
    pub generation: u64,
    pub services: IndexMap<String, SharedService>,
    /// Who made the change that led to this state, so every replica can audit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ChangeNote>,
}

/// The change a commit made: its origin, for the audit entry each replica makes when it
/// applies the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNote {
    /// The replica that committed it.
    pub replica: String,
    pub actor: Actor,
    pub call: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedService {
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub weights: IndexMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Drained endpoints by pool; pools without any are left out.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub drained: IndexMap<String, Vec<String>>,
    /// The earlier splits, newest last: a rollback on any replica steps back through the
    /// fleet's changes, not only its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ServiceSplit>,
    /// The rollout's progress, once it has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<SavedRollout>,
}

impl SharedState {
    /// The live fields of `config`, at `generation`.
    pub fn of(config: &Config, generation: u64) -> SharedState {
        let services = config
            .services
            .iter()
            .map(|(name, svc)| {
                let drained = svc
                    .pools
                    .iter()
                    .filter(|(_, p)| !p.drained.is_empty())
                    .map(|(pool, p)| (pool.clone(), p.drained.clone()))
                    .collect();
                let shared = SharedService {
                    weights: svc.weights.clone(),
                    active: svc.active.clone(),
                    drained,
                    history: Vec::new(),
                    rollout: None,
                };
                (name.clone(), shared)
            })
            .collect();
        SharedState {
            generation,
            services,
            last: None,
        }
    }

    /// Checks what an admin body is checked for, before a replica applies a state it read:
    /// a generation, and weights that are not all zero.
    pub fn validate(&self) -> Result<(), InvalidState> {
        if self.generation == 0 {
            return Err(InvalidState::NoGeneration);
        }
        let all_zero = |w: &IndexMap<String, u32>| !w.is_empty() && w.values().all(|w| *w == 0);
        for (name, svc) in &self.services {
            if all_zero(&svc.weights) {
                return Err(InvalidState::ZeroWeights {
                    service: name.clone(),
                });
            }
            if let Some(h) = svc.history.iter().find(|h| all_zero(&h.weights)) {
                return Err(InvalidState::ZeroHistory {
                    service: name.clone(),
                    weights: h.weights.clone(),
                });
            }
        }
        Ok(())
    }

    /// Where this state and `config` disagree (a pool one side has and the other lacks), in
    /// sentences; what matches is applied all the same.
    pub fn conflicts(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (name, shared) in &self.services {
            let Some(svc) = config.services.get(name) else {
                out.push(format!(
                    "the fleet has service {name:?}, which this replica's file lacks"
                ));
                continue;
            };
            let unknown: Vec<&String> = shared
                .weights
                .keys()
                .filter(|p| !svc.pools.contains_key(*p))
                .collect();
            if !unknown.is_empty() {
                out.push(format!(
                    "the fleet weights pool(s) {unknown:?} of service {name:?}, which this replica's file lacks: its weights stay the file's"
                ));
            } else if !shared.weights.is_empty() {
                let missing: Vec<&String> = svc
                    .weights
                    .keys()
                    .filter(|p| !shared.weights.contains_key(*p))
                    .collect();
                if !missing.is_empty() {
                    out.push(format!(
                        "this replica's file weights pool(s) {missing:?} of service {name:?}, which the fleet's weights lack: they keep the file's weight"
                    ));
                }
            }
            if let Some(active) = &shared.active
                && !svc.pools.contains_key(active)
            {
                out.push(format!(
                    "the fleet's active pool {active:?} of service {name:?} is not in this replica's file: the file's stays"
                ));
            }
            for (pool, drained) in &shared.drained {
                let Some(p) = svc.pools.get(pool) else {
                    out.push(format!(
                        "the fleet drains endpoints of pool {pool:?} of service {name:?}, which this replica's file lacks"
                    ));
                    continue;
                };
                let strangers: Vec<&String> = drained
                    .iter()
                    .filter(|a| !p.endpoints.contains(a))
                    .collect();
                if !strangers.is_empty() {
                    out.push(format!(
                        "the fleet drains {strangers:?} in pool {pool:?} of service {name:?}, not endpoints in this replica's file"
                    ));
                }
            }
        }
        out
    }

    /// Everything `state` serves that a fleet shares: the live fields, the rollback
    /// histories and the rollouts.
    pub fn of_state(state: &ControlState) -> SharedState {
        let mut shared = SharedState::of(state.config(), state.generation());
        for (name, svc) in &mut shared.services {
            svc.history = state.rollback_history(name).to_vec();
        }
        for (name, config, progress) in state.rollout_records() {
            if let Some(svc) = shared.services.get_mut(&name) {
                svc.rollout = Some(SavedRollout { config, progress });
            }
        }
        shared
    }

    /// Only the live fields: what a file can say (no history, no rollout progress, no note).
    pub fn live_fields(&self) -> SharedState {
        let mut bare = self.clone();
        bare.last = None;
        for svc in bare.services.values_mut() {
            svc.history.clear();
            svc.rollout = None;
        }
        bare
    }

    /// Makes `state`'s rollback histories and rollouts these.
    pub fn restore_into(&self, state: &mut ControlState) {
        let names: Vec<String> = state.config().services.keys().cloned().collect();
        for name in names {
            let history = self
                .services
                .get(&name)
                .map(|s| s.history.clone())
                .unwrap_or_default();
            state.set_rollback_history(&name, history);
        }
        state.restore_rollouts(|name| {
            let r = self.services.get(name)?.rollout.as_ref()?;
            Some((r.config.as_str(), &r.progress))
        });
    }

    /// `config` with these live fields applied. A service, pool or endpoint the file does not
    /// define is skipped (a replica whose file is behind the fleet's), and so is a weight or
    /// active pool naming a pool the file lacks: the file's value stays.
    pub fn apply_to(&self, config: &mut Config) {
        for (name, shared) in &self.services {
            let Some(svc) = config.services.get_mut(name) else {
                continue;
            };
            if shared.weights.keys().all(|p| svc.pools.contains_key(p)) {
                svc.weights = shared.weights.clone();
            }
            if let Some(active) = &shared.active
                && svc.pools.contains_key(active)
            {
                svc.active = Some(active.clone());
            }
            for (pool_name, pool) in &mut svc.pools {
                let drained = shared.drained.get(pool_name);
                pool.drained = drained
                    .map(|d| {
                        d.iter()
                            .filter(|a| pool.endpoints.contains(a))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut config = crate::config::fixture::shop_and_bg();
        if let Some(stable) = config
            .services
            .get_mut("shop")
            .and_then(|s| s.pools.get_mut("stable"))
        {
            stable.drained = vec!["127.0.0.1:2".into()];
        }
        config
    }

    #[test]
    fn the_live_fields_round_trip_through_json() {
        let shared = SharedState::of(&config(), 7);
        let json = serde_json::to_string(&shared).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"generation":7,"services":{"shop":{"weights":{"stable":90,"canary":10},"drained":{"stable":["127.0.0.1:2"]}},"bg":{"active":"blue"}}}"#
        );
        let back: SharedState = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, shared);
    }

    #[test]
    fn applying_sets_the_live_fields_and_skips_what_the_file_lacks() {
        let mut shared = SharedState::of(&config(), 1);
        let shop = shared.services.entry("shop".into()).or_default();
        shop.weights = [("stable".into(), 50), ("canary".into(), 50)]
            .into_iter()
            .collect();
        shop.drained = [(
            "stable".into(),
            vec!["127.0.0.1:1".into(), "10.9.9.9:1".into()],
        )]
        .into_iter()
        .collect();
        shared.services.entry("bg".into()).or_default().active = Some("green".into());
        shared
            .services
            .insert("gone".into(), SharedService::default());
        let mut cfg = config();
        shared.apply_to(&mut cfg);
        assert_eq!(cfg.services["shop"].weights["canary"], 50);
        assert_eq!(
            cfg.services["shop"].pools["stable"].drained,
            ["127.0.0.1:1"]
        );
        assert_eq!(cfg.services["bg"].active.as_deref(), Some("green"));
        // A weight for a pool this replica's file does not have leaves its weights alone.
        let mut odd = shared.clone();
        odd.services.entry("shop".into()).or_default().weights =
            [("beta".into(), 1)].into_iter().collect();
        let mut cfg = config();
        odd.apply_to(&mut cfg);
        assert_eq!(cfg.services["shop"].weights["stable"], 90);
    }
}
