//! Upstream HTTP/1.1 connections in per-thread, per-endpoint idle pools.
//!
//! Each worker thread runs its own `current_thread` runtime, so its pool is thread-local:
//! no lock, no cross-thread wakeup (PERFORMANCE.md measured the shared legacy pool at ~1 µs
//! per request). A connection goes back to its pool when its response body has ended.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::EndpointState;

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

/// Idle connections kept per endpoint per worker thread.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// An idle upstream connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

thread_local! {
    static POOLS: RefCell<HashMap<u64, VecDeque<Idle>>> = RefCell::new(HashMap::new());
}

/// A connection taken from (or made for) an endpoint's pool.
#[derive(Debug)]
pub struct Conn {
    pub sender: SendRequest<ReqBody>,
    endpoint_id: u64,
    /// True when it came from the idle pool (a failed send may then be retried on a new one).
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

impl Conn {
    /// Returns the connection to its thread's idle pool, unless it is closed.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let idle = pools.entry(self.endpoint_id).or_default();
            // LIFO reuse keeps the hottest connections; the oldest expire from the front.
            while idle
                .front()
                .is_some_and(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
            {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push_back(Idle {
                    sender: self.sender,
                    since: now,
                });
            }
        });
    }
}

/// A ready connection to `ep`: a pooled one if any is alive, else a new one.
pub async fn acquire(ep: &EndpointState, connect_timeout: Duration) -> Result<Conn, ConnectError> {
    while let Some(mut sender) = take_idle(ep.id) {
        // `ready` resolves at once for an idle connection, or fails if the upstream closed it.
        if sender.ready().await.is_ok() {
            return Ok(Conn {
                sender,
                endpoint_id: ep.id,
                reused: true,
            });
        }
    }
    // Boxed: the connect path is rare with keep-alive, and inlining its large state would
    // make every request's future (moved on each request) that much bigger.
    Box::pin(connect(ep, connect_timeout)).await
}

fn take_idle(endpoint_id: u64) -> Option<SendRequest<ReqBody>> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let idle = pools.get_mut(&endpoint_id)?;
        while let Some(i) = idle.pop_back() {
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    })
}

/// Opens a new connection (TCP connect and HTTP/1.1 handshake) within `timeout`.
pub async fn connect(ep: &EndpointState, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = tokio::time::timeout(timeout, async {
        match ep.socket_addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(ep.address.as_str()).await,
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        // Ends when the upstream closes or the sender is dropped; errors are seen by the sender.
        let _ = conn.with_upgrades().await;
    });
    Ok(Conn {
        sender,
        endpoint_id: ep.id,
        reused: false,
    })
}

/// Drops this thread's idle connections to endpoints that are gone (after a reload).
pub fn retain_endpoints(keep: impl Fn(u64) -> bool) {
    POOLS.with(|pools| pools.borrow_mut().retain(|id, _| keep(*id)));
}
