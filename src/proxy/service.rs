//! The proxy service. A request goes through four named steps, which share one
//! [`RequestCtx`] (the table and worker serving it, when it arrived, where it went), as
//! pingora's proxy phases share one context:
//!
//! 1. [`RequestCtx::decide`]: check the request, route it, rewrite it for the upstream
//!    (every rewrite is in [`super::forward`]);
//! 2. [`Attempts::pooled`], else [`Attempts::connect_or_hold`]: an endpoint of the decided
//!    pool and a connection to it (an idle pooled one at once, else connecting, trying
//!    another endpoint and then another pool on failure);
//! 3. [`RequestCtx::send_with_replay`]: send it, again on a new connection when the
//!    upstream dropped one under it and the request can be sent again; with `hold_timeout`,
//!    wait for an endpoint when none can serve;
//! 4. [`RequestCtx::finish`]: judge the answer for outlier detection, rewrite its head,
//!    hand the body (and the connection with it) to the client.
//!
//! Measured per request here: the work around hyper's own (decision, rewrite, pooling,
//! metrics) costs a few hundred nanoseconds, so nothing on this path allocates or reads the
//! clock unless it must: two clock reads (start, end), one table load, one connection-info
//! reference count.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Level, info, warn};

use super::body::ProxyBody;
use super::conn::{ConnInfo, RequestGuard};
use super::error::ProxyError;
use super::forward::{
    TargetHost, check_request, for_connection, is_upgrade_request, prepare_request,
    prepare_response,
};
use super::hold::Hold;
use super::mirror;
use super::worker::Worker;
use crate::health::outlier;
use crate::router::{Decision, PoolTable, Reason, RequestView, RoutingTable, ServiceTable, decide};
use crate::upstream::client::{Conn, ConnectError, ReqBody, UpstreamErrorKind};
use crate::upstream::{EndpointState, InflightGuard};

/// State shared by every connection of the process.
pub struct Shared {
    pub tables: Arc<ArcSwap<RoutingTable>>,
}

/// One per client connection; hyper calls it once per request. It runs on its worker's
/// thread, with the worker's pools.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    worker: Rc<Worker>,
    conn: Arc<ConnInfo>,
}

impl ProxyService {
    pub fn new(shared: Arc<Shared>, worker: Rc<Worker>, conn: Arc<ConnInfo>) -> Self {
        ProxyService {
            shared,
            worker,
            conn,
        }
    }

    /// The routing table now, for the settings a connection reads when it starts.
    pub(crate) fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.shared.tables.load()
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    /// Not `Send`: it holds the worker's `Rc` and runs on the worker's thread.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // The table, the worker and the connection are all the request needs; taken here, so
        // the future holds three references and no clone of the service.
        let start = Instant::now();
        let table = self.shared.tables.load_full();
        let request = RequestGuard::start(self.conn.clone());
        let worker = self.worker.clone();
        // Copy what the access log needs only when it is on (it is off in benchmarks).
        let log = tracing::enabled!(target: "switchyard::access", Level::INFO)
            .then(|| Box::new((req.method().clone(), req.uri().clone())));
        // The request lives in this one future, rewritten in place and lent to the steps:
        // an async fn taking it by value would keep a copy of its own (the future is boxed
        // and moved once per request, so its size is paid on every request). So does the
        // context, which the steps borrow.
        let mut req = req.map(ReqBody::Client);
        Box::pin(async move {
            let mut ctx = RequestCtx {
                table: &table,
                worker: &worker,
                start,
                served: Served::default(),
            };
            let result = ctx.proxy(request.conn(), &mut req).await;
            Ok(ctx.respond(request, result, log))
        })
    }
}

/// What the steps of one request share. It lives in the request's future (no allocation)
/// and only borrows: the table version that serves the whole exchange, the worker.
struct RequestCtx<'t> {
    table: &'t Arc<RoutingTable>,
    worker: &'t Rc<Worker>,
    /// When the request arrived.
    start: Instant,
    /// Where it went, for metrics and the access log: filled in as the steps learn it.
    served: Served<'t>,
}

/// Step 1's outcome, which the later steps work from.
struct Route<'t> {
    svc: &'t ServiceTable,
    /// Made again after a hold.
    decision: Decision,
    /// What routes matched, kept to decide again.
    host: TargetHost,
    /// The client's side of a protocol upgrade (WebSocket), when it asked for one.
    client_upgrade: Option<OnUpgrade>,
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

