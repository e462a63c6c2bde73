//! Workers: one OS thread per worker, each with a `current_thread` runtime and its own
//! `SO_REUSEPORT` listener; the accept loop, client connection limits and graceful drain.
//!
//! This shape measured fastest on a 2-core machine against a multi-thread runtime (even with
//! one worker): no work stealing and no cross-thread wakeups on the request path, and
//! per-worker upstream pools without locks. Each worker owns its [`Worker`] (the pools) and
//! runs its connections as local tasks (`LocalSet`), so they can share it through an `Rc`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::proxy::{ConnInfo, ProxyService, Shared, Worker};
use crate::router::RoutingTable;

/// The data-plane listeners and their worker threads.
pub struct Running {
    /// The address actually bound (resolves port 0).
    pub addr: SocketAddr,
    /// The TLS listener's address, when `server.tls` is set.
    pub tls_addr: Option<SocketAddr>,
    /// Copies of the workers' sockets, to hand to a successor; closed once the workers stop,
    /// so a stopped instance's ports refuse rather than queue.
    sockets: Option<Sockets>,
    token: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting and drains connections (up to `shutdown_grace`); returns when done.
    pub fn shutdown(self) {
        self.token.cancel();
        self.join();
    }

    /// Copies of the listening sockets, for a successor (`run --takeover`).
    pub fn sockets(&self) -> io::Result<Sockets> {
        match &self.sockets {
            Some(s) => s.try_clone(),
            None => Err(io::Error::other("the listeners are closed")),
        }
    }

    /// Waits for the workers to end (after the token given to [`start`] is cancelled).
    pub fn join(mut self) {
        self.sockets = None;
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The TLS listener's settings.
#[derive(Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
}

/// The listening sockets of the data plane: one per worker and address when bound here, or
/// as many as a predecessor handed over (`run --takeover`).
pub struct Sockets {
    pub plain: Vec<std::net::TcpListener>,
    pub tls: Vec<std::net::TcpListener>,
}

impl Sockets {
    /// Binds `addr` (and the TLS address) once per worker with `SO_REUSEPORT`.
    pub fn bind(addr: SocketAddr, tls: Option<SocketAddr>, workers: usize) -> io::Result<Sockets> {
        let workers = workers.max(1);
        let plain = bind_all(addr, workers).map_err(named("server.listen", addr))?;
        let tls = match tls {
            Some(at) => bind_all(at, workers).map_err(named("server.tls.listen", at))?,
            None => Vec::new(),
        };
        Ok(Sockets { plain, tls })
    }

