//! Hostile clients: connection floods, request smuggling, slowloris, slow readers, HTTP/2
//! rapid reset, oversized heads. Every test runs against a real switchyard on loopback and
//! checks what the upstream saw, so "rejected" means "never reached the app".

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);

// === Helpers ===

/// The soft `RLIMIT_NOFILE` of this process, raised towards `want` (with `prlimit`, within
/// the hard limit) when it is lower.
fn nofile_soft_limit(want: u64) -> u64 {
    let Some((soft, hard)) = proc::fd_limit() else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    proc::fd_limit().map_or(soft, |(soft, _)| soft)
}

/// What a raw HTTP/1.1 exchange produced.
struct Exchange {
    text: String,
    /// The proxy closed (or reset) the connection within the limit.
    closed: bool,
}

impl Exchange {
    fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
    }

    /// Responses in the byte stream (one per answered request).
    fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }
}

/// Writes `bytes` on a new connection and reads until the proxy closes it or `limit` passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Exchange {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it read everything: that is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    Exchange {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// The canary config with extra `[server]` settings.
fn with_server(a: &Upstream, b: &Upstream, server: &str) -> String {
    canary(a, b, 100, 0, "").replace("[server]\n", &format!("[server]\n{server}\n"))
}

// === 1. Connection flood ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_capped_and_released() {
    const FLOOD: usize = 1000;
    const CAP: usize = 200;
    let soft = nofile_soft_limit(2500);
    if soft < 2500 {
        eprintln!("skipped: RLIMIT_NOFILE soft limit {soft} < 2500 and cannot be raised");
        return;
    }
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = ProxyProcess::spawn(&with_server(&a, &b, &format!("max_connections = {CAP}")));
    let pid = sy.pid();
    let c = client();
    let url = format!("http://{}/", sy.addr);
    // Warm up (the upstream connection pool, lazy allocations), then let the client go.
    assert_eq!(get(&c, &url, &[]).await.body, "v1");
    drop(c);
    let addr = sy.addr;
    let mut baseline = 0;
    wait_until(T, "the proxy's descriptors to settle", || {
        let before = baseline;
        baseline = proc::open_fds(pid);
        baseline > 0 && baseline == before
    })
    .await;

    // Plain sockets, read without blocking: each read is one syscall that tells open from closed.
    let conns = tokio::task::spawn_blocking(move || {
        (0..FLOOD)
            .map(|_| {
                let s = std::net::TcpStream::connect(addr).expect("the kernel accepts");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let flooded = Instant::now();
    let open = |conns: &[std::net::TcpStream]| {
        conns
            .iter()
            .filter(|s| {
                let mut byte = [0u8; 1];
                matches!((&**s).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
            })
            .count()
    };
    wait_until(
        Duration::from_secs(5),
        "connections past the cap to be closed",
        || open(&conns) <= CAP,
    )
    .await;
    let took = flooded.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "closing {} connections over the cap took {took:?}",
        FLOOD - CAP
    );
    // And the cap is exact: the ones kept are not dropped later either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open(&conns), CAP, "exactly the cap stays open");
    let held = proc::open_fds(pid);
    eprintln!(
        "flood: {} closed over the cap within {took:?}; proxy fds {baseline} -> {held}",
        FLOOD - CAP
    );
    assert!(
        held <= baseline + CAP + 8,
        "the proxy holds {held} descriptors with {CAP} clients (baseline {baseline})"
    );

    // The ones kept are really served: one request on each, one after another.
    let (served, conns) = tokio::task::spawn_blocking(move || {
        let mut served = 0;
        for s in &conns {
            let mut probe = [0u8; 1];
            if !matches!((&*s).read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock) {
                continue;
            }
            s.set_nonblocking(false).expect("blocking");
            s.set_read_timeout(Some(T)).expect("timeout");
            (&*s)
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"v1") {
                let n = (&*s).read(&mut buf).expect("answer within 10 s");
                assert!(n > 0, "a kept connection was closed before its answer");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"));
            served += 1;
        }
        (served, conns)
    })
    .await
    .expect("join");
    assert_eq!(served, CAP, "every kept connection is served");

    // Let every connection go: the proxy gives its descriptors back, and serves again.
    drop(conns);
    wait_until(
        T,
        "the proxy's descriptors to return to the baseline",
        || proc::open_fds(pid) <= baseline + 4,
    )
    .await;
    let c = client();
    let r = get(&c, &url, &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
}

// === 2. Request smuggling ===

/// What a smuggling attempt must come to. In every case the proxy answers once and closes
/// the connection, and the request smuggled behind the first is never answered or forwarded.
#[derive(Clone, Copy, Debug)]
enum Smuggle {
    /// A 400 before anything is forwarded.
    Refused,
    /// A 400 before anything is forwarded, whose answer holds this text.
    RefusedWith(&'static str),
    /// Exactly one request forwarded and answered 200: the answer (`/headers` echoes what the
    /// upstream saw) holds `shows` and, in any case, never `hides`.
    Forwarded {
        shows: &'static str,
        hides: &'static str,
    },
}

use Smuggle::{Forwarded, Refused, RefusedWith};

/// The request hidden behind the first; `{smuggled}` in a row of [`SMUGGLING`] stands for it.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// (case, raw request, outcome): one row a case, run in order on one proxy.
#[rustfmt::skip]
const SMUGGLING: &[(&str, &str, Smuggle)] = &[
    // Refused by the HTTP layer with a 400 and a close, before anything is forwarded.
    ("two different Content-Length values", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhello{smuggled}", Refused),
    ("Content-Length list with different values", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 41\r\n\r\nhello{smuggled}", Refused),
    ("signed Content-Length", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello{smuggled}", Refused),
    ("Transfer-Encoding: chunked, identity", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("Transfer-Encoding: xchunked", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("chunked then identity on two lines", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("Transfer-Encoding on HTTP/1.0", "POST /upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("obs-fold continuation line", "POST /upload HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("space before the colon", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("space inside a header name", "GET /headers HTTP/1.1\r\nHost: x\r\nX Forwarded: a\r\n\r\n{smuggled}", Refused),
    ("invalid character in a header name", "GET /headers HTTP/1.1\r\nHost: x\r\nX\"Bad: a\r\n\r\n{smuggled}", Refused),
    ("bare CR inside a header value", "POST /upload HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}", Refused),
    ("NUL inside a header value", "GET /headers HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{smuggled}", Refused),
    // The proxy itself refuses two Host headers (which one would route, which one forward?).
    ("two Host headers", "GET /headers HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\nConnection: close\r\n\r\n{smuggled}", RefusedWith("x-switchyard-error: bad_request")),
    // Content-Length and Transfer-Encoding together (RFC 9112 §6.3), in either order: chunked
    // wins, the Content-Length is dropped, and the connection is closed after the answer, so
    // the bytes after the chunked body are never read as a request.
    ("CL + TE", "POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", Forwarded { shows: "", hides: "content-length: 41" }),
    ("TE + CL", "POST /headers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\n{smuggled}", Forwarded { shows: "", hides: "content-length: 41" }),
    // Bare LF line endings (RFC 9112 §2.2 lets a recipient accept them, and hyper does): the
    // upstream gets the one request the proxy parsed, re-framed with CRLF, and nothing more.
    ("bare LF", "GET /headers HTTP/1.1\nHost: x\nX-A: 1\nConnection: close\n\nGET /smuggled HTTP/1.1\nHost: x\n\n", Forwarded { shows: "\nhost: x\nx-a: 1\n", hides: "" }),
    // A bare LF that ends a header for one parser and not for another: for the proxy it does,
    // so Transfer-Encoding is real, chunked wins over Content-Length, and the upstream gets a
    // re-framed body, never the client's Content-Length.
    ("bare LF + TE", "POST /headers HTTP/1.1\r\nHost: x\r\nX-A: 1\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\n{smuggled}", Forwarded { shows: "\nx-a: 1\n", hides: "content-length: 41" }),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_and_never_reach_the_upstream() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let mut failed = Vec::new();
    for &(name, request, expect) in SMUGGLING {
        let request = request.replace("{smuggled}", SMUGGLED);
        let before = (a.hits(), b.hits());
        let ex = exchange(sy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        let (status, forwarded, shows, hides) = match expect {
            Refused => (400, 0, "", ""),
            RefusedWith(shows) => (400, 0, shows, ""),
            Forwarded { shows, hides } => (200, 1, shows, hides),
        };
        let mut wrong = Vec::new();
        if ex.status() != Some(status) {
            wrong.push(format!("status {:?}, not {status}", ex.status()));
        }
        if ex.responses() != 1 {
            wrong.push(format!("{} answers, not one", ex.responses()));
        }
        if !ex.closed {
            wrong.push("the connection stayed open".to_string());
        }
        if (a.hits(), b.hits()) != (before.0 + forwarded, before.1) {
            wrong.push(format!(
                "the upstreams saw {:?} requests, not ({forwarded}, 0)",
                (a.hits() - before.0, b.hits() - before.1)
            ));
        }
        if !ex.text.contains(shows) {
            wrong.push(format!("the answer lacks {shows:?}"));
        }
        if !hides.is_empty() && ex.text.to_lowercase().contains(hides) {
            wrong.push(format!("the answer shows {hides:?}"));
        }
        if !wrong.is_empty() {
            failed.push(format!(
                "{name} ({expect:?}): {}\n{:?}",
                wrong.join("; "),
                ex.text
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} smuggling cases failed:\n{}",
        failed.len(),
        SMUGGLING.len(),
        failed.join("\n")
    );

    // None of it left the proxy able to be confused: a normal request is served.
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_uri_routes_and_forwards_by_one_host() {
    let (good, evil) = (Upstream::start("good").await, Upstream::start("evil").await);
    let toml = format!(
        "{}\n[[routes]]\nhost = \"evil.example\"\nservice = \"evil\"\n[[routes]]\nservice = \"good\"\n\
         [services.good]\nstrategy = \"canary\"\nweights = {{ p = 1 }}\n[services.good.pools.p]\nendpoints = [\"{}\"]\n\
         [services.evil]\nstrategy = \"canary\"\nweights = {{ p = 1 }}\n[services.evil.pools.p]\nendpoints = [\"{}\"]\n",
        server_section(),
        good.addr,
        evil.addr
    );
    let sy = Switchyard::start(&toml);

    // An absolute URI naming another host than the Host header: as RFC 9112 §3.2.2 says and
    // NGINX and Envoy do, the URI's host wins, for routing and for what the upstream sees.
    let ex = exchange(
        sy.addr,
        b"GET http://evil.example/headers?q=1 HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
        T,
    )
    .await;
    assert_eq!(ex.status(), Some(200), "{:?}", ex.text);
    let seen = ex.text.to_lowercase();
    assert!(seen.contains("x-upstream: evil"), "{seen}");
    assert!(seen.contains("\nhost: evil.example\n"), "{seen}");
    assert!(
        seen.contains("\nx-forwarded-host: evil.example\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("good.example"),
        "the ignored Host header never reaches the upstream:\n{seen}"
    );
    assert_eq!((good.hits(), evil.hits()), (0, 1));

    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, absolute form or not.
    let ex = exchange(
        sy.addr,
        b"GET http://evil.example/headers HTTP/1.1\r\nConnection: close\r\n\r\n",
        T,
    )
    .await;
    assert_eq!(ex.status(), Some(400), "{:?}", ex.text);
    assert_eq!((good.hits(), evil.hits()), (0, 1));
}

// === 3. Slowloris ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_even_while_they_keep_sending() {
    const SLOW: usize = 50;
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&with_server(&a, &b, "header_read_timeout = \"500ms\""));
    let addr = sy.addr;
    let tasks: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut sent = 0usize;
                let mut buf = [0u8; 256];
                let mut answer = Vec::new();
                loop {
                    if started.elapsed() > Duration::from_secs(5) {
                        return (None, sent, answer);
                    }
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return (Some(started.elapsed()), sent, answer),
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        },
                        _ = tick.tick() => {
                            let byte = head.get(sent).copied().unwrap_or(b'a');
                            if s.write_all(&[byte]).await.is_err() {
                                return (Some(started.elapsed()), sent, answer);
                            }
                            sent += 1;
                        }
                    }
                }
            })
        })
        .collect();

    // Meanwhile, a normal client is served promptly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client();
    let asked = Instant::now();
    let r = get(&c, &sy.url("/"), &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "served in {:?} under slowloris",
        asked.elapsed()
    );

    let mut cut = Vec::new();
    for t in tasks {
        let (closed, sent, answer) = t.await.expect("join");
        let closed = closed
            .unwrap_or_else(|| panic!("a slow client still open after 5 s ({sent} bytes sent)"));
        assert!(
            closed >= Duration::from_millis(300) && closed <= Duration::from_millis(1500),
            "a slow client was cut after {closed:?} (header_read_timeout 500ms)"
        );
        assert!(sent >= 3, "it kept sending until cut ({sent} bytes)");
        cut.push(closed);
        assert!(
            !answer.starts_with(b"HTTP/1.1 2"),
            "a never-finished head got a success: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    cut.sort();
    eprintln!(
        "slowloris: {SLOW} clients cut after {:?} .. {:?}",
        cut[0],
        cut[cut.len() - 1]
    );
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "only the normal request reached the upstream"
    );
}

// === 4. Slow reader ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_cannot_make_the_proxy_buffer() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = ProxyProcess::spawn(&canary(&a, &b, 100, 0, ""));
    let size = 200 * 1024 * 1024;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive window, so the kernel cannot hide much of the stream on our side.
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let mut s = socket.connect(sy.addr).await.expect("connect");
    s.write_all(format!("GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    wait_until(T, "the request to reach the upstream", || a.hits() == 1).await;
    // Read nothing for 2 s: a proxy without backpressure would pull the upstream's 200 MiB
    // into memory meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = sy.peak_rss_kib();
    let mut head = [0u8; 4096];
    tokio::time::timeout(T, s.read_exact(&mut head))
        .await
        .expect("bytes in time")
        .expect("read");
    assert!(head.starts_with(b"HTTP/1.1 200"), "{:?}", &head[..32]);
    let peak = sy.peak_rss_kib();
    eprintln!(
        "proxy peak RSS with a stalled reader of {size} bytes: {stalled} KiB, then {peak} KiB"
    );
    assert!(
        peak > 0 && peak < 64 * 1024,
        "proxy peak RSS {peak} KiB with a client that reads nothing"
    );
    drop(s);
    // The process is fine and serves again.
    let c = client();
    let r = get(&c, &format!("http://{}/", sy.addr), &[]).await;
    assert_eq!(r.body, "v1");
}

// === 5. HTTP/2 rapid reset ===

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// HPACK for `GET http://<authority>/`: indexed :method GET, :scheme http, :path /, then
/// :authority as a literal without indexing (static name index 1).
fn h2_get(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01];
    block.push(u8::try_from(authority.len()).expect("short authority"));
    block.extend_from_slice(authority.as_bytes());
    block
}

/// What the server sent on a raw HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Seen {
    /// (last stream id, error code) of the first GOAWAY.
    goaway: Option<(u32, u32)>,
    headers: usize,
    resets: usize,
    closed: bool,
}

/// Reads frames until the connection closes or `limit` passes; raises `stop` on a GOAWAY
/// or a close.
async fn read_h2_frames(
    mut r: tokio::net::tcp::OwnedReadHalf,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> H2Seen {
    let mut seen = H2Seen::default();
    let deadline = Instant::now() + limit;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, r.read_exact(&mut head)).await {
            Err(_) => break,
            Ok(Err(_)) => {
                seen.closed = true;
                break;
            }
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if !matches!(
            tokio::time::timeout_at(deadline, r.read_exact(&mut payload)).await,
            Ok(Ok(_))
        ) {
            seen.closed = true;
            break;
        }
        match head[3] {
            HEADERS => seen.headers += 1,
            RST_STREAM => seen.resets += 1,
            GOAWAY if len >= 8 && seen.goaway.is_none() => {
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                seen.goaway = Some((last & 0x7fff_ffff, code));
                stop.store(true, Ordering::SeqCst);
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    seen
}

/// A raw HTTP/2 connection whose server frames [`read_h2_frames`] reads in the background.
struct RawH2 {
    w: tokio::net::tcp::OwnedWriteHalf,
    /// Raised on a GOAWAY or a close: time to stop writing.
    stop: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<H2Seen>,
}

impl RawH2 {
    /// Connects and writes the preface, an empty SETTINGS and then `first`.
    async fn open(addr: SocketAddr, first: &[u8]) -> RawH2 {
        let (r, mut w) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_h2_frames(r, stop.clone(), Duration::from_secs(10)));
        let mut start = H2_PREFACE.to_vec();
        start.extend(h2_frame(SETTINGS, 0, 0, &[]));
        start.extend_from_slice(first);
        w.write_all(&start).await.expect("preface");
        RawH2 { w, stop, reader }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// What the server sent, once the reader is done.
    async fn seen(self) -> H2Seen {
        tokio::time::timeout(T, self.reader)
            .await
            .expect("reader ends")
            .expect("join")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_with_goaway() {
    const STREAMS: u32 = 5000;
    const BATCH: u32 = 50;
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = ProxyProcess::spawn(&canary(&a, &b, 100, 0, ""));
    let mut h2 = RawH2::open(sy.addr, &[]).await;
    let block = h2_get(&sy.addr.to_string());
    let mut opened = 0u32;
    let mut write_failed = false;
    while opened < STREAMS && !h2.stopped() {
        let mut burst = Vec::new();
        for _ in 0..BATCH {
            let id = 2 * opened + 1;
            burst.extend(h2_frame(HEADERS, END_STREAM_AND_HEADERS, id, &block));
            burst.extend(h2_frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            opened += 1;
        }
        if h2.w.write_all(&burst).await.is_err() {
            write_failed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    let seen = h2.seen().await;
    eprintln!(
        "rapid reset: {opened} streams written (write failed: {write_failed}), server sent {seen:?}, upstream saw {}",
        a.hits()
    );
    let (last, code) = seen
        .goaway
        .unwrap_or_else(|| panic!("no GOAWAY after {opened} reset streams: {seen:?}"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "GOAWAY code: {seen:?}");
    assert!(
        last < 2 * 500,
        "GOAWAY only after stream {last} (of {STREAMS} sent)"
    );
    assert!(seen.closed, "the connection is closed after the GOAWAY");
    assert!(
        a.hits() < 500,
        "the upstream saw {} of {STREAMS} reset requests",
        a.hits()
    );

    // The process lives and serves, over HTTP/2 and HTTP/1.1.
    assert!(sy.alive(), "the proxy process is alive");
    let url = format!("http://{}/", sy.addr);
    let r = get(&h2c_client(), &url, &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    assert_eq!(get(&client(), &url, &[]).await.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off_with_goaway() {
    const FRAMES: usize = 20_000;
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = ProxyProcess::spawn(&canary(&a, &b, 100, 0, ""));
    // A header block that never ends: HEADERS without END_HEADERS, then tiny CONTINUATIONs.
    let headers = h2_frame(HEADERS, 0x1, 1, &h2_get(&sy.addr.to_string()));
    let mut h2 = RawH2::open(sy.addr, &headers).await;
    // Each a literal `x: y` without indexing (new name).
    let cont = h2_frame(CONTINUATION, 0, 1, &[0x00, 0x01, b'x', 0x01, b'y']);
    let mut sent = 0;
    while sent < FRAMES && !h2.stopped() {
        let burst: Vec<u8> = cont.repeat(100);
        if h2.w.write_all(&burst).await.is_err() {
            break;
        }
        sent += 100;
        tokio::task::yield_now().await;
    }
    let seen = h2.seen().await;
    eprintln!("continuation flood: {sent} frames written, server sent {seen:?}");
    let (_, code) = seen
        .goaway
        .unwrap_or_else(|| panic!("no GOAWAY after {sent} CONTINUATION frames: {seen:?}"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "GOAWAY code: {seen:?}");
    assert!(seen.closed, "the connection is closed after the GOAWAY");
    assert_eq!(
        a.hits(),
        0,
        "the endless header block never became a request"
    );
    assert!(sy.alive(), "the proxy process is alive");
    let url = format!("http://{}/", sy.addr);
    assert_eq!(get(&h2c_client(), &url, &[]).await.body, "v1");
}

// === 6. Header limits ===

/// A GET with `extra` headers `x-h<i>: v` besides Host.
fn many_headers(extra: usize) -> String {
    let mut req = String::from("GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..extra {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_over_http1_and_http2() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = ProxyProcess::spawn(&with_server(&a, &b, "max_header_bytes = 65536"));

    // hyper's HTTP/1 parser takes at most 100 header lines (its default `max_headers`,
    // whatever their total size); past that the proxy answers 431 itself. The proxy adds four
    // (X-Forwarded-For/-Proto/-Host, the pool header) and drops Connection, so 95 more than
    // Host and Connection still fit through a hyper upstream.
    let ex = exchange(sy.addr, many_headers(95).as_bytes(), T).await;
    assert_eq!(ex.status(), Some(200), "97 header lines: {:?}", ex.text);
    assert!(ex.text.contains("x-h94: v"), "all forwarded: {}", ex.text);
    // 100 lines pass the proxy: the request goes upstream, whose own hyper then finds 104
    // too many (a 431 from upstream, answered through the proxy with the pool header).
    let ex = exchange(sy.addr, many_headers(98).as_bytes(), T).await;
    assert_eq!(ex.status(), Some(431), "{:?}", ex.text);
    assert!(
        ex.text.contains("x-switchyard-pool: stable"),
        "{:?}",
        ex.text
    );
    // 101 lines, and 152: refused by the proxy, nothing forwarded.
    let hits = a.hits();
    for extra in [99, 150] {
        let ex = exchange(sy.addr, many_headers(extra).as_bytes(), T).await;
        assert_eq!(
            ex.status(),
            Some(431),
            "{} header lines: {:?}",
            extra + 2,
            ex.text
        );
        assert!(!ex.text.contains("x-switchyard-pool"), "{:?}", ex.text);
        assert!(ex.closed);
    }
    assert_eq!(a.hits(), hits, "too many headers: nothing forwarded");

    // One header of 70 KiB against max_header_bytes = 65536: 431, nothing forwarded; a head
    // just under the limit is served.
    let big = |n: usize| {
        format!(
            "GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-big: {}\r\n\r\n",
            "a".repeat(n)
        )
    };
    let ex = exchange(sy.addr, big(60 * 1024).as_bytes(), T).await;
    assert_eq!(ex.status(), Some(200), "a 60 KiB head is under the limit");
    let hits = a.hits();
    let ex = exchange(sy.addr, big(70 * 1024).as_bytes(), T).await;
    assert_eq!(ex.status(), Some(431), "a 70 KiB header: {:.200}", ex.text);
    assert!(ex.closed);
    assert_eq!(a.hits(), hits, "oversized head: nothing forwarded");

    // HTTP/2: a 70 KiB header block is refused with a 431 on that stream; the connection
    // and the process live on.
    let mut h2 = h2_connect(sy.addr).await;
    let url = format!("http://{}/headers", sy.addr);
    let req = Request::get(&url)
        .header("x-big", "a".repeat(70 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(T, h2.send_request(req))
        .await
        .expect("an answer in time");
    match resp {
        Ok(resp) => assert_eq!(resp.status(), 431, "h2 oversized header block"),
        Err(e) => panic!("h2 oversized header block: the stream failed instead of a 431: {e}"),
    }
    assert_eq!(a.hits(), hits, "h2 oversized head: nothing forwarded");
    assert!(sy.alive(), "the proxy process is alive");
    h2.ready().await.expect("the connection lives on");
    let req = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(T, h2.send_request(req))
        .await
        .expect("in time")
        .expect("a normal request on the same connection");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("x-forwarded-for"));
}

// === 7. Silent clients and stalled bodies ===

/// How long until `s` is closed (or reset) by the other side, reading whatever comes; `None`
/// when still open at `limit`.
async fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(since + limit, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_are_closed_at_the_head_timeout_on_both_ports() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&with_server(&a, &b, "header_read_timeout = \"1s\""));
    let at = Instant::now();
    let mut proxy = TcpStream::connect(sy.addr).await.expect("connect");
    let mut admin = TcpStream::connect(sy.admin).await.expect("connect");
    // A kept-alive admin connection after one answer: idle, not silent, so it stays.
    let mut kept = TcpStream::connect(sy.admin).await.expect("connect");
    let ask = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", sy.admin);
    kept.write_all(ask.as_bytes()).await.expect("write");
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(T, kept.read(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    // The proxy port: header_read_timeout (1 s here) from accept, not idle_timeout (60 s).
    let took = closed_after(&mut proxy, at, Duration::from_secs(5)).await;
    let took = took.expect("a silent proxy connection still open after 5 s");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
        "a silent proxy connection was closed after {took:?} (header_read_timeout 1s)"
    );
    // The admin port: 10 s.
    let took = closed_after(&mut admin, at, Duration::from_secs(15)).await;
    let took = took.expect("a silent admin connection still open after 15 s");
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_secs(14),
        "a silent admin connection was closed after {took:?} (10 s)"
    );
    let kept_closed = closed_after(&mut kept, Instant::now(), Duration::from_millis(200)).await;
    assert_eq!(
        kept_closed, None,
        "an idle kept-alive admin connection was closed"
    );
    eprintln!("silent connections closed: proxy after ~1 s, admin after {took:?}");
}

/// Counts one up when dropped (a task that ended).
struct CountOnDrop(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends one request on `s` and reads its whole answer (the upstreams answer `v1`).
async fn ask_once(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"v1") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

/// A kept-alive HTTP/1 connection waits for its next request holding nothing of the last
/// one; the timeouts hold across that wait all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_keep_their_timeouts_between_requests() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let server = "header_read_timeout = \"500ms\"\nidle_timeout = \"2s\"";
    let sy = Switchyard::start(&with_server(&a, &b, server));
    let (mut stalls, mut quiet, mut returns) = (
        TcpStream::connect(sy.addr).await.expect("connect"),
        TcpStream::connect(sy.addr).await.expect("connect"),
        TcpStream::connect(sy.addr).await.expect("connect"),
    );
    for s in [&mut stalls, &mut quiet, &mut returns] {
        ask_once(s).await;
    }
    let answered = Instant::now();
    // Quiet for longer than the header timeout, then back with a whole request: served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ask_once(&mut returns).await;
    // Quiet as long, then a head that stalls: cut at the header timeout, not the idle one.
    stalls
        .write_all(b"GET / HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let stalled = Instant::now();
    let took = closed_after(&mut stalls, stalled, Duration::from_secs(5)).await;
    let took = took.expect("a stalled second head still open after 5 s");
    assert!(
        took >= Duration::from_millis(300) && took <= Duration::from_millis(1500),
        "a stalled second head was cut after {took:?} (header_read_timeout 500ms)"
    );
    // The one that came back is still open: its idle time counts from its last answer.
    let mut buf = [0u8; 16];
    let still = tokio::time::timeout(Duration::from_millis(100), returns.read(&mut buf)).await;
    assert!(
        still.is_err(),
        "the connection that came back was closed early: {still:?}"
    );
    // Quiet from its answer on: closed at the idle timeout.
    let took = closed_after(&mut quiet, answered, Duration::from_secs(6)).await;
    let took = took.expect("an idle connection still open 6 s after its answer");
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_millis(3500),
        "an idle connection was closed {took:?} after its answer (idle_timeout 2s)"
    );
    assert_eq!(a.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_through_a_flood_of_stalled_admin_bodies() {
    const FLOOD: usize = 300;
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));
    let admin = sy.admin;
    let started = Instant::now();
    let closed_early = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Each announces 100 bytes of body and sends one.
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let closed_early = closed_early.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(admin).await.expect("connect");
                let head = format!(
                    "PUT /admin/services/svc/weights HTTP/1.1\r\nHost: {admin}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _closed = CountOnDrop(closed_early);
                let mut out = Vec::new();
                let closed = loop {
                    let mut buf = [0u8; 1024];
                    match tokio::time::timeout_at(
                        started + Duration::from_secs(16),
                        s.read(&mut buf),
                    )
                    .await
                    {
                        Err(_) => break None,
                        Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                        Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                    }
                };
                (closed, String::from_utf8_lossy(&out).into_owned())
            })
        })
        .collect();
    // Past 256 the flood makes room for itself: once some are closed, every place is taken.
    wait_until(T, "the flood to fill the admin connections", || {
        closed_early.load(Ordering::Relaxed) >= FLOOD - 256
    })
    .await;
    // Probes on new connections, as a kubelet asks, until each gets its 200.
    for path in ["/healthz", "/readyz"] {
        let url = sy.admin_url(path);
        let mut tries = 0;
        loop {
            tries += 1;
            let req = Request::get(&url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let (status, _) = fetch(&client(), req).await;
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(12),
                "{path} not answered within 12 s of a flood of {FLOOD} stalled bodies ({tries} tries)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("{path}: 200 after {:?} ({tries} tries)", started.elapsed());
    }
    let mut timed_out = 0;
    for t in flood {
        let (closed, answer) = t.await.expect("join");
        let closed = closed.unwrap_or_else(|| panic!("a stalled body still open after 16 s"));
        if answer.starts_with("HTTP/1.1 408") {
            assert!(
                closed >= Duration::from_secs(9),
                "408 after {closed:?}, before the 10 s body deadline"
            );
            timed_out += 1;
        } else {
            // Made room for a newcomer: closed without an answer.
            assert!(answer.is_empty(), "{answer}");
        }
    }
    eprintln!("stalled bodies: {timed_out} of {FLOOD} answered 408, the rest closed for newcomers");
    // The places the probes took were the oldest stalled bodies'.
    assert!(
        (200..FLOOD - 44).contains(&timed_out),
        "{timed_out} of {FLOOD} got a 408"
    );
    assert_eq!(service_state(&sy, "svc").await["weights"]["stable"], 90);
}
