//! Upstream protocols (issue "Upstream protocols"): h2c and h2 pools, gRPC-shaped calls with
//! trailers and streaming both ways, and HTTP/1.1 or HTTP/2 over TLS verified against a
//! private CA.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use support::pki::Pki;
use support::*;

// === An HTTP/2 (and, over TLS, HTTP/1.1) upstream ===

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    uri: String,
    headers: HeaderMap,
}

#[derive(Default)]
// A test upstream's request log: short critical sections, never held across an await.
#[allow(clippy::disallowed_types)]
struct UpstreamLog {
    connections: AtomicUsize,
    tls_failures: AtomicUsize,
    requests: std::sync::Mutex<Vec<Seen>>,
}

/// A real server on 127.0.0.1:0: HTTP/2 prior knowledge only (h2c), or TLS with ALPN
/// `h2` and `http/1.1`.
///
/// Paths: `/grpc.Echo/Unary` (answers the request's message, then trailers),
/// `/grpc.Echo/Stream` (echoes each data frame as it comes, then trailers), `/trailers`
/// (a body and an announced `x-checksum` trailer); anything else answers
/// `<version> <uri>`.
struct ProtoUpstream {
    addr: SocketAddr,
    log: Arc<UpstreamLog>,
    /// Stops the listener and closes every connection (dropping the upstream does too).
    stop: CancellationToken,
}

impl Drop for ProtoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ProtoUpstream {
    async fn h2c() -> ProtoUpstream {
        Self::start(None).await
    }

    async fn tls(pki: &Pki) -> ProtoUpstream {
        Self::start(Some(pki.acceptor(&["localhost", "127.0.0.1"]))).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> ProtoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, tls)
    }

    /// An h2c upstream on a given address (just freed by a stopped one).
    async fn h2c_at(addr: SocketAddr) -> ProtoUpstream {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener, None),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "rebind {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn serve(listener: TcpListener, tls: Option<TlsAcceptor>) -> ProtoUpstream {
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(UpstreamLog::default());
        let stop = CancellationToken::new();
        let (l, token) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                l.connections.fetch_add(1, Ordering::SeqCst);
                let (l, tls, token) = (l.clone(), tls.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = serve_connection(stream, l, tls) => {}
                    }
                });
            }
        });
        ProtoUpstream { addr, log, stop }
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    fn tls_failures(&self) -> usize {
        self.log.tls_failures.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.requests.lock().expect("log").clone()
    }
}

async fn serve_connection(stream: TcpStream, log: Arc<UpstreamLog>, tls: Option<TlsAcceptor>) {
    let l = log.clone();
    let svc = hyper::service::service_fn(move |req| {
        let log = l.clone();
        async move { Ok::<_, Infallible>(answer(&log, req).await) }
    });
    match tls {
        None => {
            // Strictly HTTP/2: an HTTP/1.1 request here would fail.
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
            Err(_) => {
                log.tls_failures.fetch_add(1, Ordering::SeqCst);
            }
        },
    }
}

/// A body fed frame by frame from a task (a streaming request or answer).
struct Chan(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for Chan {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// The feeding end of a [`Chan`]; dropping it ends the body.
struct ChanTx(tokio::sync::mpsc::Sender<Frame<Bytes>>);

impl ChanTx {
    async fn send_data(&mut self, data: Bytes) -> Result<(), ()> {
        self.0.send(Frame::data(data)).await.map_err(|_| ())
    }

    async fn send_trailers(&mut self, trailers: HeaderMap) -> Result<(), ()> {
        self.0.send(Frame::trailers(trailers)).await.map_err(|_| ())
    }
}

fn chan() -> (ChanTx, Chan) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (ChanTx(tx), Chan(rx))
}

async fn answer(log: &UpstreamLog, req: Request<Incoming>) -> Response<Chan> {
    log.requests.lock().expect("log").push(Seen {
        version: req.version(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let (mut tx, body) = chan();
    let mut resp = Response::new(body);
    match req.uri().path() {
        "/grpc.Echo/Unary" => {
            grpc_headers(&mut resp);
            let message = req.into_body().collect().await.map(|c| c.to_bytes());
            tokio::spawn(async move {
                let _ = tx.send_data(message.unwrap_or_default()).await;
                let _ = tx.send_trailers(grpc_ok()).await;
            });
        }
        "/grpc.Echo/Stream" => {
            grpc_headers(&mut resp);
            let mut body = req.into_body();
            tokio::spawn(async move {
                // Each message goes back the moment it arrives: no buffering anywhere.
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send_data(data).await.is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send_trailers(grpc_ok()).await;
            });
        }
        "/trailers" => {
            resp.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-checksum"));
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"hello")).await;
                let mut t = HeaderMap::new();
                t.insert("x-checksum", HeaderValue::from_static("abc123"));
                let _ = tx.send_trailers(t).await;
            });
        }
        _ => {
            let text = format!("{:?} {}", req.version(), req.uri());
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from(text)).await;
            });
        }
    }
    resp
}

