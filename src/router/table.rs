//! `RoutingTable`: built once from a validated config, immutable, shared through `ArcSwap`.
//!
//! Everything a request needs is resolved here: pool names to indices, bucket ranges, the
//! pool-name header values and endpoint state handles.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::bucket::{Hasher, Ranges};
use crate::config::{
    Balance, Config, HeaderEquals, HostMatch, KeySource, Outlier, Protocol, Strategy, ValueMatch,
};
use crate::metrics::PoolMetrics;
use crate::stats::PoolStats;
use crate::upstream::tls::TlsError;
use crate::upstream::{EndpointState, Registry, UpstreamProtocol};

pub type ServiceId = usize;
pub type PoolId = usize;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("services.{service}.pools.{pool}: pool name cannot be sent as a header value")]
    PoolName { service: String, pool: String },
    #[error("routes: service {0:?} is not defined")]
    UnknownService(String),
    #[error("services.{service}: unknown pool {pool:?}")]
    UnknownPool { service: String, pool: String },
    /// The pool's upstream TLS cannot be set up (e.g. its `ca` file is missing or invalid).
    #[error("services.{service}.pools.{pool}: {error}")]
    UpstreamTls {
        service: String,
        pool: String,
        error: TlsError,
    },
}

/// Settings of the data path that a reload may change.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_header: Option<HeaderName>,
    /// Client connection limits, read when a connection is accepted.
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    /// `admin.allowed_hosts`: the admin listener reads it from here, so a reload changes it
    /// like the other settings, through the one published snapshot.
    pub admin_allowed_hosts: Arc<[String]>,
}

#[derive(Debug)]
pub struct RoutingTable {
    /// Goes up by one with every change to the live table.
    pub generation: u64,
    pub routes: Vec<RouteEntry>,
    pub services: Vec<ServiceTable>,
    pub settings: ProxySettings,
    /// Requests that matched no route.
    pub unrouted: Arc<PoolStats>,
}

#[derive(Debug)]
pub struct RouteEntry {
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub service: ServiceId,
}

#[derive(Debug)]
pub struct ServiceTable {
    pub name: Arc<str>,
    pub strategy: Strategy,
    /// Decision order: weights order, then unweighted pools (blue-green: file order).
    pub pools: Vec<PoolTable>,
    pub ranges: Ranges,
    pub hash_key: Option<KeySource>,
    pub hasher: Hasher,
    pub affinity: Option<Affinity>,
    pub failover: bool,
    pub hold_timeout: Duration,
    /// Passive ejection settings, when configured.
    pub outlier: Option<Outlier>,
    pub overrides: Vec<OverrideEntry>,
    /// Blue-green: the active and the standby pool.
    pub active: Option<PoolId>,
    pub standby: Option<PoolId>,
    pub preview: Option<HeaderEquals>,
    /// The mirror pool: shadow traffic only, never a failover target.
    pub mirror: Option<PoolId>,
    /// Share of requests copied to the mirror pool, in percent.
    pub mirror_percent: u32,
    /// Larger request bodies are not mirrored.
    pub mirror_max_body: usize,
    /// Blue-green: paths that must answer 2xx on every standby endpoint before a swap.
    pub prepromotion_checks: Vec<String>,
    /// Requests of this service that no pool served (metrics label `pool=""`).
    pub unserved: Arc<PoolStats>,
}

#[derive(Debug)]
pub struct Affinity {
    pub cookie: String,
    pub max_age_secs: u64,
}

#[derive(Debug)]
pub struct OverrideEntry {
    pub source: KeySource,
    pub matcher: ValueMatch,
    pub pool: PoolId,
}

#[derive(Debug)]
pub struct PoolTable {
    pub name: Arc<str>,
    /// The pool name, ready to send as `pool_header`.
    pub header_value: HeaderValue,
    pub weight: u32,
    pub endpoints: Vec<Arc<EndpointState>>,
    pub balance: Balance,
    pub protocol: Protocol,
    /// How to reach the endpoints (wire protocol, TLS client config), built with the table.
    pub upstream: Arc<UpstreamProtocol>,
    pub min_available: usize,
    /// Metric handles and request statistics, resolved when the table is built.
    pub metrics: PoolMetrics,
    /// Round-robin cursor; per table, so a rebuild restarts it (harmless).
    pub(crate) cursor: AtomicUsize,
}

impl PoolTable {
    /// At least one endpoint can take a request now.
    #[inline]
    pub fn has_available(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_available())
    }

    /// An available endpoint by the pool's `balance`, skipping `exclude` when another is
    /// available (see [`crate::upstream::balance::pick`]).
    #[inline]
    pub fn pick<R: rand::Rng + ?Sized>(
        &self,
        rng: &mut R,
        exclude: Option<u64>,
    ) -> Option<&Arc<EndpointState>> {
        crate::upstream::balance::pick(&self.endpoints, self.balance, &self.cursor, rng, exclude)
    }
}