    /// Copies of these sockets (new descriptors for the same sockets), to hand over.
    pub fn try_clone(&self) -> io::Result<Sockets> {
        let dup = |ls: &[std::net::TcpListener]| -> io::Result<Vec<_>> {
            ls.iter().map(|l| l.try_clone()).collect()
        };
        Ok(Sockets {
            plain: dup(&self.plain)?,
            tls: dup(&self.tls)?,
        })
    }
}

/// Each error names its listener and address, once.
fn named(key: &'static str, at: SocketAddr) -> impl Fn(io::Error) -> io::Error {
    move |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {key} {at}: {e}"))
}

/// Gives each of `workers` its share of `listeners`: every listener goes to one worker, so
/// none is left without an acceptor (a connection queued on a socket nobody accepts from
/// would wait forever), and a worker left without one shares another's (a copy of the
/// same socket).
fn deal(
    listeners: Vec<std::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut dealt: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let n = listeners.len();
    for (i, l) in listeners.into_iter().enumerate() {
        dealt[i % workers].push(l);
    }
    if n > 0 {
        for i in n..workers {
            let copy = dealt[i % n][0].try_clone()?;
            dealt[i].push(copy);
        }
    }
    Ok(dealt)
}

/// Starts the workers on `sockets`: each accepts on its share of them.
pub fn start(
    sockets: Sockets,
    tls: Option<TlsListener>,
    tables: Arc<ArcSwap<RoutingTable>>,
    workers: usize,
    token: CancellationToken,
) -> io::Result<Running> {
    let workers = workers.max(1);
    let bound = sockets
        .plain
        .first()
        .ok_or_else(|| io::Error::other("no listening socket for server.listen"))?
        .local_addr()?;
    let tls_addr = match &tls {
        Some(_) => sockets.tls.first().map(|l| l.local_addr()).transpose()?,
        None => None,
    };
    let kept = sockets.try_clone()?;
    for l in sockets.plain.iter().chain(&sockets.tls) {
        // A handed-over socket may come in blocking mode; the runtime needs it not to.
        l.set_nonblocking(true)?;
    }
    let plain = deal(sockets.plain, workers)?;
    let tls_listeners = match &tls {
        Some(_) => deal(sockets.tls, workers)?,
        None => (0..workers).map(|_| Vec::new()).collect(),
    };
    let shared = Arc::new(Shared { tables });
    let open = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::with_capacity(workers);
    for (i, (listeners, tls_listeners)) in plain.into_iter().zip(tls_listeners).enumerate() {
        let shared = shared.clone();
        let token = token.clone();
        let open = open.clone();
        let tls = tls.clone();
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cannot start worker runtime");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    // The accept loop is a task of its own: the set polls the future it
                    // runs until on every wake, which a join handle makes cheap.
                    let accept = worker(listeners, tls_listeners, tls, shared, open, token);
                    let _ = tokio::task::spawn_local(accept).await;
                });
            })?;
        threads.push(thread);
    }
    info!(addr = %bound, tls = ?tls_addr, workers, "listening");
    Ok(Running {
        addr: bound,
        tls_addr,
        sockets: Some(kept),
        token,
        threads,
    })
}

/// One listener per worker on the same address (port 0 resolves once, for all).
///
/// `SO_REUSEPORT` lets the kernel spread connections over the workers' sockets, but it also
/// lets any other process of the same user join the group and take a share of the
/// connections without a word. So the address is first bound by a probe without it: that
/// bind fails while anything listens there (another switchyard's workers included). The
/// probe never listens, and a bound socket with `SO_REUSEADDR` that does not listen keeps
/// neither the workers out nor, for port 0, hands its port to anyone else meanwhile (not
/// even as the local port of an outgoing connection); it is closed once the workers listen.
/// Two processes starting in the same instant could still both get through.
fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let probe = socket_for(addr)?;
    probe.bind(&addr.into()).map_err(in_use)?;
    let bound = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP address"))?;
    let mut all = Vec::with_capacity(workers);
    for _ in 0..workers {
        all.push(bind_reuseport(bound).map_err(in_use)?);
    }
    drop(probe);
    Ok(all)
}

/// Says who may hold the address, when it is held (the caller names the address).
pub(crate) fn in_use(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        return io::Error::new(
            e.kind(),
            format!("{e}; another process (another switchyard?) listens there"),
        );
    }
    e
}

