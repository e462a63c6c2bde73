//! The proxy service: load the table once, decide, pick an endpoint, forward, stream back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HOST, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Level, info, warn};

use super::body::{ActivityGuard, ProxyBody};
use super::error::ProxyError;
use super::forward::{ClientFacts, is_upgrade_request, prepare_request, prepare_response};
use crate::router::{Decision, PoolTable, Reason, RequestView, RoutingTable, ServiceTable, decide};
use crate::upstream::client::{self, Conn};
use crate::upstream::{EndpointState, balance};

/// State shared by every connection of the process.
pub struct Shared {
    pub tables: Arc<ArcSwap<RoutingTable>>,
}

/// Request counters of one client connection, read by the server's idle and header checks.
///
/// Only the connection's own thread writes these, so plain load/store suffices (no RMW).
#[derive(Debug, Default)]
pub struct ConnActivity {
    pub bytes_read: AtomicU64,
    /// `bytes_read` when the last response finished: bytes past it are a new request's head.
    pub bytes_at_finish: AtomicU64,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// The connection speaks HTTP/2 (its first bytes were the h2 preface).
    h2: std::sync::atomic::AtomicBool,
}

impl ConnActivity {
    pub(crate) fn start(&self) {
        bump(&self.started);
    }

    pub(crate) fn finish(&self) {
        bump(&self.finished);
        self.bytes_at_finish
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Looks at the first bytes of the connection for the HTTP/2 preface.
    pub(crate) fn note_preface(&self, first: &[u8]) {
        if first.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub(crate) fn add_read(&self, n: usize) {
        let v = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read.store(v + n as u64, Ordering::Relaxed);
    }

    /// Requests started whose response has not been fully sent.
    pub fn in_flight(&self) -> u64 {
        let started = self.started.load(Ordering::Relaxed);
        started.saturating_sub(self.finished.load(Ordering::Relaxed))
    }
}

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// What the service knows about its client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub facts: ClientFacts,
    pub activity: Arc<ConnActivity>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        let ip = peer.ip().to_string();
        ConnInfo {
            peer,
            facts: ClientFacts {
                peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
                proto: HeaderValue::from_static(if https { "https" } else { "http" }),
            },
            activity: Arc::new(ConnActivity::default()),
        }
    }
}

/// One per client connection; cloned per request by hyper.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl ProxyService {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnInfo>) -> Self {
        ProxyService { shared, conn }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// What the access log reports about where a request went.
#[derive(Default)]
struct Served {
    service: Option<Arc<str>>,
    pool: Option<Arc<str>>,
    endpoint: Option<Arc<EndpointState>>,
    reason: &'static str,
}

