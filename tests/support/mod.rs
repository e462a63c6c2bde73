//! Real upstream servers, a real switchyard on ephemeral loopback ports, and polling helpers.
//! Compiled into every test binary, each of which uses only some of it.
#![allow(dead_code)]

pub mod paced;
pub mod pki;
pub mod proc;

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use switchyard::app::{Instance, Options};
use switchyard::config;

// === Upstream ===

/// A real HTTP server on 127.0.0.1:0 that names itself in every answer.
///
/// Paths: `/sleep/<ms>`, `/headers` (echoes request headers), `/big/<bytes>` (streams that
/// many bytes), `/upload` (counts the body), `/status/<code>`, `/ws` (upgrade + echo);
/// anything else answers the upstream's name.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    connections: AtomicUsize,
    in_handler: AtomicUsize,
    /// `/health` answers 503 while set.
    unhealthy: std::sync::atomic::AtomicBool,
    /// Every other path answers 502 while set.
    failing: std::sync::atomic::AtomicBool,
    health_checks: AtomicUsize,
    /// Every request but `/health` waits this long first.
    delay_ms: std::sync::atomic::AtomicU64,
    /// Each request but `/health` fails (500) with this chance, in parts per million.
    failure_ppm: std::sync::atomic::AtomicU64,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Serves on a given address again (to bring a stopped upstream back).
    pub async fn start_at(name: &'static str, addr: SocketAddr) -> Upstream {
        // The stopped instance's listener closes asynchronously: retry for a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(name, listener),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("rebind upstream {addr}: {e}"),
            }
        }
    }

    fn serve(name: &'static str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(UpstreamState::default());
        let (stop, mut stopped) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(name, st, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped.changed() => {
                            // Like an app on SIGTERM: finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                        }
                    }
                });
            }
        });
        Upstream {
            name,
            addr,
            state,
            stop,
        }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Makes `/health` answer 503 (false) or 200 (true).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Makes every request but `/health` answer 502.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes each request but `/health` fail with a 500 at random, with chance `ratio`.
    pub fn set_failure_ratio(&self, ratio: f64) {
        let ppm = (ratio.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.state.failure_ppm.store(ppm, Ordering::SeqCst);
    }

    /// Makes every request but `/health` wait `ms` before answering.
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// `/health` requests seen.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// Requests other than health checks.
    pub fn traffic(&self) -> usize {
        self.hits() - self.health_checks()
    }

    /// Requests currently inside a handler (e.g. sleeping).
    pub fn in_handler(&self) -> usize {
        self.state.in_handler.load(Ordering::SeqCst)
    }

    /// Stops listening and closes its connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    name: &'static str,
    st: Arc<UpstreamState>,
    mut req: Request<Incoming>,
) -> Response<UpBody> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    // The target as received, echoed back in `x-target` (the proxy's path rewriting).
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_string());
    if path == "/health" {
        st.health_checks.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full(name));
        if st.unhealthy.load(Ordering::SeqCst) {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return r;
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if st.failing.load(Ordering::SeqCst) {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        return r;
    }
    let ppm = st.failure_ppm.load(Ordering::SeqCst);
    if ppm > 0 && rand::random_range(0..1_000_000) < ppm {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut resp = if let Some((_, ms)) = path.split_once("/sleep/") {
        st.in_handler.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        st.in_handler.fetch_sub(1, Ordering::SeqCst);
        Response::new(full(name))
    } else if path == "/headers" {
        let mut out = String::new();
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Response::new(full(out))
    } else if let Some(n) = path.strip_prefix("/big/") {
        Response::new(RepeatBody::new(n.parse().unwrap_or(0)).boxed())
    } else if path == "/upload" {
        let mut total = 0usize;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => break,
            }
        }
        Response::new(full(total.to_string()))
    } else if let Some((_, code)) = path.split_once("/status/") {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().expect("value"));
        r.headers_mut()
            .insert("upgrade", "websocket".parse().expect("value"));
        return r;
    } else {
        Response::new(full(name))
    };
    let h = resp.headers_mut();
    h.insert("x-upstream", name.parse().expect("value"));
    if let Ok(v) = target.parse() {
        h.insert("x-target", v);
    }
    // Hop-by-hop headers the proxy must not pass to the client.
    h.insert("connection", "x-secret".parse().expect("value"));
    h.insert("x-secret", "hop".parse().expect("value"));
    resp
}

/// A body of `remaining` bytes, produced 64 KiB at a time (never held whole).
pub struct RepeatBody {
    remaining: usize,
    chunk: Bytes,
}