/// A TCP socket for `addr` with `SO_REUSEADDR` (a restart is not held up by the previous
/// run's connections in TIME_WAIT), not yet bound.
fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Counts a client connection as open until dropped (a listener's connection cap).
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    /// A place under `cap` open connections, or `None`: past the cap a connection is closed
    /// at once, so the process keeps its descriptors and memory for those it serves.
    pub(crate) fn take(open: &Arc<AtomicUsize>, cap: usize) -> Option<OpenGuard> {
        if open.fetch_add(1, Ordering::Relaxed) >= cap {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(OpenGuard(open.clone()))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next connection on any of `listeners` (`true`: a TLS listener's), starting the
/// search at `turn` so a busy listener cannot starve the others.
async fn accept_any(
    listeners: &[(TcpListener, bool)],
    turn: usize,
) -> (io::Result<(TcpStream, SocketAddr)>, bool) {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for k in 0..n {
            let (l, secure) = &listeners[(turn + k) % n];
            if let Poll::Ready(r) = l.poll_accept(cx) {
                return Poll::Ready((r, *secure));
            }
        }
        Poll::Pending
    })
    .await
}

async fn worker(
    plain: Vec<std::net::TcpListener>,
    tls_sockets: Vec<std::net::TcpListener>,
    tls_settings: Option<TlsListener>,
    shared: Arc<Shared>,
    open: Arc<AtomicUsize>,
    token: CancellationToken,
) {
    let listeners = register(plain, tls_sockets);
    if listeners.is_empty() {
        return;
    }
    let tls = tls_settings.as_ref().map(|t| {
        let acceptor = tokio_rustls::TlsAcceptor::from(t.config.clone());
        (acceptor, t.handshake_timeout)
    });
    // The worker's own state, its upstream pools above all: made here, on its thread, lent to
    // each connection, dropped (closing the idle connections) when the worker ends.
    let owned = Rc::new(Worker::new());
    let tracker = TaskTracker::new();
    let mut conns = DrainList::default();
    let mut turn = 0usize;
    let mut backoff = Duration::from_millis(5);
    let mut prune = tokio::time::interval(Duration::from_secs(10));
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut pruned_generation = 0;
    loop {
        let (accepted, secure) = tokio::select! {
            _ = token.cancelled() => break,
            _ = prune.tick() => {
                pruned_generation = prune_pools(&shared, &owned, pruned_generation);
                continue;
            }
            _ = sweep.tick() => {
                conns.sweep();
                continue;
            }
            a = accept_any(&listeners, turn) => {
                turn = turn.wrapping_add(1);
                a
            }
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; connections drain.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let cap = shared.tables.load().settings.max_connections;
        let Some(guard) = OpenGuard::take(&open, cap) else {
            debug!(%peer, cap, "max_connections reached: connection closed");
            drop(stream);
            continue;
        };
        let accepted = Accepted {
            stream,
            peer,
            guard,
            signal: conns.track(),
        };
        let tls = tls.as_ref().filter(|_| secure);
        spawn_connection(&tracker, accepted, tls, shared.clone(), owned.clone());
    }
    drop(listeners);
    conns.raise_all();
    tracker.close();
    let grace = shared.tables.load().settings.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "shutdown grace period over; closing remaining connections"
        );
    }
}

/// The worker's listeners on its runtime (`true`: a TLS listener).
fn register(
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
) -> Vec<(TcpListener, bool)> {
    let mut listeners = Vec::with_capacity(plain.len() + tls.len());
    let all = plain
        .into_iter()
        .map(|l| (l, false))
        .chain(tls.into_iter().map(|l| (l, true)));
    for (l, secure) in all {
        // Accepted sockets inherit TCP_NODELAY from their listener (Linux copies it at
        // accept): set once here, it saves a setsockopt per connection.
        if let Err(e) = socket2::SockRef::from(&l).set_tcp_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY on a listener");
        }
        match TcpListener::from_std(l) {
            Ok(l) => listeners.push((l, secure)),
            Err(e) => warn!(error = %e, "cannot register listener"),
        }
    }
    listeners
}

/// Drops the worker's connections to endpoints a reload removed (they would otherwise stay
/// open in its pools forever), once per table generation; returns the generation seen.
fn prune_pools(shared: &Shared, owned: &Worker, pruned_generation: u64) -> u64 {
    let table = shared.tables.load_full();
    if table.generation != pruned_generation {
        let live: std::collections::HashSet<u64> = table
            .services
            .iter()
            .flat_map(|s| s.pools.iter())
            .flat_map(|p| p.endpoints.iter().map(|e| e.id))
            .collect();
        owned.pools.retain_endpoints(|id| live.contains(&id));
    }
    table.generation
}

/// A client connection just accepted, with its place under the cap and its drain signal.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    guard: OpenGuard,
    signal: Arc<DrainSignal>,
}