impl ProxyService {
    async fn handle(self, req: Request<Incoming>) -> Response<ProxyBody> {
        let activity = &self.conn.activity;
        activity.start();
        let guard = ActivityGuard(activity.clone());
        // Copy what the access log needs only when it is on (it is off in benchmarks).
        let log = tracing::enabled!(target: "switchyard::access", Level::INFO)
            .then(|| (Instant::now(), req.method().clone(), req.uri().clone()));
        let table = self.shared.tables.load_full();
        let mut served = Served::default();
        let resp = match self.proxy(&table, req, &mut served).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.upstream_kind().is_some() {
                    warn!(error = %e, service = served.service.as_deref(), pool = served.pool.as_deref(), "upstream failure");
                }
                e.into_response()
            }
        };
        if let Some((start, method, uri)) = log {
            info!(
                target: "switchyard::access",
                method = %method,
                path = uri.path(),
                status = resp.status().as_u16(),
                service = served.service.as_deref().unwrap_or(""),
                pool = served.pool.as_deref().unwrap_or(""),
                endpoint = served.endpoint.as_ref().map_or("", |e| e.address.as_str()),
                reason = served.reason,
                duration_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                client = %self.conn.peer.ip(),
            );
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_activity(guard))
    }

    async fn proxy(
        &self,
        table: &RoutingTable,
        mut req: Request<Incoming>,
        served: &mut Served,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let decision = {
            let host = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()));
            let view = RequestView {
                host,
                path: req.uri().path(),
                headers: req.headers(),
            };
            decide(table, &view, &mut rand::rng(), PoolTable::has_available)
                .map_err(|_| ProxyError::NoRoute)?
        };
        let Decision {
            service,
            pool,
            reason,
            set_affinity,
            ..
        } = decision;
        let svc = table.service(service).ok_or(ProxyError::NoRoute)?;
        let pool = svc.pool(pool).ok_or(ProxyError::NoHealthyEndpoint)?;
        served.service = Some(svc.name.clone());
        served.pool = Some(pool.name.clone());
        served.reason = reason.as_str();
        if !decision.available {
            return Err(ProxyError::NoHealthyEndpoint);
        }

        let upgrade = is_upgrade_request(&req);
        prepare_request(&mut req, &self.conn.facts, upgrade)?;
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };

        let timeout = table.settings.request_timeout;
        let exchange = async {
            let mut req = req;
            let mut fresh = false;
            let mut stale = 0;
            loop {
                let (pool, endpoint, mut conn, failed_over) =
                    self.connect_with_failover(table, svc, pool, fresh).await?;
                if let Some(name) = &table.settings.pool_header {
                    req.headers_mut()
                        .insert(name.clone(), pool.header_value.clone());
                }
                let inflight = endpoint.begin_request();
                match conn.sender.try_send_request(req).await {
                    Ok(resp) => return Ok((pool, endpoint, conn, inflight, failed_over, resp)),
                    Err(mut e) => match e.take_message() {
                        // A pooled connection the upstream had closed: the request was not
                        // sent, so it goes again, on a new connection.
                        Some(unsent) if conn.reused && stale < 3 => {
                            stale += 1;
                            fresh = true;
                            req = unsent;
                        }
                        _ => return Err(ProxyError::UpstreamReset(e.into_error())),
                    },
                }
            }
        };
        let (pool, endpoint, conn, inflight, failed_over, result) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| ProxyError::UpstreamTimeout)??;
        served.endpoint = Some(endpoint);
        if failed_over {
            served.pool = Some(pool.name.clone());
            served.reason = Reason::Failover.as_str();
        }
        let pool_header = table
            .settings
            .pool_header
            .as_ref()
            .map(|name| (name, &pool.header_value));

        let mut resp = result;
        prepare_response(&mut resp, pool_header);
        if let Some(b) = set_affinity
            && let Some(aff) = &svc.affinity
        {
            let cookie = format!(
                "{}={}; Path=/; Max-Age={}; HttpOnly",
                aff.cookie, b, aff.max_age_secs
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(SET_COOKIE, v);
            }
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, inflight));
            // The connection now belongs to the tunnel; it never goes back to the pool.
            drop(conn);
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, Some(conn), Some(inflight)),
        ))
    }

    /// Connects to `pool`; when every endpoint tried refuses and the service has `failover`,
    /// to the first other pool (in weights order) with an available endpoint.
    async fn connect_with_failover<'t>(
        &self,
        table: &'t RoutingTable,
        svc: &'t ServiceTable,
        pool: &'t PoolTable,
        fresh: bool,
    ) -> Result<(&'t PoolTable, Arc<EndpointState>, Conn, bool), ProxyError> {
        match self.connect(table, pool, fresh).await {
            Ok((endpoint, conn)) => Ok((pool, endpoint, conn, false)),
            Err(err @ ProxyError::UpstreamConnect(_)) if svc.failover => {
                for other in svc.failover_candidates() {
                    if std::ptr::eq(other, pool) || !other.has_available() {
                        continue;
                    }
                    if let Ok((endpoint, conn)) = self.connect(table, other, fresh).await {
                        return Ok((other, endpoint, conn, true));
                    }
                }
                Err(err)
            }
            Err(e) => Err(e),
        }
    }

    /// Picks an endpoint and connects; a connect error retries once on another endpoint.
    /// `fresh` skips the idle pool (after a pooled connection turned out dead).
    async fn connect(
        &self,
        table: &RoutingTable,
        pool: &PoolTable,
        fresh: bool,
    ) -> Result<(Arc<EndpointState>, Conn), ProxyError> {
        let timeout = table.settings.connect_timeout;
        let get = |ep: Arc<EndpointState>| async move {
            let conn = if fresh {
                Box::pin(client::connect(&ep, timeout)).await
            } else {
                client::acquire(&ep, timeout).await
            };
            conn.map(|c| (ep, c))
        };
        let first = balance::pick(pool, &mut rand::rng(), None)
            .cloned()
            .ok_or(ProxyError::NoHealthyEndpoint)?;
        let first_id = first.id;
        let first_addr = first.address.clone();
        let err = match get(first).await {
            Ok(pair) => return Ok(pair),
            Err(e) => e,
        };
        warn!(endpoint = %first_addr, error = %err, "upstream connect failed");
        let Some(second) = balance::pick(pool, &mut rand::rng(), Some(first_id)).cloned() else {
            return Err(ProxyError::UpstreamConnect(err));
        };
        if second.id == first_id {
            return Err(ProxyError::UpstreamConnect(err));
        }
        get(second).await.map_err(ProxyError::UpstreamConnect)
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, _inflight: crate::upstream::InflightGuard) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
