//! The routing decision: a pure function of the table, the request parts, a random source
//! and a readiness predicate. `switchyard route` calls it too, so the explanation cannot
//! drift from what the proxy does. Waiting and retries happen around it, in `proxy`.

use http::HeaderMap;
use rand::{Rng, RngExt};

use super::matcher::{extract, host_matches, path_matches, value_matches};
use super::table::{PoolId, PoolTable, RoutingTable, ServiceId, ServiceTable};
use crate::config::Strategy;

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The Host (or `:authority`) as received, port included; `None` when absent.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Why a request went to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Override,
    Preview,
    Active,
    Bucket,
    Affinity,
    Random,
    /// Keyless request of an A/B service: the first pool (the control).
    Default,
    Failover,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Override,
        Reason::Preview,
        Reason::Active,
        Reason::Bucket,
        Reason::Affinity,
        Reason::Random,
        Reason::Default,
        Reason::Failover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Preview => "preview",
            Reason::Active => "active",
            Reason::Bucket => "bucket",
            Reason::Affinity => "affinity",
            Reason::Random => "random",
            Reason::Default => "default",
            Reason::Failover => "failover",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub service: ServiceId,
    pub pool: PoolId,
    pub reason: Reason,
    /// The bucket, when one decided.
    pub bucket: Option<u32>,
    /// A bucket drawn at random that the client should keep in the affinity cookie.
    pub set_affinity: Option<u32>,
    /// False when neither the pool nor (with `failover`) any other has an available endpoint:
    /// the caller holds the request or answers 503.
    pub available: bool,
}

/// No route matched the request (404 `no_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no route")]
pub struct NoRoute;

/// Decides the service and pool for a request. Order: the first matching route; then a
/// blue-green preview header, overrides, the active pool; the hash key's bucket, the affinity
/// cookie's, the A/B control for keyless requests, a random bucket; failover last.
pub fn decide<R: Rng + ?Sized>(
    table: &RoutingTable,
    req: &RequestView<'_>,
    rng: &mut R,
    ready: impl Fn(&PoolTable) -> bool,
) -> Result<Decision, NoRoute> {
    let service_id = route(table, req).ok_or(NoRoute)?;
    let svc = table.service(service_id).ok_or(NoRoute)?;
    let (pool, reason, bucket, set_affinity) = choose(svc, req, rng);
    let mut d = Decision {
        service: service_id,
        pool,
        reason,
        bucket,
        set_affinity,
        available: true,
    };
    if !svc.pool(pool).is_some_and(&ready) {
        // Failover never lands on the mirror pool (shadow traffic only).
        let fallback = svc
            .pools
            .iter()
            .enumerate()
            .find(|(i, p)| Some(*i) != svc.mirror && ready(p))
            .map(|(i, _)| i);
        match fallback.filter(|_| svc.failover) {
            Some(other) => {
                d.pool = other;
                d.reason = Reason::Failover;
            }
            None => d.available = false,
        }
    }
    Ok(d)
}

/// Routes in file order; the first match wins.
#[inline]
pub fn route(table: &RoutingTable, req: &RequestView<'_>) -> Option<ServiceId> {
    table
        .routes
        .iter()
        .find(|r| {
            r.host
                .as_ref()
                .is_none_or(|h| req.host.is_some_and(|host| host_matches(h, host)))
                && path_matches(&r.path_prefix, req.path)
        })
        .map(|r| r.service)
}

type Choice = (PoolId, Reason, Option<u32>, Option<u32>);

fn choose<R: Rng + ?Sized>(svc: &ServiceTable, req: &RequestView<'_>, rng: &mut R) -> Choice {
    if svc.strategy == Strategy::BlueGreen
        && let (Some(preview), Some(standby)) = (&svc.preview, svc.standby)
    {
        let hit = req
            .headers
            .get(&preview.name)
            .is_some_and(|v| v.as_bytes() == preview.equals.as_bytes());
        if hit {
            return (standby, Reason::Preview, None, None);
        }
    }
    for o in &svc.overrides {
        if value_matches(&o.matcher, extract(&o.source, req.headers)) {
            return (o.pool, Reason::Override, None, None);
        }
    }
    if svc.strategy == Strategy::BlueGreen {
        return (svc.active.unwrap_or(0), Reason::Active, None, None);
    }
    let total = svc.ranges.total();
    if let Some(key) = svc.hash_key.as_ref().and_then(|k| extract(k, req.headers)) {
        let b = svc.hasher.bucket(key, total);
        return (pool_of(svc, b), Reason::Bucket, Some(b), None);
    }
    if let Some(aff) = &svc.affinity
        && let Some(b) = super::matcher::cookie(req.headers, &aff.cookie).and_then(parse_bucket)
        && b < total
    {
        return (pool_of(svc, b), Reason::Affinity, Some(b), None);
    }
    if svc.strategy == Strategy::Ab {
        return (0, Reason::Default, None, None);
    }
    let b = if total > 1 {
        rng.random_range(0..total)
    } else {
        0
    };
    let keep = svc.affinity.is_some().then_some(b);
    (pool_of(svc, b), Reason::Random, Some(b), keep)
}

#[inline]
fn pool_of(svc: &ServiceTable, bucket: u32) -> PoolId {
    svc.ranges.pool_of(bucket).unwrap_or(0)
}

fn parse_bucket(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
