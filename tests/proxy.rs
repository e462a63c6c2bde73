//! The data path (issue "The data path"): real upstreams, a real switchyard, real HTTP.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use md5::{Digest, Md5};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_within_tolerance() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));
    let c = client();
    let n = 2000;
    let mut v2 = 0;
    for _ in 0..n {
        let r = get(&c, &sy.url("/"), &[]).await;
        assert_eq!(r.status, 200);
        let pool = r.header("x-switchyard-pool").expect("pool header");
        assert_eq!(
            pool == "canary",
            r.body == "v2",
            "pool header names the serving pool"
        );
        v2 += usize::from(r.body == "v2");
    }
    // 10% of 2000 = 200; a binomial sd is ~13, so ±60 is > 4 sd.
    assert!((140..=260).contains(&v2), "canary got {v2} of {n}");
    assert_eq!(a.hits() + b.hits(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_override_reaches_canary_at_weight_zero() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let extra =
        "[[services.svc.overrides]]\nheader = \"x-canary\"\nequals = \"true\"\npool = \"canary\"\n";
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, extra));
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
        let r = get(&c, &sy.url("/"), &[("x-canary", "true")]).await;
        assert_eq!(
            (r.body.as_str(), r.header("x-switchyard-pool")),
            ("v2", Some("canary"))
        );
    }
    assert_eq!(b.hits(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_buckets_equal_the_md5_rule_for_hundreds_of_ids() {
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    let toml = format!(
        "{}\n[[routes]]\nservice = \"exp\"\n[services.exp]\nstrategy = \"ab\"\nweights = {{ A = 50, B = 50 }}\nhash_key = {{ header = \"x-user-id\" }}\n[services.exp.pools.A]\nendpoints = [\"{}\"]\n[services.exp.pools.B]\nendpoints = [\"{}\"]\n",
        server_section(),
        a.addr,
        b.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for i in 0..300 {
        let id = format!("user-{i}");
        // What the app computes: parseInt(md5(id).substr(0, 8), 16) % 100 < 50 ? "A" : "B"
        let digest = Md5::digest(id.as_bytes());
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let want = if n % 100 < 50 { "A" } else { "B" };
        let r = get(&c, &sy.url("/"), &[("x-user-id", &id)]).await;
        assert_eq!(r.body, want, "user {id} (bucket {})", n % 100);
        // Stable: the same user lands in the same place again.
        assert_eq!(
            get(&c, &sy.url("/"), &[("x-user-id", &id)]).await.body,
            want
        );
    }
    // Keyless requests go to the control.
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_is_set_once_and_replayed() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(
        &a,
        &b,
        50,
        50,
        "affinity_cookie = \"sy_bucket\"\naffinity_max_age = \"1h\"",
    ));
    let c = client();
    let first = get(&c, &sy.url("/"), &[]).await;
    let cookie = first
        .header("set-cookie")
        .expect("a keyless client gets a bucket cookie")
        .to_string();
    assert!(cookie.starts_with("sy_bucket="), "{cookie}");
    assert!(
        cookie.contains("Path=/; Max-Age=3600; HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_string();
    let bucket: u32 = pair["sy_bucket=".len()..].parse().expect("integer bucket");
    let want = if bucket < 50 { "v1" } else { "v2" };
    assert_eq!(first.body, want);
    for _ in 0..50 {
        let r = get(&c, &sy.url("/"), &[("cookie", &pair)]).await;
        assert_eq!(r.body, want, "bucket {bucket} is sticky");
        assert!(
            r.header("set-cookie").is_none(),
            "the cookie is not set again"
        );
    }
    // Both buckets ends exist: force each.
    assert_eq!(
        get(&c, &sy.url("/"), &[("cookie", "sy_bucket=0")])
            .await
            .body,
        "v1"
    );
    assert_eq!(
        get(&c, &sy.url("/"), &[("cookie", "sy_bucket=99")])
            .await
            .body,
        "v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_active_and_preview() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let toml = format!(
        "{}\n[[routes]]\nservice = \"web\"\n[services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\npreview_header = {{ name = \"x-preview\", equals = \"true\" }}\n[services.web.pools.blue]\nendpoints = [\"{}\"]\n[services.web.pools.green]\nendpoints = [\"{}\"]\n",
        server_section(),
        blue.addr,
        green.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "blue");
        assert_eq!(
            get(&c, &sy.url("/"), &[("x-preview", "true")]).await.body,
            "green"
        );
        assert_eq!(
            get(&c, &sy.url("/"), &[("x-preview", "no")]).await.body,
            "blue"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_a_pools_endpoints_are_down() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 0, 100, ""));
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v2");
    b.stop();
    // The stop reaches b's open keep-alive connection asynchronously: a request that gets
    // there first is still answered by b. Once b is gone, every request fails over.
    let url = sy.url("/");
    wait_for(Duration::from_secs(2), "b to be gone", || {
        let url = url.clone();
        async move { get(&client(), &url, &[]).await.body == "v1" }
    })
    .await;
    for _ in 0..10 {
        let r = get(&c, &sy.url("/"), &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "v1"),
            "failover to the first pool with an endpoint"
        );
        assert_eq!(
            r.header("x-switchyard-pool"),
            Some("stable"),
            "the header names the pool that served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_retries_once_on_another_endpoint() {
    let a = Upstream::start("v1").await;
    let dead = Upstream::start("dead").await;
    let dead_addr = dead.addr;
    drop(dead);
    let toml = format!(
        "{}\n[[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 1 }}\nfailover = false\n[services.svc.pools.stable]\nendpoints = [\"{}\", \"{}\"]\n",
        server_section(),
        dead_addr,
        a.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &sy.url("/"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    }
    // One client connection lands on one worker, which reuses its upstream connection.
    assert!(
        a.connections() <= 2,
        "{} upstream connections for 200 sequential requests",
        a.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    let r = get(
        &c,
        &sy.url("/headers"),
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.body.to_lowercase();
    for gone in [
        "x-private:",
        "keep-alive:",
        "proxy-authorization:",
        "te:",
        "connection: x-private",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the upstream:\n{seen}");
    }
    assert!(seen.contains("x-kept: yes"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {}", sy.addr)),
        "{seen}"
    );
    assert!(seen.contains("x-switchyard-pool: stable"), "{seen}");
    // The upstream's own `Connection: x-secret` + `X-Secret` never reach the client.
    assert!(r.header("x-secret").is_none());
    assert_eq!(r.header("x-switchyard-pool"), Some("stable"));
    assert_eq!(r.header("x-upstream"), Some("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_errors_carry_status_and_code() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dead = Upstream::start("dead").await;
    let dead_addr = dead.addr;
    drop(dead);
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"300ms\"\nmax_header_bytes = 8192\n\
         [admin]\nlisten = \"127.0.0.1:0\"\npersist = false\n\
         [[routes]]\npath_prefix = \"/app\"\nservice = \"svc\"\n[[routes]]\npath_prefix = \"/down\"\nservice = \"down\"\n\
         [services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.svc.pools.stable]\nendpoints = [\"{}\"]\n[services.svc.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.down]\nstrategy = \"canary\"\nweights = {{ only = 1 }}\n[services.down.pools.only]\nendpoints = [\"{}\"]\n",
        a.addr, b.addr, dead_addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();

    let r = get(&c, &sy.url("/nothing"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-error")),
        (404, Some("no_route"))
    );

    let r = get(&c, &sy.url("/down"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-error")),
        (502, Some("upstream_connect"))
    );

    let r = get(&c, &sy.url("/app/sleep/2000"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-error")),
        (504, Some("upstream_timeout"))
    );

    // HTTP/1.1 without Host.
    let out = raw(
        sy.addr,
        b"GET /app HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.to_lowercase()
            .contains("x-switchyard-error: bad_request"),
        "{out}"
    );

    // A head larger than max_header_bytes.
    let big = format!(
        "GET /app HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let out = raw(sy.addr, big.as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // Garbage is a 400 from the HTTP layer, and the proxy keeps serving.
    let out = raw(
        sy.addr,
        b"\x00\x01 NOT HTTP\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(get(&c, &sy.url("/app"), &[]).await.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_64_mib_stream_with_bounded_memory() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // A separate process, so its memory is the proxy's alone.
    let sy = ProxyProcess::spawn(&canary(&a, &b, 100, 0, ""));
    let url = |p: &str| format!("http://{}{p}", sy.addr);
    let c: hyper_util::client::legacy::Client<_, RepeatBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let size = 96 * 1024 * 1024;

    // Upload: the upstream counts what arrives.
    let req = Request::post(url("/upload"))
        .body(RepeatBody::new(size))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(60), c.request(req))
        .await
        .expect("in time")
        .expect("ok");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, Bytes::from(size.to_string()));

    // Download: read and drop chunk by chunk.
    let req = Request::get(url(&format!("/big/{size}")))
        .body(RepeatBody::new(0))
        .expect("request");
    let resp = c.request(req).await.expect("ok");
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        got += frame.expect("frame").data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, size);
    let peak = sy.peak_rss_kib();
    eprintln!("proxy peak RSS after streaming 2 x 96 MiB: {peak} KiB");
    assert!(
        peak > 0 && peak < 48 * 1024,
        "proxy peak RSS {peak} KiB while streaming 2 x 96 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let mut s = TcpStream::connect(sy.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed during handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"through the proxy", &[0u8, 255, 1, 254]] {
        s.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(buf, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = h2c_client();
    for _ in 0..20 {
        let req = Request::get(sy.url("/headers"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let r = send(&c, req).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains(&format!("host: {}", sy.addr)),
            "the authority becomes Host:\n{}",
            r.body
        );
        assert_eq!(r.header("x-switchyard-pool"), Some("stable"));
    }
    let req = Request::post(sy.url("/upload"))
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .expect("request");
    assert_eq!(send(&c, req).await.body, "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let mut sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let url = sy.url("/sleep/700");
    let addr = sy.addr;
    let inflight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    wait_until(T, "the request to reach the upstream", || {
        a.in_handler() == 1
    })
    .await;
    sy.shutdown().await;
    let r = inflight.await.expect("join");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "v1"));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_idle_connections_closed() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = canary(&a, &b, 100, 0, "").replace(
        "[server]\n",
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1200ms\"\n",
    );
    let sy = Switchyard::start(&toml);

    // Slowloris: half a head, then silence. Closed after ~300 ms (+ a quarter tick).
    let mut s = TcpStream::connect(sy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "closed after {took:?}"
    );

    // A keep-alive connection idle past header_read_timeout survives until idle_timeout.
    let mut s = TcpStream::connect(sy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("v1") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let idle_from = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("still open after 600 ms idle");
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("answer")
        .expect("read");
    assert!(n > 0, "answered after 600 ms idle");
    let idle_from2 = tokio::time::Instant::now();
    let _ = idle_from;
    // Drain the rest of the answer, then wait for the close.
    loop {
        match tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("closed within 10 s")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let idle = idle_from2.elapsed();
    assert!(
        idle >= Duration::from_millis(1100) && idle < Duration::from_millis(2500),
        "idle close after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_clients_fault() {
    // Two endpoints, so a wrongly blamed one would really be ejected (never the last).
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v1b").await);
    let toml = format!(
        "{}\n[[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 1 }}\n\
         [services.svc.outlier]\nconsecutive_failures = 1\nejection = \"30s\"\n\
         [services.svc.pools.stable]\nendpoints = [\"{}\", \"{}\"]\n",
        server_section(),
        a.addr,
        b.addr
    );
    let sy = Switchyard::start(&toml);
    let out = raw(
        sy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Neither upstream was blamed: round-robin still reaches both.
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    }
    assert!(
        a.hits() >= 4 && b.hits() >= 4,
        "hits {} / {}",
        a.hits(),
        b.hits()
    );
    // Without Host, HTTP/1.1 is a 400 before any routing.
    let out = raw(
        sy.addr,
        b"GET /nothing-routes-here HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

/// A client that hangs up while its request is with the upstream does not cancel it: the
/// answer is read, so the pooled upstream connection serves the next request instead of
/// being closed under one (which a load balancer in front of many clients would otherwise
/// pay for with a new connection each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_leaves_its_upstream_connection_pooled() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &canary(&a, &b, 100, 0, ""));
    // One worker: the upstream pools are per worker.
    let sy = Switchyard::start_with(dir, path, &switchyard::app::Options::new(1));
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    assert_eq!(a.connections(), 1);

    let mut gone = TcpStream::connect(sy.addr).await.expect("connect");
    gone.write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    wait_until(T, "the request at the upstream", || a.in_handler() == 1).await;
    drop(gone);
    wait_until(T, "the upstream's answer", || a.in_handler() == 0).await;
    // Done on switchyard's side too (the connection is back in the pool by then).
    let idle = "switchyard_inflight_requests{service=\"svc\",pool=\"stable\"} 0";
    wait_for_metric(&sy, idle, "the abandoned request finished").await;

    for _ in 0..3 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    }
    assert_eq!(a.hits(), 5);
    assert_eq!(
        a.connections(),
        1,
        "the connection under the abandoned request was closed and another opened"
    );
}
