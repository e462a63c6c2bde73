//! TLS termination (issue "TLS and protocols"): SNI, ALPN, certificate reload, edge limits.
//! The tests make their own CA and certificates with rcgen.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use support::pki::Pki;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    ca: &Pki,
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<Tls, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    connector.connect(name, tcp).await
}

fn peer_cert(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

fn tls_config(dir: &Path, a: &Upstream, b: &Upstream, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n\
         [server.tls]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"300ms\"\n\
         certs = [ {{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\" }} ]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\npersist = false\n\
         [[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.svc.pools.stable]\nendpoints = [\"{}\"]\n[services.svc.pools.canary]\nendpoints = [\"{}\"]\n",
        a.addr,
        b.addr,
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_h2_and_http1_over_tls() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new();
    let a_der = ca.write_leaf(certs.path(), "a", &["a.example.test"]);
    let b_der = ca.write_leaf(certs.path(), "b", &["b.example.test", "*.b.example.test"]);
    let sy = Switchyard::start(&tls_config(certs.path(), &a, &b, ""));
    let tls_addr = sy.tls.expect("TLS listener");

    // The server's suite order wins: a client listing AES-256-GCM-SHA384 first (rustls and
    // OpenSSL do) gets a SHA-256 suite, whose key schedule runs on the CPU's SHA extensions.
    let tls = handshake(&ca, tls_addr, "a.example.test", &[])
        .await
        .expect("tls");
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );

    // Each name gets its own certificate; unknown names get the first (default).
    assert_eq!(
        peer_cert(
            &handshake(&ca, tls_addr, "a.example.test", &[])
                .await
                .expect("tls")
        ),
        a_der
    );
    assert_eq!(
        peer_cert(
            &handshake(&ca, tls_addr, "b.example.test", &[])
                .await
                .expect("tls")
        ),
        b_der
    );
    assert_eq!(
        peer_cert(
            &handshake(&ca, tls_addr, "x.b.example.test", &[])
                .await
                .expect("tls")
        ),
        b_der
    );
    let other = handshake(&ca, tls_addr, "other.example.test", &[]).await;
    assert!(
        other.is_err(),
        "the default certificate does not cover other names: client refuses"
    );

    // ALPN h2: an HTTP/2 request over TLS, marked https upstream.
    let tls = handshake(&ca, tls_addr, "a.example.test", &[b"h2", b"http/1.1"])
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("https://a.example.test/headers")
        .body(Empty::new())
        .expect("req");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("host: a.example.test"), "{body}");

    // ALPN http/1.1.
    let tls = handshake(&ca, tls_addr, "b.example.test", &[b"http/1.1"])
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .expect("h1");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "b.example.test")
        .body(Empty::new())
        .expect("req");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-switchyard-pool")
            .map(|v| v.as_bytes()),
        Some(&b"stable"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_and_a_broken_one_is_ignored() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new();
    let first = ca.write_leaf(certs.path(), "a", &["a.example.test"]);
    ca.write_leaf(certs.path(), "b", &["b.example.test"]);
    let sy = Switchyard::start(&tls_config(certs.path(), &a, &b, ""));
    let tls_addr = sy.tls.expect("TLS listener");
    assert_eq!(
        peer_cert(
            &handshake(&ca, tls_addr, "a.example.test", &[])
                .await
                .expect("tls")
        ),
        first
    );

    // Renewal: new files written in place (as certbot's deploy hook would copy them).
    let renewed_dir = tempfile::tempdir().expect("tempdir");
    let renewed = ca.write_leaf(renewed_dir.path(), "a", &["a.example.test"]);
    std::fs::copy(renewed_dir.path().join("a.key"), certs.path().join("a.key")).expect("copy key");
    std::fs::copy(renewed_dir.path().join("a.pem"), certs.path().join("a.pem")).expect("copy cert");
    // The files are polled every 500 ms; the deadline leaves room for a loaded CI machine.
    wait_for(
        Duration::from_secs(15),
        "the renewed certificate",
        || async {
            handshake(&ca, tls_addr, "a.example.test", &[])
                .await
                .map(|t| peer_cert(&t))
                .ok()
                == Some(renewed.clone())
        },
    )
    .await;

    // A broken replacement: the working certificate stays.
    std::fs::write(
        certs.path().join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        let t = handshake(&ca, tls_addr, "a.example.test", &[])
            .await
            .expect("handshakes keep working");
        assert_eq!(peer_cert(&t), renewed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_handshake_timeout() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new();
    ca.write_leaf(certs.path(), "a", &["a.example.test"]);
    ca.write_leaf(certs.path(), "b", &["b.example.test"]);
    let sy = Switchyard::start(&tls_config(certs.path(), &a, &b, "max_connections = 4"));
    let tls_addr = sy.tls.expect("TLS listener");

    // A client that never starts its handshake is closed after handshake_timeout.
    let mut idle = TcpStream::connect(tls_addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, idle.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );

    // Four open connections fill the cap; a fifth is closed at once; freeing one lets a new one in.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(sy.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0, "served while under the cap");
        open.push(s);
    }
    let mut fifth = TcpStream::connect(sy.addr)
        .await
        .expect("the kernel accepts");
    let _ = fifth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(T, fifth.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the cap: closed without an answer");
    drop(open.pop());
    wait_for(T, "room for a new connection", || async {
        let mut s = TcpStream::connect(sy.addr).await.expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(T, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
    })
    .await;
}

#[test]
fn check_names_a_broken_certificate_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Pki::new();
    ca.write_leaf(dir.path(), "a", &["a.example.test"]);
    ca.write_leaf(dir.path(), "b", &["b.example.test"]);
    // a's certificate with b's key: a mismatch.
    std::fs::copy(dir.path().join("b.key"), dir.path().join("a.key")).expect("copy");
    let toml = "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [ { cert = \"a.pem\", key = \"a.key\" }, { cert = \"missing.pem\", key = \"b.key\" } ]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nservice = \"s\"\n[services.s]\nstrategy = \"canary\"\nweights = { p = 1 }\n[services.s.pools.p]\nendpoints = [\"127.0.0.1:1\"]\n";
    let path = write_config(dir.path(), toml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("server.tls.certs[0]")
            && err.contains("a.key")
            && err.contains("does not fit"),
        "{err}"
    );
    assert!(
        err.contains("server.tls.certs[1]") && err.contains("missing.pem"),
        "{err}"
    );
}
