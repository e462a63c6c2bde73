//! Upstream connections, per worker and endpoint: idle pools of HTTP/1.1 senders, and one
//! shared, multiplexed HTTP/2 sender.
//!
//! Each worker thread runs its own `current_thread` runtime and owns one [`Pools`], lent to
//! its connections: no lock, no cross-thread wakeup (a pool shared between threads, as in
//! hyper-util's legacy client, measured about 1 µs more per request here). An HTTP/1.1
//! connection goes back to its pool when its response body has ended; an HTTP/2 connection
//! stays in its slot while it is open and carries every request of the worker to that
//! endpoint.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::either::Either;

use super::EndpointState;
use super::tls::{UpstreamProtocol, Wire};

/// Body sent upstream: the client's own body, streamed; or bytes switchyard holds (a
/// bodiless request sent again, a mirrored copy).
#[derive(Debug)]
pub enum ReqBody {
    Client(Incoming),
    Bytes(Option<Bytes>),
}

impl ReqBody {
    pub fn empty() -> Self {
        ReqBody::Bytes(None)
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(body) => Pin::new(body).poll_frame(cx),
            ReqBody::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(body) => body.is_end_stream(),
            ReqBody::Bytes(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(body) => body.size_hint(),
            ReqBody::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Idle HTTP/1.1 connections kept per endpoint per worker thread: enough for 256 requests
/// in flight to one endpoint on one worker without a new connection. More only held memory
/// after a burst (1,024 kept 1.5–1.7× the starting RSS 2 s after 4,000 clients left; 256,
/// 1.27×) and did not change throughput at 256 connections.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle upstream connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
    /// The [`UpstreamProtocol::fingerprint`] it was made with.
    fingerprint: u64,
}

impl Idle {
    /// Made with the pool's current settings, and not idle so long that the upstream may
    /// have closed it.
    fn usable(&self, fingerprint: u64, now: Instant) -> bool {
        self.fingerprint == fingerprint && now.saturating_duration_since(self.since) <= IDLE_TIMEOUT
    }
}

/// The thread's HTTP/2 connection to one endpoint, or the connect that will make it.
enum H2Slot {
    Ready {
        sender: http2::SendRequest<ReqBody>,
        fingerprint: u64,
    },
    /// A request is connecting; others wait for it rather than open connections of their own.
    /// The receiver sees the connecting side's sender dropped when it is done (or gave up).
    Connecting {
        fingerprint: u64,
        token: u64,
        done: watch::Receiver<()>,
    },
}

/// Hashes an endpoint id (unique, process-wide) with one multiplication: the maps below are
/// looked up twice per request, where SipHash's flood resistance buys nothing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The upstream connections of one worker, by endpoint id. The worker makes it when its
/// thread starts and lends it (in an `Rc`) to its connections; only that thread touches it,
/// so a `RefCell` is all the synchronisation needed (no borrow is held across an `.await`).
/// Dropped with the worker, which closes its idle connections.
#[derive(Default)]
pub struct Pools {
    idle: RefCell<IdMap<VecDeque<Idle>>>,
    h2: RefCell<IdMap<H2Slot>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

/// A connection taken from (or made for) an endpoint.
#[derive(Debug)]
pub struct Conn {
    sender: Sender,
    endpoint_id: u64,
    fingerprint: u64,
    /// True when it was already open (a failed send may then be retried on a new one).
    pub reused: bool,
    /// When the request that took it started: it counts as idle from then once released,
    /// which saves a clock read per request and errs on the side of expiring early.
    taken: Instant,
}

#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<ReqBody>),
    /// A clone of the thread's shared sender for the endpoint.
    Http2(http2::SendRequest<ReqBody>),
}

/// What kind of upstream failure (the `kind` label of upstream error metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Conn {
    fn new(
        sender: Sender,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
        reused: bool,
        taken: Instant,
    ) -> Self {
        Conn {
            sender,
            endpoint_id: ep.id,
            fingerprint: proto.fingerprint,
            reused,
            taken,
        }
    }

    /// Speaks HTTP/2: requests must be in HTTP/2 form (`forward::to_http2`).
    #[inline]
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    /// One request off the request path (a probe, a webhook): its status, with the body
    /// read to the end and dropped so the connection closes cleanly.
    pub async fn status_of(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<http::StatusCode, hyper::Error> {
        let resp = self
            .try_send_request(req)
            .await
            .map_err(TrySendError::into_error)?;
        let status = resp.status();
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Ok(status)
    }

    /// Sends `req`; when it could not be sent at all, the error hands it back. A plain
    /// function returning hyper's own future (no async wrapper holding the request again):
    /// it sits in every request's future.
    pub fn try_send_request(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>> + use<>
    {
        match &mut self.sender {
            Sender::Http1(sender) => Either::Left(sender.try_send_request(req)),
            Sender::Http2(sender) => Either::Right(sender.try_send_request(req)),
        }
    }
}

// === impl Pools ===

impl Pools {
    /// A pooled connection to `ep` that can take a request right now, without waiting: the
    /// newest idle HTTP/1.1 connection if its dispatcher is ready, or the worker's HTTP/2
    /// connection. `None` sends the caller to [`Pools::acquire`]. `now` is the request's start.
    pub fn take_ready(
        &self,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
        now: Instant,
    ) -> Option<Conn> {
        let sender = match proto.wire {
            Wire::Http1 => {
                let mut pools = self.idle.borrow_mut();
                let idle = pools.get_mut(&ep.id)?;
                let newest = idle.back()?;
                let usable = newest.sender.is_ready() && newest.usable(proto.fingerprint, now);
                usable
                    .then(|| idle.pop_back())
                    .flatten()
                    .map(|i| Sender::Http1(i.sender))?
            }
            Wire::Http2 => Sender::Http2(self.h2_ready(ep, proto)?),
        };
        Some(Conn::new(sender, ep, proto, true, now))
    }

    /// The worker's open HTTP/2 connection to `ep`, made with `proto`'s settings, if any.
    fn h2_ready(
        &self,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
    ) -> Option<http2::SendRequest<ReqBody>> {
        match self.h2.borrow().get(&ep.id) {
            Some(H2Slot::Ready {
                sender,
                fingerprint,
            }) if *fingerprint == proto.fingerprint && !sender.is_closed() => Some(sender.clone()),
            _ => None,
        }
    }

    /// A ready connection to `ep`: HTTP/1.1, a pooled one if any is alive, else a new one;
    /// HTTP/2, the worker's shared one, made (once) if there is none.
    /// `now` is the request's start (no clock read of its own).
    pub async fn acquire(
        &self,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
        connect_timeout: Duration,
        now: Instant,
    ) -> Result<Conn, ConnectError> {
        if proto.wire == Wire::Http2 {
            return Box::pin(self.acquire_h2(ep, proto, connect_timeout)).await;
        }
        while let Some(mut sender) = self.take_idle(ep.id, proto.fingerprint, now) {
            // `ready` resolves at once for an idle connection, or fails if the upstream closed it.
            if sender.ready().await.is_ok() {
                return Ok(Conn::new(Sender::Http1(sender), ep, proto, true, now));
            }
        }
        // Boxed: the connect path is rare with keep-alive, and inlining its large state would
        // make every request's future (moved on each request) that much bigger.
        Box::pin(self.connect(ep, proto, connect_timeout)).await
    }

    fn take_idle(
        &self,
        endpoint_id: u64,
        fingerprint: u64,
        now: Instant,
    ) -> Option<http1::SendRequest<ReqBody>> {
        let mut pools = self.idle.borrow_mut();
        let idle = pools.get_mut(&endpoint_id)?;
        while let Some(i) = idle.pop_back() {
            // Unusable ones are dropped here, unused.
            if !i.sender.is_closed() && i.usable(fingerprint, now) {
                return Some(i.sender);
            }
        }
        None
    }

    async fn acquire_h2(
        &self,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
        connect_timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let mut waited = false;
        loop {
            if let Some(sender) = self.h2_ready(ep, proto) {
                return Ok(Conn::new(
                    Sender::Http2(sender),
                    ep,
                    proto,
                    true,
                    Instant::now(),
                ));
            }
            let found = match self.h2.borrow().get(&ep.id) {
                Some(H2Slot::Connecting {
                    fingerprint, done, ..
                }) if *fingerprint == proto.fingerprint && !waited => Found::Wait(done.clone()),
                _ => Found::Connect,
            };
            match found {
                Found::Wait(mut done) => {
                    // Ends when the connecting request is done, however it went (it is bounded
                    // by the connect timeout); waiting once only, then connecting on our own.
                    let _ = done.changed().await;
                    waited = true;
                }
                Found::Connect => return self.connect(ep, proto, connect_timeout).await,
            }
        }
    }

    /// Opens a new connection to `ep` (TCP connect, TLS, HTTP handshake) within `timeout`.
    /// HTTP/2: it becomes the worker's shared connection to `ep`, replacing any before it.
    pub async fn connect(
        &self,
        ep: &EndpointState,
        proto: &UpstreamProtocol,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let connecting = (proto.wire == Wire::Http2).then(|| Connecting::start(self, ep.id, proto));
        let sender = tokio::time::timeout(timeout, open(ep, proto))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        if let (Some(connecting), Sender::Http2(sender)) = (connecting, &sender) {
            connecting.finish(sender.clone());
        }
        Ok(Conn::new(sender, ep, proto, false, Instant::now()))
    }

    /// Done with `conn` (its response body has ended). HTTP/1.1: back to the idle pool,
    /// unless it is closed. HTTP/2: nothing to do, the slot keeps the connection.
    pub fn release(&self, conn: Conn) {
        let Sender::Http1(sender) = conn.sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let now = conn.taken;
        let mut pools = self.idle.borrow_mut();
        let idle = pools.entry(conn.endpoint_id).or_default();
        // LIFO reuse keeps the hottest connections; the oldest expire from the front.
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push_back(Idle {
                sender,
                since: now,
                fingerprint: conn.fingerprint,
            });
        }
    }

    /// Drops the connections to endpoints that are gone (after a reload).
    pub fn retain_endpoints(&self, keep: impl Fn(u64) -> bool) {
        self.idle.borrow_mut().retain(|id, _| keep(*id));
        self.h2.borrow_mut().retain(|id, _| keep(*id));
    }
}

/// What the HTTP/2 slot of an endpoint offers when it has no open connection.
enum Found {
    Wait(watch::Receiver<()>),
    Connect,
}

/// A connection of its own, outside the pools (health probes), closed when dropped.
pub async fn connect_unpooled(
    ep: &EndpointState,
    proto: &UpstreamProtocol,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let sender = tokio::time::timeout(timeout, open(ep, proto))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    Ok(Conn::new(sender, ep, proto, false, Instant::now()))
}

async fn open(ep: &EndpointState, proto: &UpstreamProtocol) -> Result<Sender, ConnectError> {
    let stream = match ep.socket_addr {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(ep.address.as_str()).await,
    }?;
    stream.set_nodelay(true)?;
    match &proto.tls {
        None => handshake(stream, proto.wire).await,
        Some(tls) => {
            let stream = tls
                .connect(&ep.address, stream)
                .await
                .map_err(ConnectError::Tls)?;
            handshake(stream, proto.wire).await
        }
    }
}

async fn handshake<I>(io: I, wire: Wire) -> Result<Sender, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match wire {
        Wire::Http1 => {
            let (sender, conn) = http1::Builder::new().writev(false).handshake(io).await?;
            tokio::spawn(async move {
                // Ends when the upstream closes or the sender is dropped; errors are seen by
                // the sender.
                let _ = conn.with_upgrades().await;
            });
            Ok(Sender::Http1(sender))
        }
        Wire::Http2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                // Ends when the upstream closes (GOAWAY, reset) or every sender is dropped.
                let _ = conn.await;
            });
            Ok(Sender::Http2(sender))
        }
    }
}