/// Serves `conn` on a task of the worker (`tls`: the acceptor and handshake timeout of a TLS
/// listener's connection).
fn spawn_connection(
    tracker: &TaskTracker,
    conn: Accepted,
    tls: Option<&(tokio_rustls::TlsAcceptor, Duration)>,
    shared: Arc<Shared>,
    owned: Rc<Worker>,
) {
    let Accepted {
        stream,
        peer,
        guard,
        signal,
    } = conn;
    match tls {
        Some((acceptor, handshake_timeout)) => {
            let (acceptor, handshake_timeout) = (acceptor.clone(), *handshake_timeout);
            tracker.spawn_local(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn = ClientConn::new(peer, true, &shared, signal, guard);
                        let io = counted_io(tls, &conn.info);
                        let service = ProxyService::new(shared, owned, conn.info.clone());
                        serve_auto(io, conn, service).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
        None => {
            let conn = ClientConn::new(peer, false, &shared, signal, guard);
            let io = counted_io(stream, &conn.info);
            let service = ProxyService::new(shared, owned, conn.info.clone());
            tracker.spawn_local(serve_plain(io, conn, service));
        }
    }
}

/// Each connection's drain signal, to start its graceful close at shutdown. A closed
/// connection's entry still holds its signal's allocation (a `Weak` keeps it), so the list
/// is swept every second: after a burst of connections closes, those small blocks would
/// otherwise sit among the freed ones and keep the allocator from giving pages back.
#[derive(Default)]
struct DrainList {
    conns: Vec<std::sync::Weak<DrainSignal>>,
    /// Entries alive at the last sweep.
    live_hint: usize,
}

impl DrainList {
    /// A signal for a new connection, kept in the list.
    fn track(&mut self) -> Arc<DrainSignal> {
        let signal = Arc::new(DrainSignal::default());
        if self.conns.len() >= 64 && self.conns.len() >= 2 * self.live_hint {
            self.conns.retain(|w| w.strong_count() > 0);
            self.live_hint = self.conns.len();
        }
        self.conns.push(Arc::downgrade(&signal));
        signal
    }

    fn sweep(&mut self) {
        let conns = &mut self.conns;
        if !conns.is_empty() {
            conns.retain(|w| w.strong_count() > 0);
            self.live_hint = conns.len();
            if conns.capacity() > 64 && conns.len() < conns.capacity() / 4 {
                conns.shrink_to(conns.len() * 2);
            }
        }
    }

    /// Starts the graceful close of every connection still open.
    fn raise_all(&self) {
        for signal in self.conns.iter().filter_map(std::sync::Weak::upgrade) {
            signal.raise();
        }
    }
}

/// Tells one connection to close gracefully. Polled on every wake of a busy connection, so
/// it costs one atomic load there: the waker is stored once, not on every poll.
#[derive(Default)]
pub(crate) struct DrainSignal {
    raised: std::sync::atomic::AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl DrainSignal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// A connection's view of its drain signal: the waker it stored there is kept, and a
/// connection task keeps the same waker for its whole life, so the (cloning) registration
/// happens once, not on every request.
pub(crate) struct DrainWatch {
    signal: Arc<DrainSignal>,
    registered: Option<Waker>,
}

impl DrainWatch {
    fn new(signal: Arc<DrainSignal>) -> Self {
        DrainWatch {
            signal,
            registered: None,
        }
    }

    fn poll_raised(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_raised() {
            return Poll::Ready(());
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.signal.waker.register(cx.waker());
            self.registered = Some(cx.waker().clone());
            if self.signal.is_raised() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// What a client connection carries from accept to close, whichever protocol it speaks.
struct ClientConn {
    info: Arc<ConnInfo>,
    watchdog: Watchdog,
    drain: DrainWatch,
    max_header_bytes: usize,
    /// Its place under `max_connections`, given back when the connection ends.
    _open: OpenGuard,
}

impl ClientConn {
    fn new(
        peer: SocketAddr,
        https: bool,
        shared: &Shared,
        drain: Arc<DrainSignal>,
        open: OpenGuard,
    ) -> Self {
        let t = shared.tables.load();
        let s = &t.settings;
        let info = Arc::new(ConnInfo::new(peer, https));
        ClientConn {
            watchdog: Watchdog::new(info.clone(), s.header_read_timeout, s.idle_timeout),
            info,
            drain: DrainWatch::new(drain),
            max_header_bytes: s.max_header_bytes,
            _open: open,
        }
    }
}

/// Serves a plain-TCP client connection. One that speaks HTTP/1 waits for each request
/// holding only its socket, its service and its watchdog: hyper's connection state is made
/// when the request's first bytes arrive and dropped once it is answered, so an idle
/// keep-alive connection costs its task (this future: kept small, as it is what each idle
/// client costs) and little else. HTTP/2 (prior knowledge, the preface as first bytes) goes
/// to [`serve_auto`].
///
/// Not an `async fn`: an async block uses what it captured in place, where an `async fn`
/// would keep a second copy of each argument in its state.
#[allow(clippy::manual_async_fn)]
fn serve_plain(
    mut io: PlainIo,
    mut conn: ClientConn,
    mut service: ProxyService,
) -> impl Future<Output = ()> {
    async move {
        let mut draining = loop {
            let draining = match wait_for_bytes(&io.inner().inner, &mut conn).await {
                Ok(draining) => draining,
                Err(why) => return debug!(peer = %conn.info.peer, why, "client connection closed"),
            };
            match first_bytes(&io.inner().inner) {
                Ok(Speaks::Http1) => break draining,
                // Boxed: its state would make every connection's task that much bigger.
                Ok(Speaks::Http2OrUnsure) => {
                    return Box::pin(serve_auto(io, conn, service)).await;
                }
                Ok(Speaks::Gone) => return,
                // Readiness can be stale: nothing to read after all.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        };
        loop {
            // Boxed: the exchange's state, hyper's connection among it, is what an idle
            // connection must not hold.
            (io, service) = match Box::pin(exchange(io, service, &mut conn, draining)).await {
                Some(idle) => idle,
                None => return,
            };
            draining = match wait_for_bytes(&io.inner().inner, &mut conn).await {
                Ok(draining) => draining,
                Err(why) => return debug!(peer = %conn.info.peer, why, "client connection closed"),
            };
        }
    }
}

/// The client socket of a plain HTTP/1 connection.
type PlainIo = TokioIo<CountingIo<TcpStream>>;

/// One HTTP/1 exchange: a hyper connection that lives from a request's first bytes until
/// it is answered and the client is quiet again. Hands back the socket and the service
/// then; `None` when the connection ended (closed, upgraded, cut by the watchdog).
async fn exchange(
    io: PlainIo,
    service: ProxyService,
    conn: &mut ClientConn,
    draining: bool,
) -> Option<(PlainIo, ProxyService)> {
    let mut served = {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .writev(false)
            .max_buf_size(conn.max_header_bytes.max(8192))
            .header_read_timeout(None)
            // A client that closes its side while its request is with the upstream does not
            // cancel it: the answer is still read, so the upstream connection stays pooled
            // rather than being closed under a request (HAProxy does the same by default).
            .half_close(true)
            .keep_alive(!draining);
        UntilIdle(builder.serve_connection(io, service).with_upgrades())
    };
    conn.watchdog.serving();
    // A draining connection's last exchange already closes after its answer.
    let drain = (!draining).then_some(&mut conn.drain);
    let graceful = |c: Pin<&mut UntilIdle<_, _>>| Pin::new(&mut c.get_mut().0).graceful_shutdown();
    match drive(Pin::new(&mut served), graceful, &mut conn.watchdog, drain).await {
        Ok(true) => served.0.into_parts().map(|p| (p.io, p.service)),
        Ok(false) => None,
        Err(why) => {
            debug!(peer = %conn.info.peer, why, "client connection closed");
            None
        }
    }
}

/// What the first bytes of a plain connection say it speaks.
enum Speaks {
    Http1,
    /// The HTTP/2 preface, or a part of it too short to tell.
    Http2OrUnsure,
    /// Closed before a byte.
    Gone,
}

/// Looks at the first bytes without taking them, without waiting.
fn first_bytes(stream: &TcpStream) -> io::Result<Speaks> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut head = [0u8; 24];
    let n = stream.try_io(tokio::io::Interest::READABLE, || {
        rustix::net::recv(stream, &mut head[..], rustix::net::RecvFlags::PEEK)
            .map(|(n, _)| n)
            .map_err(io::Error::from)
    })?;
    Ok(match n {
        0 => Speaks::Gone,
        n if head[..n] == PREFACE[..n] => Speaks::Http2OrUnsure,
        _ => Speaks::Http1,
    })
}

/// Waits for the client's next bytes with nothing but the socket's registration: `Ok`
/// once they arrive (`true`: the connection is draining, so the request they start is its
/// last), `Err` with the reason when the connection is to close first (its watchdog's
/// timeouts; a drain that found it idle through the linger).
async fn wait_for_bytes(stream: &TcpStream, conn: &mut ClientConn) -> Result<bool, &'static str> {
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if stream.poll_read_ready(cx).is_ready() {
            return Poll::Ready(Ok(linger.is_some()));
        }
        if linger.is_none() && conn.drain.poll_raised(cx).is_ready() {
            linger = Some(Box::pin(tokio::time::sleep(DRAIN_LINGER)));
        }
        if let Some(l) = &mut linger
            && l.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err("drained while idle"));
        }
        match conn.watchdog.poll_waiting(cx) {
            Some(why) => Poll::Ready(Err(why)),
            None => Poll::Pending,
        }
    })
    .await
}

/// One HTTP/1 exchange: `Ok(true)` when the client is quiet again with nothing under way,
/// `Ok(false)` when the connection ended (closed, or upgraded).
struct UntilIdle<I, S>(hyper::server::conn::http1::UpgradeableConnection<I, S>)
where
    S: hyper::service::HttpService<hyper::body::Incoming>;

impl<I, S> Future for UntilIdle<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::proxy::ProxyBody>
        + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    type Output = hyper::Result<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_until_idle(cx)
    }
}