impl RoutingTable {
    /// Builds the table; endpoint state comes from (and is registered in) `registry`.
    pub fn build(
        config: &Config,
        registry: &mut Registry,
        generation: u64,
    ) -> Result<RoutingTable, TableError> {
        let mut services = Vec::with_capacity(config.services.len());
        for (name, svc) in &config.services {
            let order = svc.pool_order();
            let index_of = |pool: &str| -> Result<PoolId, TableError> {
                order
                    .iter()
                    .position(|p| *p == pool)
                    .ok_or_else(|| TableError::UnknownPool {
                        service: name.clone(),
                        pool: pool.to_string(),
                    })
            };
            let mut pools = Vec::with_capacity(order.len());
            for pool_name in &order {
                let Some(pool) = svc.pools.get(*pool_name) else {
                    return Err(TableError::UnknownPool {
                        service: name.clone(),
                        pool: pool_name.to_string(),
                    });
                };
                let header_value =
                    HeaderValue::from_str(pool_name).map_err(|_| TableError::PoolName {
                        service: name.clone(),
                        pool: pool_name.to_string(),
                    })?;
                let upstream = UpstreamProtocol::build(
                    pool.protocol,
                    pool.tls,
                    pool.ca.as_deref(),
                    pool.sni.as_deref(),
                )
                .map_err(|error| TableError::UpstreamTls {
                    service: name.clone(),
                    pool: pool_name.to_string(),
                    error,
                })?;
                pools.push(PoolTable {
                    name: Arc::from(*pool_name),
                    header_value,
                    weight: svc.weights.get(*pool_name).copied().unwrap_or(0),
                    endpoints: pool
                        .endpoints
                        .iter()
                        .map(|addr| registry.endpoint(name, pool_name, addr))
                        .collect(),
                    balance: pool.balance,
                    protocol: pool.protocol,
                    upstream: Arc::new(upstream),
                    min_available: pool.min_available,
                    metrics: PoolMetrics::new(
                        name,
                        pool_name,
                        registry.pool_stats(name, pool_name),
                        svc.mirror.as_ref().is_some_and(|m| m.pool == *pool_name),
                    ),
                    cursor: AtomicUsize::new(0),
                });
            }
            let ranges = Ranges::new(pools.iter().enumerate().map(|(i, p)| (i, p.weight)));
            let overrides = svc
                .overrides
                .iter()
                .map(|o| {
                    Ok(OverrideEntry {
                        source: o.source.clone(),
                        matcher: o.matcher.clone(),
                        pool: index_of(&o.pool)?,
                    })
                })
                .collect::<Result<Vec<_>, TableError>>()?;
            let (active, standby) = match (&svc.strategy, &svc.active) {
                (Strategy::BlueGreen, Some(active)) => {
                    let a = index_of(active)?;
                    let s = (0..pools.len()).find(|&i| i != a);
                    (Some(a), s)
                }
                _ => (None, None),
            };
            services.push(ServiceTable {
                name: Arc::from(name.as_str()),
                strategy: svc.strategy,
                pools,
                ranges,
                hash_key: svc.hash_key.clone(),
                hasher: Hasher::new(svc.hash_salt.as_bytes()),
                affinity: svc.affinity_cookie.as_ref().map(|cookie| Affinity {
                    cookie: cookie.clone(),
                    max_age_secs: svc.affinity_max_age.as_secs(),
                }),
                failover: svc.failover,
                hold_timeout: svc.hold_timeout,
                outlier: svc.outlier.clone(),
                overrides,
                active,
                standby,
                preview: svc.preview_header.clone(),
                prepromotion_checks: svc.prepromotion_checks.clone(),
                unserved: registry.pool_stats(name, ""),
                mirror: svc.mirror.as_ref().map(|m| index_of(&m.pool)).transpose()?,
                mirror_percent: svc.mirror.as_ref().map_or(0, |m| m.percent),
                mirror_max_body: svc.mirror.as_ref().map_or(0, |m| m.max_body_bytes),
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let service = config
                    .services
                    .get_index_of(&r.service)
                    .ok_or_else(|| TableError::UnknownService(r.service.clone()))?;
                Ok(RouteEntry {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    service,
                })
            })
            .collect::<Result<Vec<_>, TableError>>()?;
        Ok(RoutingTable {
            generation,
            routes,
            services,
            unrouted: registry.pool_stats("", ""),
            settings: ProxySettings {
                connect_timeout: config.server.connect_timeout,
                request_timeout: config.server.request_timeout,
                pool_header: config.server.pool_header.clone(),
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
                max_header_bytes: config.server.max_header_bytes,
                shutdown_grace: config.server.shutdown_grace,
                max_connections: config.server.max_connections,
                max_concurrent_streams: config.server.max_concurrent_streams,
                admin_allowed_hosts: config.admin.allowed_hosts.clone().into(),
            },
        })
    }

    pub fn service(&self, id: ServiceId) -> Option<&ServiceTable> {
        self.services.get(id)
    }

    pub fn service_by_name(&self, name: &str) -> Option<(ServiceId, &ServiceTable)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, s)| &*s.name == name)
    }
}

impl ServiceTable {
    pub fn pool(&self, id: PoolId) -> Option<&PoolTable> {
        self.pools.get(id)
    }

    /// Pools failover may use, in weights order: all but the mirror pool.
    pub fn failover_candidates(&self) -> impl Iterator<Item = &PoolTable> {
        self.pools
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != self.mirror)
            .map(|(_, p)| p)
    }

    pub fn pool_by_name(&self, name: &str) -> Option<(PoolId, &PoolTable)> {
        self.pools
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.name == name)
    }
}
