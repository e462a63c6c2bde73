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
    Balance, Config, HeaderEquals, HostMatch, KeySource, Outlier, Protocol, Service, Strategy,
    ValueMatch,
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
    /// The pool's upstream TLS cannot be set up (e.g. its `ca` bundle holds no certificate).
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

/// Where a table's runtime handles come from.
enum Handles<'r> {
    /// The live ones: endpoint state and statistics kept in the registry (so they survive
    /// rebuilds), metric handles registered with the exporter.
    Live(&'r mut Registry),
    /// Fresh ones registered nowhere: the table only proves that the config builds.
    Detached,
}

impl Handles<'_> {
    fn endpoint(&mut self, service: &str, pool: &str, addr: &str) -> Arc<EndpointState> {
        match self {
            Handles::Live(registry) => registry.endpoint(service, pool, addr),
            Handles::Detached => Arc::new(EndpointState::new(addr)),
        }
    }

    fn stats(&mut self, service: &str, pool: &str) -> Arc<PoolStats> {
        match self {
            Handles::Live(registry) => registry.pool_stats(service, pool),
            Handles::Detached => Arc::default(),
        }
    }

    fn metrics(&mut self, service: &str, pool: &str, is_mirror: bool) -> PoolMetrics {
        let stats = self.stats(service, pool);
        match self {
            Handles::Live(_) => PoolMetrics::new(service, pool, stats, is_mirror),
            Handles::Detached => PoolMetrics::detached(stats, is_mirror),
        }
    }
}

impl RoutingTable {
    /// Builds the table; endpoint state comes from (and is registered in) `registry`, and
    /// the pools' metric handles are resolved here, once per table. Opens no file: CA
    /// bundles were read with the config.
    pub fn build(
        config: &Config,
        registry: &mut Registry,
        generation: u64,
    ) -> Result<RoutingTable, TableError> {
        Self::build_with(config, Handles::Live(registry), generation)
    }

    /// Proves that `config` builds, with the same checks as [`RoutingTable::build`], and
    /// leaves no trace: no registry entry, no metric registered.
    pub fn validate(config: &Config) -> Result<(), TableError> {
        Self::offline(config).map(drop)
    }

    /// A table whose handles are registered nowhere (fresh endpoint state, metrics that
    /// count into nothing): for deciding offline (`switchyard route`) and for validation.
    pub fn offline(config: &Config) -> Result<RoutingTable, TableError> {
        Self::build_with(config, Handles::Detached, 0)
    }

    fn build_with(
        config: &Config,
        mut handles: Handles<'_>,
        generation: u64,
    ) -> Result<RoutingTable, TableError> {
        let services = config
            .services
            .iter()
            .map(|(name, svc)| build_service(name, svc, &mut handles))
            .collect::<Result<Vec<_>, TableError>>()?;
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
            unrouted: handles.stats("", ""),
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

/// One service: its pools in decision order, with names resolved to indices.
fn build_service(
    name: &str,
    svc: &Service,
    handles: &mut Handles<'_>,
) -> Result<ServiceTable, TableError> {
    let order = svc.pool_order();
    let index_of = |pool: &str| -> Result<PoolId, TableError> {
        order
            .iter()
            .position(|p| *p == pool)
            .ok_or_else(|| TableError::UnknownPool {
                service: name.to_string(),
                pool: pool.to_string(),
            })
    };
    let pools = order
        .iter()
        .map(|pool_name| build_pool(name, svc, pool_name, handles))
        .collect::<Result<Vec<_>, TableError>>()?;
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
    Ok(ServiceTable {
        name: Arc::from(name),
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
        unserved: handles.stats(name, ""),
        mirror: svc.mirror.as_ref().map(|m| index_of(&m.pool)).transpose()?,
        mirror_percent: svc.mirror.as_ref().map_or(0, |m| m.percent),
        mirror_max_body: svc.mirror.as_ref().map_or(0, |m| m.max_body_bytes),
    })
}

/// One pool: its header value, how to reach its endpoints, their state and its metrics.
fn build_pool(
    service: &str,
    svc: &Service,
    pool_name: &str,
    handles: &mut Handles<'_>,
) -> Result<PoolTable, TableError> {
    let unknown = || TableError::UnknownPool {
        service: service.to_string(),
        pool: pool_name.to_string(),
    };
    let pool = svc.pools.get(pool_name).ok_or_else(unknown)?;
    let header_value = HeaderValue::from_str(pool_name).map_err(|_| TableError::PoolName {
        service: service.to_string(),
        pool: pool_name.to_string(),
    })?;
    let upstream = UpstreamProtocol::build(
        pool.protocol,
        pool.tls,
        pool.ca.as_ref(),
        pool.sni.as_deref(),
    )
    .map_err(|error| TableError::UpstreamTls {
        service: service.to_string(),
        pool: pool_name.to_string(),
        error,
    })?;
    let is_mirror = svc.mirror.as_ref().is_some_and(|m| m.pool == pool_name);
    Ok(PoolTable {
        name: Arc::from(pool_name),
        header_value,
        weight: svc.weights.get(pool_name).copied().unwrap_or(0),
        endpoints: pool
            .endpoints
            .iter()
            .map(|addr| handles.endpoint(service, pool_name, addr))
            .collect(),
        balance: pool.balance,
        protocol: pool.protocol,
        upstream: Arc::new(upstream),
        min_available: pool.min_available,
        metrics: handles.metrics(service, pool_name, is_mirror),
        cursor: AtomicUsize::new(0),
    })
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