impl RepeatBody {
    pub fn new(total: usize) -> Self {
        RepeatBody {
            remaining: total,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

// === Switchyard ===

/// A real switchyard started in-process from TOML text written to a temp dir.
pub struct Switchyard {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when the config has `[server.tls]`.
    pub tls: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    instance: Option<Instance>,
}

impl Switchyard {
    /// Writes `toml` to a temp dir and starts switchyard on it.
    pub fn start(toml: &str) -> Switchyard {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), toml);
        Self::start_at(dir, path)
    }

    /// Starts from a config file already in `dir` (e.g. to restart on a persisted file).
    pub fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Switchyard {
        Self::start_with(dir, path, &Options::new(2))
    }

    /// Like [`Switchyard::start_at`], with explicit options (e.g. no file watcher).
    pub fn start_with(dir: tempfile::TempDir, path: PathBuf, options: &Options) -> Switchyard {
        let config = config::load(&path).unwrap_or_else(|e| panic!("config:\n{e}"));
        Self::from_config(dir, path, &config, options)
    }

    fn from_config(
        dir: tempfile::TempDir,
        path: PathBuf,
        config: &config::Config,
        options: &Options,
    ) -> Switchyard {
        Self::try_from_config(dir, path, config, options).expect("switchyard starts")
    }

    /// Like [`Switchyard::start`], but a failure to start (a fixed port taken meanwhile by
    /// another test) is returned, for a test that must name its ports to try again.
    #[allow(dead_code)]
    pub fn try_start(toml: &str) -> anyhow::Result<Switchyard> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), toml);
        let config = config::load(&path).unwrap_or_else(|e| panic!("config:\n{e}"));
        Self::try_from_config(dir, path, &config, &Options::new(2))
    }

    fn try_from_config(
        dir: tempfile::TempDir,
        path: PathBuf,
        config: &config::Config,
        options: &Options,
    ) -> anyhow::Result<Switchyard> {
        refuse_well_known_ports(config);
        let instance = Instance::start(config, options)?;
        Ok(Switchyard {
            addr: instance.addr,
            admin: instance.admin_addr,
            tls: instance.tls_addr,
            dir,
            path,
            instance: Some(instance),
        })
    }

    /// Like [`Switchyard::start_at`], with `env` answering for the process environment (a
    /// `password_env`), so that tests need not set process variables under running threads.
    pub fn start_at_with_env(
        dir: tempfile::TempDir,
        path: PathBuf,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Switchyard {
        let text = std::fs::read_to_string(&path).expect("read config");
        let config =
            config::parse_with_env(&text, &path, env).unwrap_or_else(|e| panic!("config:\n{e}"));
        Self::from_config(dir, path, &config, &Options::new(2))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Stops the instance and hands back its directory (to start again on the same file).
    pub async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        self.shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.path.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful shutdown, run on a blocking thread (it joins the worker threads).
    pub async fn shutdown(&mut self) {
        if let Some(i) = self.instance.take() {
            tokio::task::spawn_blocking(move || i.shutdown())
                .await
                .expect("join");
        }
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(i) = self.instance.take() {
            let token = i.shutdown_token();
            token.cancel();
            // Join off the async runtime so a dropping test does not block its executor.
            std::thread::spawn(move || i.shutdown());
        }
    }
}

/// The ports a `switchyard demo` or `run` on the shipped configs listens on: a test that took
/// one would fail while the quick start's demo runs (or take its place), so tests listen on
/// port 0 or on a port they found free.
const WELL_KNOWN_PORTS: [u16; 3] = [8080, 8443, 9901];

fn refuse_well_known_ports(config: &config::Config) {
    let mut listeners = vec![
        ("server.listen", config.server.listen),
        ("admin.listen", config.admin.listen),
    ];
    if let Some(tls) = &config.server.tls {
        listeners.push(("server.tls.listen", tls.listen));
    }
    for (key, addr) in listeners {
        assert!(
            !WELL_KNOWN_PORTS.contains(&addr.port()),
            "{key} = {addr}: a test listens on port 0 (or one found free), never on a default port"
        );
    }
}

/// Writes `toml` as `switchyard.toml` in `dir`; returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// An address on loopback that nothing listens on (the port was free a moment ago).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A config header with short timeouts for tests; append routes and services.
pub fn server_section() -> String {
    "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\npersist = false\n".to_string()
}

/// A canary service `svc` at `/` with pools stable → a, canary → b.
pub fn canary(a: &Upstream, b: &Upstream, stable: u32, canary: u32, extra: &str) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = {stable}, canary = {canary} }}\n{extra}\n[services.svc.pools.stable]\nendpoints = [\"{}\"]\n[services.svc.pools.canary]\nendpoints = [\"{}\"]\n",
        server_section(),
        a.addr,
        b.addr
    )
}

/// A canary service `svc` at `/` with one pool, `stable`, of `endpoints`; `service` goes into
/// `[services.svc]` (keys, or tables such as `[services.svc.health]`), `pool` into
/// `[services.svc.pools.stable]`.
pub fn one_pool(endpoints: &[impl Display], service: &str, pool: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{}\n[[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 100 }}\n{service}\n[services.svc.pools.stable]\nendpoints = [{}]\n{pool}\n",
        server_section(),
        list.join(", ")
    )
}

// === Admin ===

/// An admin call: (status, JSON body).
pub async fn admin(
    c: &HttpClient,
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = send(
        c,
        b.body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
    )
    .await;
    let json = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::String(r.body.clone()));
    (r.status.as_u16(), json)
}