impl<'t> Upstream<'t> {
    fn new(pool: &'t PoolTable, ep: &Arc<EndpointState>, conn: Conn, via: Via) -> Self {
        Upstream {
            pool,
            conn,
            inflight: InflightGuard::begin(ep.clone()),
            via,
        }
    }

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

// === impl RequestCtx ===

impl<'t> RequestCtx<'t> {
    async fn proxy(
        &mut self,
        conn: &ConnInfo,
        req: &mut Request<ReqBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut route = self.decide(conn, req)?;
        if let Some(mirror_pool) = route.svc.mirror
            && route.client_upgrade.is_none()
            && mirror::sampled(self.worker, route.svc.mirror_percent)
        {
            // Boxed, like the other rare paths, to keep every request's future small.
            let copy = Box::pin(mirror::copy(req, route.svc.mirror_max_body))
                .await
                .map_err(|_| ProxyError::BadRequest("request body could not be read"))?;
            if let Some(copy) = copy {
                let (worker, table) = (self.worker.clone(), self.table.clone());
                mirror::spawn(worker, table, route.decision.service, mirror_pool, copy);
            }
        }
        let (upstream, resp) = self.send_with_replay(&mut route, req).await?;
        Ok(self.finish(route, upstream, resp))
    }

    /// Step 1: checks the request, decides where it goes, and rewrites it (in place) for the
    /// upstream.
    fn decide(
        &mut self,
        conn: &ConnInfo,
        req: &mut Request<ReqBody>,
    ) -> Result<Route<'t>, ProxyError> {
        let host = check_request(req)?;
        let decision = self.route(req, &host)?;
        let table: &'t RoutingTable = self.table;
        let svc = table.service(decision.service).ok_or(ProxyError::NoRoute)?;
        self.served.service = Some(svc);
        self.served.note(svc, &decision);

        let upgrade = is_upgrade_request(req);
        prepare_request(req, &host, &conn.facts, upgrade)?;
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };
        Ok(Route {
            svc,
            decision,
            host,
            client_upgrade,
        })
    }

    /// Routes the request (host, path, headers) through the pure decision.
    fn route(&self, req: &Request<ReqBody>, host: &TargetHost) -> Result<Decision, ProxyError> {
        let view = RequestView {
            host: host.as_str(),
            path: req.uri().path(),
            headers: req.headers(),
        };
        decide(
            self.table,
            &view,
            &mut rand::rng(),
            PoolTable::has_available,
        )
        .map_err(|_| ProxyError::NoRoute)
    }

    /// Steps 2 and 3: connects and sends, sending again on a new connection when a pooled
    /// one was dead or a connection was lost before the answer of a replayable request;
    /// waits (`hold_timeout`) and decides again while nothing can serve. `req` is lent: it
    /// is taken when sent and put back when it is to be sent again.
    async fn send_with_replay(
        &mut self,
        route: &mut Route<'t>,
        req: &mut Request<ReqBody>,
    ) -> Result<(Upstream<'t>, Response<Incoming>), ProxyError> {
        let replayable = is_replayable(req);
        let mut at = Attempts {
            send_start: tokio::time::Instant::from_std(self.start),
            ctx: self,
            route,
            hold: None,
            source: Source::Pool,
            replays: 0,
        };
        loop {
            // The common case without an await: an idle pooled connection ready to go.
            let mut upstream = match at.pooled() {
                Ok(upstream) => upstream,
                Err(first) => Box::pin(at.connect_or_hold(first, req)).await?,
            };
            if let Some(resp) = at.send(&mut upstream, req, replayable).await? {
                return Ok((upstream, resp));
            }
        }
    }

    /// Step 4: the answer. Outlier evidence, the response head rewritten for the client, the
    /// affinity cookie, and the body streamed back with the connection it came on.
    fn finish(
        &mut self,
        route: Route<'t>,
        upstream: Upstream<'t>,
        mut resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        answered(route.svc, &upstream, resp.status().is_server_error());
        self.served.endpoint = Some(upstream.endpoint().clone());
        if upstream.via == Via::Failover {
            self.served.pool = Some(upstream.pool);
            self.served.reason = Some(Reason::Failover);
        }
        let pool_header = self.table.settings.pool_header.as_ref();
        prepare_response(
            &mut resp,
            pool_header.map(|name| (name, &upstream.pool.header_value)),
        );
        if let Some(cookie) = affinity_cookie(route.svc, &route.decision) {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = route.client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            // The connection now belongs to the tunnel; it never goes back to the pool.
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, upstream.inflight));
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ProxyBody::empty());
        }
        let (parts, body) = resp.into_parts();
        let worker = self.worker.clone();
        let body = ProxyBody::upstream(body, Some(upstream.conn), worker, Some(upstream.inflight));
        Response::from_parts(parts, body)
    }

    /// Counts the request in its pool's metrics, writes the access log line, and ties the
    /// request's end to its response body.
    fn respond(
        self,
        request: RequestGuard,
        result: Result<Response<ProxyBody>, ProxyError>,
        log: Option<Box<(http::Method, http::Uri)>>,
    ) -> Response<ProxyBody> {
        let served = &self.served;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                // Counted in the metrics where each attempt failed (`failed`).
                if e.upstream_kind().is_some() {
                    let (service, pool) = served.names();
                    warn!(error = %e, service, pool, "upstream failure");
                }
                e.into_response()
            }
        };
        let status = resp.status().as_u16();
        let elapsed = self.start.elapsed();
        match (served.service, served.pool) {
            (_, Some(pool)) => {
                pool.metrics.stats.record(status, elapsed);
                if let Some(reason) = served.reason {
                    pool.metrics.decision(reason);
                }
            }
            (Some(svc), None) => svc.unserved.record(status, elapsed),
            (None, None) => self.table.unrouted.record(status, elapsed),
        }
        if let Some(log) = log {
            let (method, uri) = &*log;
            access_log(served, method, uri, status, elapsed, request.conn());
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_request(request))
    }
}

