//! The proxy service. A request goes through four named steps:
//!
//! 1. [`ProxyService::decide`]: check the request, route it, rewrite it for the upstream;
//! 2. [`ProxyService::connect_with_failover`]: pick an endpoint of the decided pool and get a
//!    connection (pooled or new), trying another endpoint and then another pool on failure;
//! 3. [`ProxyService::send_with_replay`]: send it, again on a new connection when the
//!    upstream dropped one under it and the request can be sent again; with `hold_timeout`,
//!    wait for an endpoint when none can serve;
//! 4. [`ProxyService::finish`]: judge the answer for outlier detection, rewrite its head,
//!    hand the body (and the connection with it) to the client.
//!
//! Measured per request here: the work around hyper's own (decision, rewrite, pooling,
//! metrics) costs a few hundred nanoseconds, so nothing on this path allocates or reads the
//! clock unless it must: two clock reads (start, end), one table load, one connection-info
//! reference count.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HOST, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Level, info, warn};

use super::body::ProxyBody;
use super::conn::{ConnInfo, RequestGuard};
use super::error::ProxyError;
use super::forward::{is_upgrade_request, prepare_request, prepare_response, to_http1, to_http2};
use super::hold::Hold;
use super::mirror;
use crate::health::outlier;
use crate::router::{Decision, PoolTable, Reason, RequestView, RoutingTable, ServiceTable, decide};
use crate::upstream::client::{self, Conn, ConnectError, ReqBody};
use crate::upstream::{EndpointState, InflightGuard, balance};

/// State shared by every connection of the process.
pub struct Shared {
    pub tables: Arc<ArcSwap<RoutingTable>>,
}

/// One per client connection; hyper calls it once per request.
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
        // The table and the connection are all the request needs; taken here, so the future
        // holds two references and no clone of the service.
        let start = Instant::now();
        let table = self.shared.tables.load_full();
        let request = RequestGuard::start(self.conn.clone());
        Box::pin(async move { Ok(handle(table, request, req, start).await) })
    }
}

/// How the serving pool was reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The pool the decision named.
    Decided,
    /// Another pool, after every endpoint of the decided one refused the connection.
    Failover,
}

/// Where a new connection comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// An idle pooled connection when there is one (HTTP/2: the shared connection).
    Pool,
    /// A new connection: a pooled (or shared) one turned out to be dead.
    New,
}

/// The upstream a request is sent to.
struct Upstream<'t> {
    pool: &'t PoolTable,
    conn: Conn,
    /// Holds the endpoint (the in-flight count) until the client has the whole answer.
    inflight: InflightGuard,
    via: Via,
}

impl Upstream<'_> {
    fn endpoint(&self) -> &Arc<EndpointState> {
        self.inflight.endpoint()
    }
}

/// Where a request went, for metrics and the access log.
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

/// A request after the first step: decided and in upstream form.
struct Decided<'t> {
    svc: &'t ServiceTable,
    decision: Decision,
    req: Request<ReqBody>,
    /// The client's side of a protocol upgrade (WebSocket), when it asked for one.
    client_upgrade: Option<OnUpgrade>,
}

async fn handle(
    table: Arc<RoutingTable>,
    request: RequestGuard,
    req: Request<Incoming>,
    start: Instant,
) -> Response<ProxyBody> {
    let conn = request.conn();
    // Copy what the access log needs only when it is on (it is off in benchmarks).
    let log = tracing::enabled!(target: "switchyard::access", Level::INFO)
        .then(|| (req.method().clone(), req.uri().clone()));
    let mut served = Served::default();
    let resp = match ProxyService::proxy(&table, conn, req, start, &mut served).await {
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
        access_log(&served, &method, &uri, status, elapsed, conn);
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.with_request(request))
}

