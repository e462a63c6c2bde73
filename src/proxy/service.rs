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
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Level, info, warn};

use super::body::{ActivityGuard, ProxyBody};
use super::error::ProxyError;
use super::forward::{
    ClientFacts, is_upgrade_request, prepare_request, prepare_response, to_http1, to_http2,
};
use super::mirror;
use crate::health::outlier;
use crate::router::{Decision, PoolTable, Reason, RequestView, RoutingTable, ServiceTable, decide};
use crate::upstream::client::{self, Conn, ReqBody};
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
struct Served<'t> {
    service: Option<&'t ServiceTable>,
    pool: Option<&'t PoolTable>,
    endpoint: Option<Arc<EndpointState>>,
    reason: Option<Reason>,
}

impl<'t> Served<'t> {
    fn note(&mut self, svc: &'t ServiceTable, d: &Decision) {
        self.pool = svc.pool(d.pool);
        self.reason = Some(d.reason);
    }

    fn names(&self) -> (&str, &str) {
        (
            self.service.map_or("", |s| &*s.name),
            self.pool.map_or("", |p| &*p.name),
        )
    }
}

/// Routes the request (host, path, headers) through the pure decision.
fn decide_for<B>(table: &RoutingTable, req: &Request<B>) -> Result<Decision, ProxyError> {
    // The authority, when the target carries one, wins over Host (RFC 9112 §3.2.2), as in
    // `forward::prepare_request`: routing and the upstream see the same host.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()));
    let view = RequestView {
        host,
        path: req.uri().path(),
        headers: req.headers(),
    };
    decide(table, &view, &mut rand::rng(), PoolTable::has_available)
        .map_err(|_| ProxyError::NoRoute)
}

/// Safe methods without a body can be sent again after a connection loss.
fn is_replayable(req: &Request<ReqBody>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && http_body::Body::is_end_stream(req.body())
}

/// The request line and headers, to send the request again.
fn head_of(req: &Request<ReqBody>) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = req.method().clone();
    parts.uri = req.uri().clone();
    parts.version = req.version();
    parts.headers = req.headers().clone();
    parts
}

/// The connection went away before the answer (not a malformed answer).
fn is_connection_loss(e: &hyper::client::conn::TrySendError<Request<ReqBody>>) -> bool {
    let e = e.error();
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    // A reset or broken pipe while the request was written.
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = err.source();
    }
    false
}

/// Requests held per worker thread at most; past it, a request that would wait gets its
/// 503 at once, so a long outage cannot pile up unbounded memory.
const MAX_HELD_PER_WORKER: usize = 10_000;

thread_local! {
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The `hold_timeout` wait of one request: backs off from 10 ms to 200 ms between tries.
struct Hold {
    deadline: Option<tokio::time::Instant>,
    step: std::time::Duration,
    counted: bool,
}

impl Hold {
    fn new(timeout: std::time::Duration) -> Self {
        Hold {
            deadline: (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout),
            step: std::time::Duration::from_millis(10),
            counted: false,
        }
    }

    fn enabled(&self) -> bool {
        self.deadline.is_some()
    }

    /// Waits one step; false when holding is off, over, or the worker holds too many.
    async fn wait(&mut self) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        if !self.counted {
            if HELD.with(|h| h.get()) >= MAX_HELD_PER_WORKER {
                return false;
            }
            HELD.with(|h| h.set(h.get() + 1));
            self.counted = true;
        }
        tokio::time::sleep(self.step.min(deadline - now)).await;
        self.step = (self.step * 2).min(std::time::Duration::from_millis(200));
        true
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.counted {
            HELD.with(|h| h.set(h.get().saturating_sub(1)));
        }
    }
}