/// The `Set-Cookie` that pins the client to the decided bucket, when the decision set one.
fn affinity_cookie(svc: &ServiceTable, decision: &Decision) -> Option<HeaderValue> {
    let (bucket, aff) = (decision.set_affinity?, svc.affinity.as_ref()?);
    let cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly",
        aff.cookie, bucket, aff.max_age_secs
    );
    HeaderValue::from_str(&cookie).ok()
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
    /// The request can go again on a new connection: handed back unsent (a pooled
    /// connection the upstream had closed), or rebuilt from its copy after it went out and
    /// the connection was lost (`lost`: an upstream failure, counted as a reset). Boxed: a
    /// rare path, kept out of every request's future.
    Retry {
        req: Box<Request<ReqBody>>,
        lost: bool,
    },
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
    copy: Option<Box<http::request::Parts>>,
    replays: u32,
) -> SendFailure {
    let unsent = e.take_message();
    let lost = is_connection_loss(e.error());
    match (unsent, copy) {
        // A pooled connection the upstream had closed: the request was not sent, so it goes
        // again, on a new connection.
        (Some(unsent), _) if reused && replays < MAX_REPLAYS => SendFailure::Retry {
            req: Box::new(unsent),
            lost: false,
        },
        // Sent, and the connection went away before the answer: a safe bodiless request goes
        // again, as NGINX does.
        (None, Some(head)) if lost && replays < MAX_REPLAYS => SendFailure::Retry {
            req: Box::new(Request::from_parts(*head, ReqBody::empty())),
            lost: true,
        },
        _ if e.error().is_user() || e.error().is_body_write_aborted() => SendFailure::ClientBody,
        _ => SendFailure::Upstream(e.into_error()),
    }
}

/// An answer from the upstream: outlier evidence when it is a 5xx, a success otherwise.
fn answered(svc: &ServiceTable, upstream: &Upstream<'_>, server_error: bool) {
    if let Some(o) = &svc.outlier {
        outlier::observe(o, upstream.pool, upstream.endpoint(), server_error);
    }
}

/// One failed attempt on `ep`: counted in `switchyard_upstream_errors_total` (every
/// attempt, retried or not, so a dead endpoint that retries hide from clients still
/// shows) and outlier evidence against it.
fn failed(svc: &ServiceTable, pool: &PoolTable, ep: &EndpointState, kind: UpstreamErrorKind) {
    pool.metrics.upstream_error(kind);
    if let Some(o) = &svc.outlier {
        outlier::observe(o, pool, ep, true);
    }
}

