//! Endpoint identity → shared state, reused across table rebuilds.

use std::collections::HashMap;
use std::sync::Arc;

use super::endpoint::{EndpointKey, EndpointState};
use crate::stats::PoolStats;

/// Owned by the single writer (the control plane); the data path only sees the `Arc`s
/// that a table carries. Entries no table uses are dropped by [`Registry::retain`].
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: HashMap<EndpointKey, Arc<EndpointState>>,
    /// Request statistics by (service, pool); pool "" = answered without a pool, and
    /// ("", "") = matched no route. Kept across reloads so counters keep counting.
    pools: HashMap<(String, String), Arc<PoolStats>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state for this endpoint: the existing one if it is known, else a fresh one.
    pub fn endpoint(&mut self, service: &str, pool: &str, address: &str) -> Arc<EndpointState> {
        let key = (service.to_string(), pool.to_string(), address.to_string());
        self.endpoints
            .entry(key)
            .or_insert_with(|| Arc::new(EndpointState::new(address)))
            .clone()
    }

    /// The statistics of (service, pool), created on first use.
    pub fn pool_stats(&mut self, service: &str, pool: &str) -> Arc<PoolStats> {
        self.pools
            .entry((service.to_string(), pool.to_string()))
            .or_default()
            .clone()
    }

    /// Keeps only the pool statistics for which `keep` is true.
    pub fn retain_pools(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.pools.retain(|(s, p), _| keep(s, p));
    }

    /// Looks an endpoint up without creating it.
    pub fn get(&self, service: &str, pool: &str, address: &str) -> Option<&Arc<EndpointState>> {
        self.endpoints
            .get(&(service.to_string(), pool.to_string(), address.to_string()))
    }

    /// Keeps only the endpoints for which `keep` is true (those of the live table).
    pub fn retain(&mut self, mut keep: impl FnMut(&EndpointKey) -> bool) {
        self.endpoints.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}