/// Marks an endpoint's HTTP/2 slot as connecting for as long as it lives; dropped without
/// [`Connecting::finish`] (failure, timeout, cancelled request), it clears the mark.
struct Connecting<'p> {
    pools: &'p Pools,
    endpoint_id: u64,
    token: u64,
    /// Dropped last: wakes the waiters once the slot says how it went.
    _done: watch::Sender<()>,
}

impl<'p> Connecting<'p> {
    fn start(pools: &'p Pools, endpoint_id: u64, proto: &UpstreamProtocol) -> Connecting<'p> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let token = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(());
        pools.h2.borrow_mut().insert(
            endpoint_id,
            H2Slot::Connecting {
                fingerprint: proto.fingerprint,
                token,
                done: rx,
            },
        );
        Connecting {
            pools,
            endpoint_id,
            token,
            _done: tx,
        }
    }

    fn finish(self, sender: http2::SendRequest<ReqBody>) {
        let mut slots = self.pools.h2.borrow_mut();
        let fingerprint = match slots.get(&self.endpoint_id) {
            Some(H2Slot::Connecting {
                token, fingerprint, ..
            }) if *token == self.token => *fingerprint,
            // Another connect replaced ours meanwhile (a fresh reconnect): keep theirs.
            _ => return,
        };
        slots.insert(
            self.endpoint_id,
            H2Slot::Ready {
                sender,
                fingerprint,
            },
        );
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        let mut slots = self.pools.h2.borrow_mut();
        if matches!(slots.get(&self.endpoint_id),
            Some(H2Slot::Connecting { token, .. }) if *token == self.token)
        {
            slots.remove(&self.endpoint_id);
        }
    }
}