// === impl Attempts ===

/// Steps 2 and 3 of one request: its way to a connection and its sends, over the request's
/// context and route (the decision is made again after a hold).
struct Attempts<'c, 't> {
    ctx: &'c mut RequestCtx<'t>,
    route: &'c mut Route<'t>,
    /// `request_timeout` runs from each send: the first send's start is the request's (no
    /// clock read), a later one's is read when it happens (after a hold or a replay).
    send_start: tokio::time::Instant,
    /// Made on the first wait only (boxed: most requests never wait).
    hold: Option<Box<Hold<'t>>>,
    source: Source,
    /// Sends made again on a new connection so far.
    replays: u32,
}

impl<'t> Attempts<'_, 't> {
    /// An endpoint of the decided pool and an idle connection to it that is ready now;
    /// otherwise the endpoint picked (for [`Attempts::connect_or_hold`] to start from).
    fn pooled(&self) -> Result<Upstream<'t>, Option<&'t Arc<EndpointState>>> {
        let svc: &'t ServiceTable = self.route.svc;
        let pool = match svc.pool(self.route.decision.pool) {
            Some(pool) if self.route.decision.available && self.source == Source::Pool => pool,
            _ => return Err(None),
        };
        let ep = pool.pick(&mut rand::rng(), None).ok_or(None)?;
        match self
            .ctx
            .worker
            .pools
            .take_ready(ep, &pool.upstream, self.ctx.start)
        {
            Some(conn) => Ok(Upstream::new(pool, ep, conn, Via::Decided)),
            None => Err(Some(ep)),
        }
    }

    /// Connects (with failover); while nothing can serve and `hold_timeout` allows, waits
    /// for an endpoint to come back (health check, end of ejection, restarted instance) and
    /// decides again.
    async fn connect_or_hold(
        &mut self,
        mut first: Option<&'t Arc<EndpointState>>,
        req: &Request<ReqBody>,
    ) -> Result<Upstream<'t>, ProxyError> {
        loop {
            let svc: &'t ServiceTable = self.route.svc;
            let attempt = match svc.pool(self.route.decision.pool) {
                Some(pool) if self.route.decision.available => {
                    self.connect_with_failover(pool, first.take()).await
                }
                _ => Err(ProxyError::NoHealthyEndpoint),
            };
            let e = match attempt {
                Ok(upstream) => return Ok(upstream),
                Err(e @ (ProxyError::NoHealthyEndpoint | ProxyError::UpstreamConnect(_))) => e,
                Err(e) => return Err(e),
            };
            let worker: &'t Worker = self.ctx.worker;
            let (timeout, start) = (svc.hold_timeout, self.ctx.start);
            let hold = self
                .hold
                .get_or_insert_with(|| Box::new(Hold::new(worker, timeout, start)));
            if !hold.wait().await {
                return Err(match e {
                    ProxyError::UpstreamConnect(_) if !hold.enabled() => e,
                    _ => ProxyError::NoHealthyEndpoint,
                });
            }
            self.route.decision = self.ctx.route(req, &self.route.host)?;
            self.ctx.served.note(svc, &self.route.decision);
            self.send_start = tokio::time::Instant::now();
        }
    }

    /// Connects to `pool` (starting with `first` when one was picked already); when every
    /// endpoint tried refuses and the service has `failover`, to the first other pool (in
    /// weights order) with an available endpoint.
    async fn connect_with_failover(
        &self,
        pool: &'t PoolTable,
        first: Option<&'t Arc<EndpointState>>,
    ) -> Result<Upstream<'t>, ProxyError> {
        let svc: &'t ServiceTable = self.route.svc;
        match self.connect(pool, first, Via::Decided).await {
            Err(err @ ProxyError::UpstreamConnect(_)) if svc.failover => {
                for other in svc.failover_candidates() {
                    if std::ptr::eq(other, pool) || !other.has_available() {
                        continue;
                    }
                    if let Ok(u) = self.connect(other, None, Via::Failover).await {
                        return Ok(u);
                    }
                }
                Err(err)
            }
            other => other,
        }
    }

    /// Picks an endpoint (unless given one) and connects; a connect error retries once on
    /// another endpoint.
    async fn connect(
        &self,
        pool: &'t PoolTable,
        first: Option<&'t Arc<EndpointState>>,
        via: Via,
    ) -> Result<Upstream<'t>, ProxyError> {
        let first = match first {
            Some(ep) => ep,
            None => pool
                .pick(&mut rand::rng(), None)
                .ok_or(ProxyError::NoHealthyEndpoint)?,
        };
        let err = match self.open(pool, first).await {
            Ok(conn) => return Ok(Upstream::new(pool, first, conn, via)),
            Err(e) => e,
        };
        warn!(endpoint = %first.address, error = %err, "upstream connect failed");
        let second = match pool.pick(&mut rand::rng(), Some(first.id)) {
            Some(second) if second.id != first.id => second,
            _ => return Err(ProxyError::UpstreamConnect(err)),
        };
        match self.open(pool, second).await {
            Ok(conn) => Ok(Upstream::new(pool, second, conn, via)),
            Err(e) => Err(ProxyError::UpstreamConnect(e)),
        }
    }

    /// A connection to `ep`; a failure to connect is outlier evidence against it.
    async fn open(&self, pool: &PoolTable, ep: &EndpointState) -> Result<Conn, ConnectError> {
        let timeout = self.ctx.table.settings.connect_timeout;
        let pools = &self.ctx.worker.pools;
        let conn = match self.source {
            Source::Pool => {
                pools
                    .acquire(ep, &pool.upstream, timeout, self.ctx.start)
                    .await
            }
            Source::New => Box::pin(pools.connect(ep, &pool.upstream, timeout)).await,
        };
        if conn.is_err() {
            failed(self.route.svc, pool, ep, UpstreamErrorKind::Connect);
        }
        conn
    }

    /// Sends `req` on `upstream` within `request_timeout`. `Ok(None)`: it is to go again on
    /// a new connection, and `req` holds it again.
    async fn send(
        &mut self,
        upstream: &mut Upstream<'t>,
        req: &mut Request<ReqBody>,
        replayable: bool,
    ) -> Result<Option<Response<Incoming>>, ProxyError> {
        let settings = &self.ctx.table.settings;
        let pool_header = settings.pool_header.as_ref();
        for_connection(
            req,
            pool_header.map(|name| (name, &upstream.pool.header_value)),
            upstream
                .conn
                .is_http2()
                .then(|| upstream.pool.upstream.scheme()),
        )?;
        // A copy (a header-map clone) to send the request again should the connection be
        // lost after it went out; only for requests that may be sent again.
        let copy = replayable.then(|| Box::new(head_of(req)));
        let outgoing = std::mem::replace(req, Request::new(ReqBody::empty()));
        let deadline = self.send_start + settings.request_timeout;
        let sent =
            tokio::time::timeout_at(deadline, upstream.conn.try_send_request(outgoing)).await;
        let failure = match sent {
            Ok(Ok(resp)) => return Ok(Some(resp)),
            Ok(Err(e)) => classify(e, upstream.conn.reused, copy, self.replays),
            Err(_) => {
                let kind = UpstreamErrorKind::Timeout;
                failed(self.route.svc, upstream.pool, upstream.endpoint(), kind);
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        *req = self.again(upstream, failure)?;
        self.replays += 1;
        self.source = Source::New;
        self.send_start = tokio::time::Instant::now();
        Ok(None)
    }

    /// The request to send again after `failure`, or the error that ends the request.
    fn again(
        &self,
        upstream: &Upstream<'_>,
        failure: SendFailure,
    ) -> Result<Request<ReqBody>, ProxyError> {
        match failure {
            SendFailure::Retry { req, lost } => {
                // A lost connection counts (not outlier evidence: it is sent again); an idle
                // one the upstream had closed is no failure.
                if lost {
                    let kind = UpstreamErrorKind::Reset;
                    upstream.pool.metrics.upstream_error(kind);
                }
                Ok(*req)
            }
            SendFailure::ClientBody => {
                Err(ProxyError::BadRequest("request body could not be read"))
            }
            SendFailure::Upstream(e) => {
                let kind = UpstreamErrorKind::Reset;
                failed(self.route.svc, upstream.pool, upstream.endpoint(), kind);
                Err(ProxyError::UpstreamReset(e))
            }
        }
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