/// Serves a connection with hyper's HTTP/1 + HTTP/2 server for its whole life: TLS
/// connections, and plain ones that start with the HTTP/2 preface.
async fn serve_auto<IO>(io: TokioIo<CountingIo<IO>>, mut conn: ClientConn, service: ProxyService)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.info.peer;
    let max_streams = service.table().settings.max_concurrent_streams;
    let mut builder = builder_on(LocalExec);
    builder
        .http1()
        .writev(false)
        .half_close(true)
        .max_buf_size(conn.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(conn.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(max_streams)
        // CVE-2023-44487 ("rapid reset"): a client that opens and resets streams in a burst
        // is cut off once this many resets are pending, instead of costing work per stream.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256));
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    conn.watchdog.serving();
    let ended = drive(
        served,
        |c| c.graceful_shutdown(),
        &mut conn.watchdog,
        Some(&mut conn.drain),
    )
    .await;
    if let Err(why) = ended {
        debug!(%peer, why, "client connection closed");
    }
}

/// The client socket wrapped for [`drive`]'s watchdog, which reads the bytes it counts.
pub(crate) fn counted_io<IO>(inner: IO, conn: &Arc<ConnInfo>) -> TokioIo<CountingIo<IO>> {
    TokioIo::new(CountingIo {
        inner,
        conn: conn.clone(),
    })
}

/// An HTTP/1 + HTTP/2 server builder for a connection run by [`drive`]. Header and idle
/// timeouts are the watchdog's: hyper's own header timer also runs while a keep-alive
/// connection waits, which would cap idle at the header timeout.
pub(crate) fn http_builder() -> auto::Builder<TokioExecutor> {
    builder_on(TokioExecutor::new())
}

/// [`http_builder`] with the executor of HTTP/2 stream tasks.
fn builder_on<E>(executor: E) -> auto::Builder<E> {
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
}

/// Runs the HTTP/2 stream tasks of a proxied connection on its worker's `LocalSet`: they
/// call the proxy service, which holds the worker's `Rc`, so they stay on its thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Runs a client connection (or one exchange of it) to its end, closing it when the watchdog
/// says so (a stalled request head, too long idle) and shutting it down gracefully when the
/// drain is raised. `Err` says why it ended early: the watchdog's reason or the protocol's
/// error. Shared by the proxy and the admin listeners, so both are protected alike.
pub(crate) async fn drive<F, T, E>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    watchdog: &mut Watchdog,
    mut drain: Option<&mut DrainWatch>,
) -> Result<T, String>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut drain_state = DrainState::Serving;
    // The connection first: it is what wakes this task on nearly every poll. The drain flag
    // and the watchdog's tick are checked after it, without a select's random order.
    std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|e| e.to_string()));
        }
        if matches!(drain_state, DrainState::Serving)
            && let Some(drain) = drain.as_mut()
            && drain.poll_raised(cx).is_ready()
        {
            drain_state = DrainState::Lingering(Box::pin(tokio::time::sleep(DRAIN_LINGER)));
        }
        if let DrainState::Lingering(linger) = &mut drain_state
            && (busy(&watchdog.conn) || linger.as_mut().poll(cx).is_ready())
        {
            // With a request under way, HTTP/1 answers it with `Connection: close` and
            // HTTP/2 sends GOAWAY; an idle connection closes now.
            graceful(conn.as_mut());
            drain_state = DrainState::Closing;
            // Polled again at once: an idle connection closes now.
            cx.waker().wake_by_ref();
        }
        match watchdog.poll_serving(cx) {
            Some(why) => Poll::Ready(Err(why.to_string())),
            None => Poll::Pending,
        }
    })
    .await
}