/// `GET /admin/services/<name>`: the service's state as JSON.
pub async fn service_state(sy: &Switchyard, name: &str) -> serde_json::Value {
    let url = sy.admin_url(&format!("/admin/services/{name}"));
    admin(&client(), "GET", &url, "", &[]).await.1
}

/// A blue-green service `web` at `/` with pools blue → `blue` (active) and green → `green`;
/// `extra` goes into `[services.web]`.
pub fn blue_green(blue: &Upstream, green: &Upstream, extra: &str) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"web\"\n[services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\n{extra}\n[services.web.pools.blue]\nendpoints = [\"{}\"]\n[services.web.pools.green]\nendpoints = [\"{}\"]\n",
        server_section(),
        blue.addr,
        green.addr
    )
}

// === Client ===

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A finished exchange.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn get(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).expect("request")).await
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answer within 10 s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// An HTTP/2 prior-knowledge connection to `addr` (the way gRPC clients talk h2c).
pub async fn h2_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Writes raw bytes on a new connection and reads the answer until close or `limit`.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// === Waiting ===

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] for an async condition.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls switchyard's `/metrics` until it has `line` (a whole line: name, labels and value).
#[allow(dead_code)]
pub async fn wait_for_metric(sy: &Switchyard, line: &str, what: &str) {
    let c = client();
    let line = format!("{line}\n");
    wait_for(Duration::from_secs(10), what, || async {
        get(&c, &sy.admin_url("/metrics"), &[])
            .await
            .body
            .contains(&line)
    })
    .await;
}

// === Load ===

/// One request of a background load.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: tokio::time::Instant,
    pub finished: tokio::time::Instant,
    /// 0 when the request failed at the transport level.
    pub status: u16,
    pub body: String,
}

/// Status and body of one exchange, `(0, "")` when it failed or took over 10 s (a load
/// counts those as failures rather than stopping).
pub async fn fetch(c: &HttpClient, req: Request<Full<Bytes>>) -> (u16, String) {
    match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        _ => (0, String::new()),
    }
}

/// A GET every few milliseconds until dropped: steady traffic without taking a core.
pub struct Trickle(Arc<std::sync::atomic::AtomicBool>);

impl Trickle {
    pub fn start(url: String) -> Trickle {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        tokio::spawn(async move {
            let c = client();
            while !s.load(Ordering::Relaxed) {
                let _ = get(&c, &url, &[]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Trickle(stop)
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `conns` tasks, each on its own keep-alive connection, sending GETs until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(url: String, conns: usize, headers: Vec<(String, String)>) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..conns)
            .map(|_| {
                let (url, stop, headers) = (url.clone(), stop.clone(), headers.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut out = Vec::new();
                    // Bounded: a load never outlives its test by much.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                        let started = tokio::time::Instant::now();
                        let mut b = Request::get(&url);
                        for (k, v) in &headers {
                            b = b.header(k.as_str(), v.as_str());
                        }
                        let req = b.body(Full::new(Bytes::new())).expect("request");
                        let (status, body) = fetch(&c, req).await;
                        let sample = Sample {
                            started,
                            finished: tokio::time::Instant::now(),
                            status,
                            body,
                        };
                        out.push(sample);
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the load and returns every sample.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load task"));
        }
        all
    }
}

/// Samples that did not answer 200.
pub fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.status != 200).collect()
}

// === A switchyard process ===

/// `switchyard run` as a child process (for what must be measured apart from the test
/// process, like its memory, or what only a real process does, like signals).
pub struct ProxyProcess {
    pub addr: SocketAddr,
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    /// The config file it runs on (rewrite it to reload).
    pub path: PathBuf,
}

/// How [`ProxyProcess::spawn_with`] runs switchyard.
pub struct ProcessOptions {
    pub workers: usize,
    /// `RUST_LOG`: it must let `switchyard::server`'s `listening` line through.
    pub log: &'static str,
    /// Copies the process's WARN and ERROR lines to the test's stderr.
    pub echo_warnings: bool,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            workers: 1,
            log: "info,switchyard::access=off",
            echo_warnings: false,
        }
    }
}

impl ProxyProcess {
    pub fn spawn(toml: &str) -> ProxyProcess {
        Self::spawn_with(toml, &ProcessOptions::default())
    }

    pub fn spawn_with(toml: &str, options: &ProcessOptions) -> ProxyProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), toml);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--workers", &options.workers.to_string(), "--config"])
            .arg(&path)
            .env("RUST_LOG", options.log)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("switchyard runs");
        let stderr = child.stderr.take().expect("stderr");
        let echo = options.echo_warnings;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading so the child never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                if echo && (line.contains("WARN") || line.contains("ERROR")) {
                    eprintln!("{line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("switchyard says where it listens")
            .parse()
            .expect("address");
        ProxyProcess {
            addr,
            child,
            dir,
            path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc::status_kib(self.pid(), "VmHWM")
    }

    /// Running, not a zombie (`try_wait` would need `&mut` and reap it).
    pub fn alive(&self) -> bool {
        !matches!(proc::state(self.pid()), None | Some('Z' | 'X'))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
