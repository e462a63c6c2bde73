//! The admin listener's places: at most [`MAX_CONNECTIONS`] connections at once, and when
//! all are taken, a new connection takes the place of the oldest one that is waiting on its
//! client (silent, halfway through a head or a body, or idle between requests).
//!
//! Why evict instead of refusing the newcomer: a crowd of clients that open connections and
//! stall would otherwise fill every place until the head or body deadline (10 s) cuts them,
//! and an attacker who keeps opening them would hold the port for as long as it likes, so
//! `/healthz` and `/readyz` probes would be refused and the process restarted or taken out
//! of rotation. A connection that is waiting on its client loses nothing it was promised by
//! being closed; connections busy on an answer (an event stream, a change in progress) keep
//! their place.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::ConnInfo;
use crate::server::OpenGuard;

/// Admin connections open at once at most, so a crowd of clients cannot take the
/// process's descriptors (or starve the proxy port).
pub(super) const MAX_CONNECTIONS: usize = 256;

/// One admin connection, as its place-keeping sees it.
pub(super) struct AdminConn {
    accepted: Instant,
    pub(super) info: Arc<ConnInfo>,
    /// Closes the connection (an eviction, or an event stream's client that stalled).
    pub(super) close: CancellationToken,
    /// Requests on it waiting for their body (HTTP/2 may carry several).
    reading_bodies: AtomicUsize,
    /// It carries an event stream: its socket's send buffer is made small (see [`AdminIo`]).
    streams_events: AtomicBool,
}

impl AdminConn {
    /// From now on the connection carries an event stream.
    pub(super) fn mark_event_stream(&self) {
        self.streams_events.store(true, Ordering::Relaxed);
    }

    /// Nothing it asked for is being worked on: every request in flight (if any) is
    /// waiting for its body from the client.
    fn waiting_on_client(&self) -> bool {
        let in_flight = self.info.activity.in_flight();
        in_flight == self.reading_bodies.load(Ordering::Relaxed) as u64
    }
}

/// Marks a request of `conn` as waiting for its body until dropped.
pub(super) struct ReadingBody<'a>(&'a AdminConn);

impl<'a> ReadingBody<'a> {
    pub(super) fn start(conn: &'a AdminConn) -> Self {
        conn.reading_bodies.fetch_add(1, Ordering::Relaxed);
        ReadingBody(conn)
    }
}

impl Drop for ReadingBody<'_> {
    fn drop(&mut self) {
        self.0.reading_bodies.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The listener's places and the connections holding them.
pub(super) struct Places {
    open: Arc<AtomicUsize>,
    conns: Vec<Weak<AdminConn>>,
    /// How many of `conns` were alive when last pruned.
    live_hint: usize,
}

impl Places {
    pub(super) fn new() -> Self {
        Places {
            open: Arc::new(AtomicUsize::new(0)),
            conns: Vec::new(),
            live_hint: 0,
        }
    }

    /// A place for a connection from `peer`: a free one, or the place of the oldest
    /// connection waiting on its client, which is closed. `None` when every connection is
    /// busy on an answer (the newcomer is then closed at once).
    pub(super) async fn take(
        &mut self,
        peer: SocketAddr,
        listener: &CancellationToken,
    ) -> Option<(OpenGuard, Arc<AdminConn>)> {
        let guard = match OpenGuard::take(&self.open, MAX_CONNECTIONS) {
            Some(g) => g,
            None => {
                let victim = self
                    .conns
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|c| !c.close.is_cancelled() && c.waiting_on_client())
                    .min_by_key(|c| c.accepted)?;
                tracing::debug!(
                    %peer,
                    evicted = %victim.info.peer,
                    "admin connection limit reached: the oldest waiting connection is closed"
                );
                victim.close.cancel();
                drop(victim);
                // Its task runs on this thread: let it close and give its place back.
                tokio::task::yield_now().await;
                OpenGuard::take(&self.open, MAX_CONNECTIONS)?
            }
        };
        let conn = Arc::new(AdminConn {
            accepted: Instant::now(),
            info: Arc::new(ConnInfo::new(peer, false)),
            close: listener.child_token(),
            reading_bodies: AtomicUsize::new(0),
            streams_events: AtomicBool::new(false),
        });
        if self.conns.len() >= 64 && self.conns.len() >= 2 * self.live_hint {
            self.conns.retain(|w| w.strong_count() > 0);
            self.live_hint = self.conns.len();
        }
        self.conns.push(Arc::downgrade(&conn));
        Some((guard, conn))
    }
}

/// The send buffer of a connection that carries an event stream. The kernel's own grows to
/// megabytes on loopback, where a client that reads nothing would hide minutes of events
/// before the stream's write deadline could see anything; events are small and a second
/// apart, so a few kilobytes is plenty. (The kernel doubles the value given.)
const EVENT_SEND_BUFFER: usize = 8 * 1024;

/// An admin connection's socket. Shrinks its send buffer once the connection carries an
/// event stream: only the socket's owner can, and hyper owns it by then.
pub(super) struct AdminIo {
    inner: TcpStream,
    conn: Arc<AdminConn>,
    tuned: bool,
}

impl AdminIo {
    pub(super) fn new(inner: TcpStream, conn: Arc<AdminConn>) -> Self {
        AdminIo {
            inner,
            conn,
            tuned: false,
        }
    }

    fn tune(&mut self) {
        if !self.tuned && self.conn.streams_events.load(Ordering::Relaxed) {
            self.tuned = true;
            if let Err(e) =
                socket2::SockRef::from(&self.inner).set_send_buffer_size(EVENT_SEND_BUFFER)
            {
                tracing::debug!(error = %e, "cannot shrink an event stream's send buffer");
            }
        }
    }
}

impl AsyncRead for AdminIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.tune();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.tune();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