/// How long an idle HTTP/1 connection stays open once draining, waiting for its client's
/// next request (answered with `Connection: close`). Closed at once, an idle keep-alive
/// connection whose client has just sent a request, or a connection just accepted whose
/// request has not been read yet, would fail that request (the client sees the connection
/// close before an answer, and may not retry a request it has sent); a takeover's successor
/// serves the client's next connection.
const DRAIN_LINGER: Duration = Duration::from_millis(1000);

/// Where a connection is in a drain.
#[derive(Debug)]
enum DrainState {
    Serving,
    /// Waiting for a request to close after, or for the linger to end.
    Lingering(Pin<Box<tokio::time::Sleep>>),
    /// Told to close gracefully.
    Closing,
}

/// A request is under way (or its first bytes arrived), or the connection speaks HTTP/2,
/// where a graceful close (GOAWAY) tells the client which requests were taken: closing
/// gracefully loses nothing.
fn busy(info: &ConnInfo) -> bool {
    let a = &info.activity;
    a.is_h2()
        || a.in_flight() > 0
        || a.bytes_read.load(Ordering::Relaxed) > a.bytes_at_finish.load(Ordering::Relaxed)
}

/// Closes a connection that sent nothing since accept, or part of a request head, for
/// longer than the header timeout (slowloris), or that sat idle between requests for longer
/// than the idle timeout. While a request may be under way it checks on a coarse tick, so a
/// close comes up to a quarter-timeout late; a connection waiting for its next request is
/// woken only when its timeout is due, so thousands of idle clients cost no work in between.
pub(crate) struct Watchdog {
    conn: Arc<ConnInfo>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When to check next: a tick away while serving, the due timeout while waiting.
    timer: Pin<Box<tokio::time::Sleep>>,
    accepted: Instant,
    last_started: u64,
    quiet_since: Instant,
    partial_since: Option<Instant>,
    last_check: Instant,
    /// The timer is set for a waiting connection's timeout (far off), not a tick away.
    armed_for_wait: bool,
}