fn grpc_headers<B>(resp: &mut Response<B>) {
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
}

fn grpc_ok() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t.insert("grpc-message", HeaderValue::from_static("ok"));
    t
}

/// A gRPC length-prefixed message: uncompressed flag, u32 big-endian length, payload.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

// === Config ===

/// A temp dir holding `ca.pem` and the config, and a switchyard started on it.
fn start_with_ca(pki: &Pki, toml: &str) -> Switchyard {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).expect("write ca");
    let path = write_config(dir.path(), toml);
    Switchyard::start_at(dir, path)
}

// === Clients ===

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// === h2c ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_pool_serves_http1_and_h2c_clients_over_one_connection_per_worker() {
    let up = ProtoUpstream::h2c().await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "protocol = \"h2c\""));

    // A cold burst on many client connections: each worker opens one upstream connection
    // and the others wait for it.
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let url = sy.url(&format!("/burst/{i}"));
            tokio::spawn(async move { get(&client(), &url, &[]).await })
        })
        .collect();
    for b in burst {
        let a = b.await.expect("burst request");
        assert_eq!(a.status, 200, "{a:?}");
    }

    // HTTP/1.1 client: the upstream sees HTTP/2, the Host as :authority, the path and query.
    let c = client();
    for _ in 0..20 {
        let a = get(&c, &sy.url("/hello?x=1"), &[("host", "app.test:8080")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, "HTTP/2.0 http://app.test:8080/hello?x=1");
        assert_eq!(a.header("x-switchyard-pool"), Some("stable"));
    }
    // h2c client.
    let h2 = h2c_client();
    for _ in 0..20 {
        let a = get(&h2, &sy.url("/h2?y=2"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, format!("HTTP/2.0 http://{}/h2?y=2", sy.addr));
    }

    let seen = up.requests();
    assert_eq!(seen.len(), 60);
    assert!(seen.iter().all(|s| s.version == Version::HTTP_2));
    let hello = seen
        .iter()
        .find(|s| s.uri.ends_with("/hello?x=1"))
        .expect("hello seen");
    // Host travels as :authority; connection-specific headers never reach an h2 upstream.
    assert!(hello.headers.get("host").is_none(), "{hello:?}");
    assert_eq!(hello.headers["x-forwarded-host"], "app.test:8080");
    assert_eq!(hello.headers["x-switchyard-pool"], "stable");
    // Two workers: at most one multiplexed connection each.
    assert!(
        (1..=2).contains(&up.connections()),
        "{} upstream connections for 60 requests",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_pool_reconnects_when_the_upstream_goes_away() {
    let up = ProtoUpstream::h2c().await;
    let addr = up.addr;
    let sy = Switchyard::start(&one_pool(&[addr], "", "protocol = \"h2c\""));
    let c = client();
    assert_eq!(get(&c, &sy.url("/a"), &[]).await.status, 200);
    // The upstream restarts on the same port: its connections are gone.
    drop(up);
    let up = ProtoUpstream::h2c_at(addr).await;
    wait_for(
        Duration::from_secs(5),
        "a request on a new connection",
        || {
            let (c, url) = (c.clone(), sy.url("/b"));
            async move { get(&c, &url, &[]).await.status == 200 }
        },
    )
    .await;
    assert!(up.connections() >= 1);
}

// === gRPC over h2c, end to end ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_over_h2c_gets_the_trailers() {
    let up = ProtoUpstream::h2c().await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "protocol = \"h2c\""));
    let mut sender = h2_connect::<Full<Bytes>>(sy.addr).await;
    let message = grpc_message(b"hello grpc");
    let req = Request::post("http://grpc.test/grpc.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .expect("request");
    let resp = within("the unary answer", sender.send_request(req))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = within("the body", resp.into_body().collect())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), message);

    let seen = up.requests();
    let call = seen.last().expect("upstream saw the call");
    assert_eq!(call.version, Version::HTTP_2);
    assert_eq!(call.uri, "http://grpc.test/grpc.Echo/Unary");
    assert_eq!(call.headers["te"], "trailers");
    assert_eq!(call.headers["content-type"], "application/grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidirectional_stream_echoes_each_message_before_the_next_is_sent() {
    let up = ProtoUpstream::h2c().await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "protocol = \"h2c\""));
    let mut sender = h2_connect::<Chan>(sy.addr).await;
    let (mut tx, body) = chan();
    let req = Request::post("http://grpc.test/grpc.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    // The answer's head comes before the client has sent anything.
    let resp = within("the stream's head", sender.send_request(req))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..3 {
        let message = grpc_message(format!("message {i}").as_bytes());
        tx.send_data(message.clone()).await.expect("send");
        // The echo of this message must come back while the request is still open.
        let mut echoed = Vec::new();
        while echoed.len() < message.len() {
            let frame = within(&format!("the echo of message {i}"), body.frame())
                .await
                .expect("a frame")
                .expect("no error");
            let mut data = frame.into_data().expect("data before trailers");
            echoed.extend_from_slice(&data.copy_to_bytes(data.remaining()));
        }
        assert_eq!(echoed, message);
        // A pause, as a real client would think between messages.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    let rest = within("the stream's end", body.collect())
        .await
        .expect("rest");
    let trailers = rest.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(rest.to_bytes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_gets_announced_trailers_from_an_h2c_upstream() {
    let up = ProtoUpstream::h2c().await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "protocol = \"h2c\""));
    let stream = TcpStream::connect(sy.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    // hyper sends HTTP/1.1 trailers when the client accepts them (TE) and the response
    // announces them (Trailer), on a chunked body.
    let req = Request::get("/trailers")
        .header("host", "app.test")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = within("the answer", sender.send_request(req))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["trailer"], "x-checksum");
    let collected = within("the body", resp.into_body().collect())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "hello");
}

// === TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pool_with_a_private_ca_speaks_http1() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    // An IP endpoint: the certificate is checked for the IP address.
    let sy = start_with_ca(
        &pki,
        &one_pool(&[up.addr], "", "tls = true\nca = \"ca.pem\""),
    );
    let c = client();
    for _ in 0..5 {
        let a = get(&c, &sy.url("/over-tls"), &[("host", "app.test")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, "HTTP/1.1 /over-tls");
    }
    assert!(up.requests().iter().all(|s| s.version == Version::HTTP_11));
    assert_eq!(up.requests()[0].headers["host"], "app.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pool_with_a_private_ca_speaks_http2_over_tls() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    // A name endpoint: the certificate is checked for `localhost`.
    let endpoint = format!("localhost:{}", up.addr.port());
    let sy = start_with_ca(
        &pki,
        &one_pool(&[&endpoint], "", "protocol = \"h2\"\nca = \"ca.pem\""),
    );
    let c = client();
    for _ in 0..5 {
        let a = get(&c, &sy.url("/over-h2?z=3"), &[("host", "app.test")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, "HTTP/2.0 https://app.test/over-h2?z=3");
    }
    // gRPC over h2 as well.
    let mut sender = h2_connect::<Full<Bytes>>(sy.addr).await;
    let req = Request::post("http://grpc.test/grpc.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_message(b"over tls")))
        .expect("request");
    let resp = within("the unary answer", sender.send_request(req))
        .await
        .expect("answer");
    let collected = within("the body", resp.into_body().collect())
        .await
        .expect("body");
    assert_eq!(
        collected.trailers().map(|t| t["grpc-status"].clone()),
        Some(HeaderValue::from_static("0"))
    );
    assert!(up.requests().iter().all(|s| s.version == Version::HTTP_2));
    assert!(up.connections() <= 2, "{}", up.connections());
}

async fn assert_connect_error(sy: &Switchyard, up: &ProtoUpstream) {
    let a = get(&client(), &sy.url("/"), &[]).await;
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.header("x-switchyard-error"), Some("upstream_connect"));
    assert!(up.requests().is_empty(), "no request may reach it");
    wait_until(
        Duration::from_secs(5),
        "the upstream to see a failed handshake",
        || up.tls_failures() >= 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pool_without_ca_uses_webpki_roots_and_refuses_the_private_ca() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "tls = true"));
    assert_connect_error(&sy, &up).await;
    // The same over h2.
    let sy = Switchyard::start(&one_pool(&[up.addr], "", "protocol = \"h2\""));
    let a = get(&client(), &sy.url("/"), &[]).await;
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.header("x-switchyard-error"), Some("upstream_connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pool_with_a_wrong_sni_fails_verification() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    let sy = start_with_ca(
        &pki,
        &one_pool(
            &[up.addr],
            "",
            "protocol = \"h2\"\nca = \"ca.pem\"\nsni = \"wrong.example\"",
        ),
    );
    assert_connect_error(&sy, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pool_with_the_right_sni_is_verified_for_that_name() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    let sy = start_with_ca(
        &pki,
        &one_pool(
            &[up.addr],
            "",
            "tls = true\nca = \"ca.pem\"\nsni = \"localhost\"",
        ),
    );
    let a = get(&client(), &sy.url("/sni"), &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
}

// === A bad CA file ===

/// The pools' CA bundles are read when the config loads (building the routing table opens no
/// file): a missing or certificate-less bundle fails the load, naming the pool and the file.
#[test]
fn a_missing_ca_file_fails_the_config_load_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &one_pool(&["127.0.0.1:9"], "", "tls = true\nca = \"missing-ca.pem\""),
    );
    let err = switchyard::config::load(&path).expect_err("load fails");
    let msg = err.to_string();
    assert!(
        msg.contains("services.svc.pools.stable.ca")
            && msg.contains(&dir.path().join("missing-ca.pem").display().to_string()),
        "{msg}"
    );
    // A file that holds no certificate is refused too.
    std::fs::write(dir.path().join("missing-ca.pem"), "not a certificate\n").expect("write");
    let err = switchyard::config::load(&path).expect_err("load fails");
    assert!(
        err.to_string().contains("services.svc.pools.stable.ca"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_missing_ca_changes_nothing() {
    let up = Upstream::start("v1").await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", ""));
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    write_config(
        sy.dir.path(),
        &one_pool(&[up.addr], "", "tls = true\nca = \"missing-ca.pem\""),
    );
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("missing-ca.pem"),
        "{v}"
    );
    // Still plain HTTP/1.1 to the same upstream.
    for _ in 0..5 {
        let a = get(&c, &sy.url("/"), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "v1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_speak_the_pools_protocol() {
    let pki = Pki::new();
    let up = ProtoUpstream::tls(&pki).await;
    let endpoint = format!("localhost:{}", up.addr.port());
    let sy = start_with_ca(
        &pki,
        &one_pool(
            &[&endpoint],
            "",
            "protocol = \"h2\"\nca = \"ca.pem\"\n[services.svc.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\n",
        ),
    );
    let probed = || {
        up.requests()
            .iter()
            .any(|s| s.version == Version::HTTP_2 && s.uri.ends_with("/healthz"))
    };
    wait_until(
        Duration::from_secs(10),
        "an HTTP/2-over-TLS health probe",
        probed,
    )
    .await;
    // Several probes later the endpoint is still healthy (an HTTP/1.1 probe would fail).
    wait_until(Duration::from_secs(10), "more probes", || {
        up.requests()
            .iter()
            .filter(|s| s.uri.ends_with("/healthz"))
            .count()
            >= 3
    })
    .await;
    let v = service_state(&sy, "svc").await;
    assert_eq!(v["pools"]["stable"]["endpoints"][0]["healthy"], true, "{v}");
    assert_eq!(
        get(&client(), &sy.url("/x"), &[("host", "app.test")])
            .await
            .status,
        200
    );
}