fn access_log(
    served: &Served<'_>,
    method: &http::Method,
    uri: &http::Uri,
    status: u16,
    elapsed: Duration,
    conn: &ConnInfo,
) {
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
        client = %conn.peer.ip(),
    );
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
fn is_connection_loss(e: &hyper::Error) -> bool {
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

/// What a failed send leaves to do.
enum SendFailure {
    /// The request can go again on a new connection (handed back, or rebuilt from its copy).
    /// Boxed: a rare path, kept out of every request's future.
    Retry(Box<Request<ReqBody>>),
    /// The client's own body failed (malformed chunking, a client gone): not the upstream's
    /// fault, so no outlier evidence and a 400.
    ClientBody,
    /// The upstream failed the request.
    Upstream(hyper::Error),
}

/// A pooled or shared connection that dies under a request is replaced at most this often.
const MAX_REPLAYS: u32 = 3;

fn classify(
    mut e: TrySendError<Request<ReqBody>>,
    reused: bool,
    copy: Option<http::request::Parts>,
    replays: u32,
) -> SendFailure {
    let unsent = e.take_message();
    let lost = is_connection_loss(e.error());
    match (unsent, copy) {
        // A pooled connection the upstream had closed: the request was not sent, so it goes
        // again, on a new connection.
        (Some(unsent), _) if reused && replays < MAX_REPLAYS => {
            SendFailure::Retry(Box::new(unsent))
        }
        // Sent, and the connection went away before the answer: a safe bodiless request goes
        // again, as NGINX does.
        (None, Some(head)) if lost && replays < MAX_REPLAYS => {
            SendFailure::Retry(Box::new(Request::from_parts(head, ReqBody::empty())))
        }
        _ if e.error().is_user() || e.error().is_body_write_aborted() => SendFailure::ClientBody,
        _ => SendFailure::Upstream(e.into_error()),
    }
}

impl ProxyService {
    async fn proxy<'t>(
        table: &'t Arc<RoutingTable>,
        conn: &ConnInfo,
        req: Request<Incoming>,
        start: Instant,
        served: &mut Served<'t>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let decided = Self::decide(table, conn, req, served)?;
        let Decided {
            svc,
            decision,
            mut req,
            client_upgrade,
        } = decided;
        if let Some(mirror_pool) = svc.mirror
            && client_upgrade.is_none()
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
        let (upstream, resp) =
            Self::send_with_replay(table, svc, decision, req, start, served).await?;
        Ok(Self::finish(
            table,
            svc,
            decision,
            upstream,
            resp,
            client_upgrade,
            served,
        ))
    }

    /// Step 1: checks the request, decides where it goes, and rewrites it for the upstream.
    fn decide<'t>(
        table: &'t RoutingTable,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
        served: &mut Served<'t>,
    ) -> Result<Decided<'t>, ProxyError> {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is malformed: 400 before routing.
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        let decision = decide_for(table, &req)?;
        let svc = table.service(decision.service).ok_or(ProxyError::NoRoute)?;
        served.service = Some(svc);
        served.note(svc, &decision);

        let upgrade = is_upgrade_request(&req);
        prepare_request(&mut req, &conn.facts, upgrade)?;
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };
        Ok(Decided {
            svc,
            decision,
            req: req.map(ReqBody::Client),
            client_upgrade,
        })
    }

    /// Steps 2 and 3: connects and sends, sending again on a new connection when a pooled
    /// one was dead or a connection was lost before the answer of a replayable request;
    /// waits (`hold_timeout`) and decides again while nothing can serve.
    async fn send_with_replay<'t>(
        table: &'t RoutingTable,
        svc: &'t ServiceTable,
        mut decision: Decision,
        mut req: Request<ReqBody>,
        start: Instant,
        served: &mut Served<'t>,
    ) -> Result<(Upstream<'t>, Response<Incoming>), ProxyError> {
        let replayable = is_replayable(&req);
        // `request_timeout` runs from each send; the first send's start is the request's
        // (no clock read), a later one's is read when it happens (after a hold or a replay).
        let mut send_start = tokio::time::Instant::from_std(start);
        let mut hold = Hold::new(svc.hold_timeout, start);
        let mut source = Source::Pool;
        let mut replays = 0;
        loop {
            let attempt = match svc.pool(decision.pool) {
                Some(pool) if decision.available => {
                    Self::connect_with_failover(table, svc, pool, source, start).await
                }
                _ => Err(ProxyError::NoHealthyEndpoint),
            };
            let mut upstream = match attempt {
                Ok(u) => u,
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
                    send_start = tokio::time::Instant::now();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(name) = &table.settings.pool_header {
                req.headers_mut()
                    .insert(name.clone(), upstream.pool.header_value.clone());
            }
            // HTTP/1.1 requests are in the right form already (one comparison); HTTP/2
            // upstreams need the absolute form, and a failover may cross between the two.
            if upstream.conn.is_http2() {
                to_http2(&mut req, &upstream.pool.upstream.scheme())?;
            } else if req.version() != Version::HTTP_11 {
                to_http1(&mut req);
            }
            // A copy (a header-map clone) to send the request again should the connection be
            // lost after it went out; only for requests that may be sent again.
            let copy = replayable.then(|| head_of(&req));
            let deadline = send_start + table.settings.request_timeout;
            let sent = tokio::time::timeout_at(deadline, upstream.conn.try_send_request(req)).await;
            let failure = match sent {
                Ok(Ok(resp)) => return Ok((upstream, resp)),
                Ok(Err(e)) => classify(e, upstream.conn.reused, copy, replays),
                Err(_) => {
                    Self::observe(svc, &upstream, true);
                    return Err(ProxyError::UpstreamTimeout);
                }
            };
            req = match failure {
                SendFailure::Retry(again) => *again,
                SendFailure::ClientBody => {
                    return Err(ProxyError::BadRequest("request body could not be read"));
                }
                SendFailure::Upstream(e) => {
                    Self::observe(svc, &upstream, true);
                    return Err(ProxyError::UpstreamReset(e));
                }
            };
            replays += 1;
            source = Source::New;
            send_start = tokio::time::Instant::now();
        }
    }

    /// Step 4: the answer. Outlier evidence, the response head rewritten for the client, the
    /// affinity cookie, and the body streamed back with the connection it came on.
    fn finish<'t>(
        table: &'t RoutingTable,
        svc: &'t ServiceTable,
        decision: Decision,
        upstream: Upstream<'t>,
        mut resp: Response<Incoming>,
        client_upgrade: Option<OnUpgrade>,
        served: &mut Served<'t>,
    ) -> Response<ProxyBody> {
        Self::observe(svc, &upstream, resp.status().is_server_error());
        served.endpoint = Some(upstream.endpoint().clone());
        if upstream.via == Via::Failover {
            served.pool = Some(upstream.pool);
            served.reason = Some(Reason::Failover);
        }
        let pool_header = table
            .settings
            .pool_header
            .as_ref()
            .map(|name| (name, &upstream.pool.header_value));
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
            // The connection now belongs to the tunnel; it never goes back to the pool.
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, upstream.inflight));
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ProxyBody::empty());
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            ProxyBody::upstream(body, Some(upstream.conn), Some(upstream.inflight)),
        )
    }

    fn observe(svc: &ServiceTable, upstream: &Upstream<'_>, failed: bool) {
        if let Some(o) = &svc.outlier {
            outlier::observe(o, upstream.pool, upstream.endpoint(), failed);
        }
    }

    /// Connects to `pool`; when every endpoint tried refuses and the service has `failover`,
    /// to the first other pool (in weights order) with an available endpoint.
    async fn connect_with_failover<'t>(
        table: &'t RoutingTable,
        svc: &'t ServiceTable,
        pool: &'t PoolTable,
        source: Source,
        now: Instant,
    ) -> Result<Upstream<'t>, ProxyError> {
        match Self::connect(table, svc, pool, source, now, Via::Decided).await {
            Err(err @ ProxyError::UpstreamConnect(_)) if svc.failover => {
                for other in svc.failover_candidates() {
                    if std::ptr::eq(other, pool) || !other.has_available() {
                        continue;
                    }
                    if let Ok(u) =
                        Self::connect(table, svc, other, source, now, Via::Failover).await
                    {
                        return Ok(u);
                    }
                }
                Err(err)
            }
            other => other,
        }
    }

    /// Picks an endpoint and connects; a connect error retries once on another endpoint.
    async fn connect<'t>(
        table: &RoutingTable,
        svc: &ServiceTable,
        pool: &'t PoolTable,
        source: Source,
        now: Instant,
        via: Via,
    ) -> Result<Upstream<'t>, ProxyError> {
        let timeout = table.settings.connect_timeout;
        let first =
            balance::pick(pool, &mut rand::rng(), None).ok_or(ProxyError::NoHealthyEndpoint)?;
        let err = match Self::open(svc, pool, first, source, timeout, now).await {
            Ok(conn) => return Ok(Self::upstream(pool, first, conn, via)),
            Err(e) => e,
        };
        warn!(endpoint = %first.address, error = %err, "upstream connect failed");
        let second = match balance::pick(pool, &mut rand::rng(), Some(first.id)) {
            Some(second) if second.id != first.id => second,
            _ => return Err(ProxyError::UpstreamConnect(err)),
        };
        match Self::open(svc, pool, second, source, timeout, now).await {
            Ok(conn) => Ok(Self::upstream(pool, second, conn, via)),
            Err(e) => Err(ProxyError::UpstreamConnect(e)),
        }
    }

    fn upstream<'t>(
        pool: &'t PoolTable,
        ep: &Arc<EndpointState>,
        conn: Conn,
        via: Via,
    ) -> Upstream<'t> {
        Upstream {
            pool,
            conn,
            inflight: InflightGuard::begin(ep.clone()),
            via,
        }
    }

    /// A connection to `ep`; a failure to connect is outlier evidence against it.
    async fn open(
        svc: &ServiceTable,
        pool: &PoolTable,
        ep: &EndpointState,
        source: Source,
        timeout: Duration,
        now: Instant,
    ) -> Result<Conn, ConnectError> {
        let conn = match source {
            Source::Pool => client::acquire(ep, &pool.upstream, timeout, now).await,
            Source::New => Box::pin(client::connect(ep, &pool.upstream, timeout)).await,
        };
        if conn.is_err()
            && let Some(o) = &svc.outlier
        {
            outlier::observe(o, pool, ep, true);
        }
        conn
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, _inflight: InflightGuard) {
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