impl Watchdog {
    pub(crate) fn new(
        conn: Arc<ConnInfo>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let tick = Self::tick_of(header_timeout, idle_timeout);
        Watchdog {
            conn,
            header_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + tick)),
            accepted: now,
            last_started: 0,
            quiet_since: now,
            partial_since: None,
            last_check: now,
            armed_for_wait: false,
        }
    }

    /// How often a connection that may be serving is checked.
    fn tick_of(header_timeout: Duration, idle_timeout: Duration) -> Duration {
        (header_timeout.min(idle_timeout) / 4).max(Duration::from_millis(10))
    }

    fn tick(&self) -> Duration {
        Self::tick_of(self.header_timeout, self.idle_timeout)
    }

    /// A request's bytes are arriving: the next check is at most a tick away (a head that
    /// stalls is caught within the header timeout), not at the idle deadline. Only a wait
    /// that outlasted a tick moved the timer away; after a shorter one (the common case
    /// under load) there is nothing to do, not even a clock read.
    fn serving(&mut self) {
        if !self.armed_for_wait {
            return;
        }
        self.armed_for_wait = false;
        let now = Instant::now();
        // Nothing was pending while the connection waited: a head that stalls from here
        // started after now.
        self.last_check = now;
        let soon = now + self.tick();
        self.timer.as_mut().reset(soon);
    }

    /// While a request may be under way: checked every tick. `Some`: close, and why.
    fn poll_serving(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(why) = self.check(now) {
                return Some(why);
            }
            let next = now + self.tick();
            self.timer.as_mut().reset(next);
        }
        None
    }

    /// While waiting for the next request: woken when the timeout that applies is due.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(why) = self.check(now) {
                return Some(why);
            }
            let due = if self.conn.activity.bytes_read.load(Ordering::Relaxed) == 0 {
                self.accepted + self.header_timeout
            } else {
                self.quiet_since + self.idle_timeout
            };
            self.timer
                .as_mut()
                .reset(due.max(now + Duration::from_millis(10)));
            self.armed_for_wait = true;
        }
        None
    }

    fn check(&mut self, now: Instant) -> Option<&'static str> {
        let a = &self.conn.activity;
        let started = a.started.load(Ordering::Relaxed);
        let previous_check = std::mem::replace(&mut self.last_check, now);
        if a.in_flight() > 0 || started != self.last_started {
            self.last_started = started;
            self.quiet_since = now;
            self.partial_since = None;
            return None;
        }
        let read = a.bytes_read.load(Ordering::Relaxed);
        if read == 0 {
            // A new connection owes its first request head from accept: left to the idle
            // timeout, a crowd of connections that never speak would hold places for a minute.
            if now.duration_since(self.accepted) >= self.header_timeout {
                return Some("nothing received within header_read_timeout");
            }
            return None;
        }
        let unanswered = read > a.bytes_at_finish.load(Ordering::Relaxed);
        if unanswered && !a.is_h2() {
            // Bytes of a head that never completed; they arrived after the previous check.
            let since = *self.partial_since.get_or_insert(previous_check);
            if now.duration_since(since) >= self.header_timeout {
                return Some("request head not received within header_read_timeout");
            }
            return None;
        }
        if now.duration_since(self.quiet_since) >= self.idle_timeout {
            return Some("idle_timeout");
        }
        None
    }
}

/// The client socket, counting bytes read for the watchdog.
pub(crate) struct CountingIo<IO> {
    inner: IO,
    conn: Arc<ConnInfo>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountingIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let activity = &this.conn.activity;
            if activity.bytes_read.load(Ordering::Relaxed) == 0 {
                activity.note_preface(&buf.filled()[before..]);
            }
            activity.add_read(n);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountingIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