impl ProxyService {
    async fn handle(self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let activity = &self.conn.activity;
        activity.start();
        let guard = ActivityGuard(activity.clone());
        // Copy what the access log needs only when it is on (it is off in benchmarks).
        let log = tracing::enabled!(target: "switchyard::access", Level::INFO)
            .then(|| (req.method().clone(), req.uri().clone()));
        let table = self.shared.tables.load_full();
        let mut served = Served::default();
        let resp = match self.proxy(&table, req, &mut served).await {
            Ok(resp) => resp,
            Err(e) => {
                if let Some(kind) = e.upstream_kind() {
                    let (service, pool) = served.names();
                    warn!(error = %e, service, pool, "upstream failure");
                    if let Some(p) = served.pool {
                        p.metrics.upstream_error(kind);
                    }
                }
                e.into_response()
            }
        };
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        match (served.service, served.pool) {
            (_, Some(pool)) => {
                pool.metrics.stats.record(status, elapsed);
                if let Some(reason) = served.reason {
                    pool.metrics.decision(reason);
                }
            }
            (Some(svc), None) => svc.unserved.record(status, elapsed),
            (None, None) => table.unrouted.record(status, elapsed),
        }
        if let Some((method, uri)) = log {
            let (service, pool) = served.names();
            info!(
                target: "switchyard::access",
                method = %method,
                path = uri.path(),
                status,
                service,
                pool,
                endpoint = served.endpoint.as_ref().map_or("", |e| e.address.as_str()),
                reason = served.reason.map_or("", Reason::as_str),
                duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                client = %self.conn.peer.ip(),
            );
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_activity(guard))
    }

    async fn proxy<'t>(
        &self,
        table: &'t Arc<RoutingTable>,
        mut req: Request<Incoming>,
        served: &mut Served<'t>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is malformed: 400 before routing.
        if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(HOST) {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        let mut decision = decide_for(table, &req)?;
        let svc = table.service(decision.service).ok_or(ProxyError::NoRoute)?;
        served.service = Some(svc);
        served.note(svc, &decision);

        let upgrade = is_upgrade_request(&req);
        prepare_request(&mut req, &self.conn.facts, upgrade)?;
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };

        let mut req = req.map(ReqBody::Client);
        if let Some(mirror_pool) = svc.mirror
            && !upgrade
            && mirror::sampled(svc.mirror_percent)
        {
            // Boxed, like the other rare paths, to keep every request's future small.
            let copy = Box::pin(mirror::copy(&mut req, svc.mirror_max_body))
                .await
                .map_err(|_| ProxyError::BadRequest("request body could not be read"))?;
            if let Some(copy) = copy {
                mirror::spawn(table.clone(), decision.service, mirror_pool, copy);
            }
        }
        let replayable = !upgrade && is_replayable(&req);
        let timeout = table.settings.request_timeout;
        let mut hold = Hold::new(svc.hold_timeout);
        let mut fresh = false;
        let mut stale = 0;
        let (pool, endpoint, conn, inflight, failed_over, result) = loop {
            let attempt = match svc.pool(decision.pool) {
                Some(pool) if decision.available => {
                    self.connect_with_failover(table, svc, pool, fresh).await
                }
                _ => Err(ProxyError::NoHealthyEndpoint),
            };
            let (pool, endpoint, mut conn, failed_over) = match attempt {
                Ok(c) => c,
                // Nothing can serve now: with `hold_timeout`, wait for an endpoint to come
                // back (health check, end of ejection, restarted instance), then decide again.
                Err(e @ (ProxyError::NoHealthyEndpoint | ProxyError::UpstreamConnect(_))) => {
                    if !Box::pin(hold.wait()).await {
                        return Err(match e {
                            ProxyError::UpstreamConnect(_) if !hold.enabled() => e,
                            _ => ProxyError::NoHealthyEndpoint,
                        });
                    }
                    decision = decide_for(table, &req)?;
                    served.note(svc, &decision);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(name) = &table.settings.pool_header {
                req.headers_mut()
                    .insert(name.clone(), pool.header_value.clone());
            }
            // HTTP/1.1 requests are in the right form already (one comparison); HTTP/2
            // upstreams need the absolute form, and a failover may cross between the two.
            if conn.is_http2() {
                to_http2(&mut req, &pool.upstream.scheme())?;
            } else if req.version() != Version::HTTP_11 {
                to_http1(&mut req);
            }
            let inflight = endpoint.begin_request();
            // An upstream going away can close a connection (kept-alive or just opened) as a
            // request goes out on it: a bodiless safe request is then sent again, as NGINX
            // does. The copy (a header-map clone) is kept for those requests only.
            let copy = replayable.then(|| head_of(&req));
            let Ok(sent) = tokio::time::timeout(timeout, conn.try_send_request(req)).await else {
                if let Some(o) = &svc.outlier {
                    outlier::observe(o, pool, &endpoint, true);
                }
                return Err(ProxyError::UpstreamTimeout);
            };
            match sent {
                Ok(resp) => break (pool, endpoint, conn, inflight, failed_over, resp),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let lost = is_connection_loss(&e);
                    req = match (unsent, copy) {
                        // A pooled connection the upstream had closed: the request was not
                        // sent, so it goes again, on a new connection.
                        (Some(unsent), _) if conn.reused && stale < 3 => unsent,
                        (None, Some(head)) if lost && stale < 3 => {
                            Request::from_parts(head, ReqBody::empty())
                        }
                        // The client's own body failed (malformed chunking, a client gone): not
                        // the upstream's fault, so no outlier evidence and a 400.
                        _ if e.error().is_user() || e.error().is_body_write_aborted() => {
                            return Err(ProxyError::BadRequest("request body could not be read"));
                        }
                        _ => {
                            if let Some(o) = &svc.outlier {
                                outlier::observe(o, pool, &endpoint, true);
                            }
                            return Err(ProxyError::UpstreamReset(e.into_error()));
                        }
                    };
                    stale += 1;
                    fresh = true;
                }
            }
        };
        if let Some(o) = &svc.outlier {
            outlier::observe(o, pool, &endpoint, result.status().is_server_error());
        }
        served.endpoint = Some(endpoint);
        if failed_over {
            served.pool = Some(pool);
            served.reason = Some(Reason::Failover);
        }
        let pool_header = table
            .settings
            .pool_header
            .as_ref()
            .map(|name| (name, &pool.header_value));

        let mut resp = result;
        prepare_response(&mut resp, pool_header);
        if let Some(b) = decision.set_affinity
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
        match self.connect(table, svc, pool, fresh).await {
            Ok((endpoint, conn)) => Ok((pool, endpoint, conn, false)),
            Err(err @ ProxyError::UpstreamConnect(_)) if svc.failover => {
                for other in svc.failover_candidates() {
                    if std::ptr::eq(other, pool) || !other.has_available() {
                        continue;
                    }
                    if let Ok((endpoint, conn)) = self.connect(table, svc, other, fresh).await {
                        return Ok((other, endpoint, conn, true));
                    }
                }
                Err(err)
            }
            Err(e) => Err(e),
        }
    }

    /// Picks an endpoint and connects; a connect error retries once on another endpoint.
    /// `fresh` skips the idle pool, or replaces the shared HTTP/2 connection (after a pooled
    /// or shared connection turned out dead).
    async fn connect(
        &self,
        table: &RoutingTable,
        svc: &ServiceTable,
        pool: &PoolTable,
        fresh: bool,
    ) -> Result<(Arc<EndpointState>, Conn), ProxyError> {
        let timeout = table.settings.connect_timeout;
        let get = |ep: Arc<EndpointState>| async move {
            let conn = if fresh {
                Box::pin(client::connect(&ep, &pool.upstream, timeout)).await
            } else {
                client::acquire(&ep, &pool.upstream, timeout).await
            };
            if conn.is_err()
                && let Some(o) = &svc.outlier
            {
                outlier::observe(o, pool, &ep, true);
            }
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
