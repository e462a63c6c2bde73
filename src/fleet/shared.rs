//! The part of the live state a fleet shares: per service, the weights, the blue-green active
//! pool, the drained endpoints and the rollout's progress, with the fleet-wide generation.
//! Everything else (routes, pools, endpoints, settings) stays in each replica's file.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::control::rollout::RolloutRecord;
use crate::control::state::ControlState;

/// What every replica of a fleet applies, as stored in etcd (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedState {
    /// One more for each committed change: the same number on every replica for the same
    /// state.
    pub generation: u64,
    pub services: IndexMap<String, SharedService>,
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
    /// The rollout's progress, once it has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<SharedRollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRollout {
    /// Names the rollout config the progress was made under: a replica whose file has
    /// another takes the weights but not the progress.
    pub config: String,
    #[serde(flatten)]
    pub progress: RolloutRecord,
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
                    rollout: None,
                };
                (name.clone(), shared)
            })
            .collect();
        SharedState {
            generation,
            services,
        }
    }

    /// Everything `state` serves that a fleet shares: the live fields and the rollouts.
    pub fn of_state(state: &ControlState) -> SharedState {
        let mut shared = SharedState::of(state.config(), state.generation());
        for (name, config, progress) in state.rollout_records() {
            if let Some(svc) = shared.services.get_mut(&name) {
                svc.rollout = Some(SharedRollout { config, progress });
            }
        }
        shared
    }

    /// The same live fields, without the rollouts' progress (what a file can say).
    pub fn without_rollouts(&self) -> SharedState {
        let mut bare = self.clone();
        for svc in bare.services.values_mut() {
            svc.rollout = None;
        }
        bare
    }

    /// `state`'s rollouts made to follow these.
    pub fn restore_rollouts(&self, state: &mut ControlState) {
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
