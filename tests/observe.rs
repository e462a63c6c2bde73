//! The live view on the admin listener: `/admin/stats` against traffic the test counts
//! itself, `/admin/audit` after real changes, `/admin/events` as a client reads it.

mod support;

use std::time::{Duration, SystemTime};

use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::paced::Paced;
use support::*;

const T: Duration = Duration::from_secs(20);

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("t is a string")).expect("t is RFC 3339")
}

async fn stats(sy: &Switchyard, query: &str) -> Value {
    let (status, v) = admin(
        &client(),
        "GET",
        &sy.admin_url(&format!("/admin/stats{query}")),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The pool's points as `/admin/stats` gives them.
async fn points(sy: &Switchyard, pool: &str) -> Vec<Value> {
    stats(sy, "?window=1m").await["services"]["svc"]["pools"][pool]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_show_each_pool_s_rate_within_a_fifth_of_what_was_sent() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 70, 30, ""));
    let load = Paced::start(sy.url("/"), 4, Duration::from_millis(20));
    // Six whole points after the load began: five intervals to compare.
    let began = SystemTime::now();
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while last.len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no points: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = points(&sy, "stable")
            .await
            .into_iter()
            .filter(|p| time(&p["t"]) > began + Duration::from_secs(1))
            .collect();
    }
    for (pool, body) in [("stable", "v1"), ("canary", "v2")] {
        let pts = points(&sy, pool).await;
        let n = pts.len();
        assert!(n >= 6, "{pool}: {pts:?}");
        let window = &pts[n - 6..];
        // Each point's rate over its own interval, back to requests.
        let seen: f64 = window
            .windows(2)
            .map(|w| {
                let dt = time(&w[1]["t"])
                    .duration_since(time(&w[0]["t"]))
                    .unwrap_or_default();
                w[1]["rps"].as_f64().expect("rps") * dt.as_secs_f64()
            })
            .sum();
        let (from, to) = (time(&window[0]["t"]), time(&window[5]["t"]));
        let sent = load.count(from, to, |a| a.body == body).await as f64;
        assert!(sent > 50.0, "{pool}: too little traffic to judge ({sent})");
        assert!(
            (seen - sent).abs() <= 0.2 * sent,
            "{pool}: the live view saw {seen:.0} requests where {sent} were answered: {window:?}"
        );
        let last = &window[5];
        assert_eq!(last["error_ratio"], 0.0, "{last}");
        assert!(last["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{last}");
        assert!(last["p99_ms"].as_f64().is_some(), "{last}");
        assert!(last["inflight"].as_u64().is_some(), "{last}");
    }
    let v = stats(&sy, "").await;
    assert_eq!(v["interval_s"], 1);
    assert_eq!(
        v["services"]["svc"]["rollout_history"],
        serde_json::json!([])
    );

    // The 5xx ratio follows the upstream: all of the stable pool's answers fail, none of
    // the canary's; then it recovers.
    a.set_failing(true);
    let failing_at = SystemTime::now();
    wait_for(T, "the stable pool's 5xx ratio to reach 1", || async {
        points(&sy, "stable")
            .await
            .iter()
            .any(|p| time(&p["t"]) > failing_at + Duration::from_secs(1) && p["error_ratio"] == 1.0)
    })
    .await;
    let canary = points(&sy, "canary").await;
    assert!(
        canary
            .iter()
            .all(|p| p["error_ratio"] == 0.0 || p["error_ratio"].is_null()),
        "{canary:?}"
    );
    a.set_failing(false);
    let healed_at = SystemTime::now();
    wait_for(
        T,
        "the stable pool's 5xx ratio to fall back to 0",
        || async {
            points(&sy, "stable").await.iter().any(|p| {
                time(&p["t"]) > healed_at + Duration::from_secs(1) && p["error_ratio"] == 0.0
            })
        },
    )
    .await;
    load.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_applied_changes_newest_first() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    let url = sy.admin_url("/admin/services/svc/weights");
    let (status, v) = admin(
        &c,
        "PUT",
        &url,
        r#"{"stable":90,"canary":10}"#,
        &[("If-Match", "1")],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // Refused and dry-run calls change nothing, so they are not in the audit.
    let (status, _) = admin(&c, "PUT", &url, r#"{"stable":1}"#, &[("If-Match", "1")]).await;
    assert_eq!(status, 412);
    let dry = sy.admin_url("/admin/services/svc/weights?dry_run=true");
    let (status, _) = admin(&c, "PUT", &dry, r#"{"stable":0,"canary":100}"#, &[]).await;
    assert_eq!(status, 200);
    let (status, v) = admin(&c, "PUT", &url, r#"{"stable":50,"canary":50}"#, &[]).await;
    assert_eq!(status, 200, "{v}");

    let (status, audit) = admin(&c, "GET", &sy.admin_url("/admin/audit"), "", &[]).await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit.as_array().expect("a list");
    assert_eq!(entries.len(), 2, "{audit:#}");
    let (newest, older) = (&entries[0], &entries[1]);
    assert_eq!(newest["call"], "PUT /admin/services/svc/weights");
    assert_eq!(newest["actor"], "admin");
    assert_eq!(
        newest["before"],
        json!({"weights": {"stable": 90, "canary": 10}})
    );
    assert_eq!(
        newest["after"],
        json!({"weights": {"stable": 50, "canary": 50}})
    );
    assert_eq!(newest["generation"], 3);
    assert_eq!(
        older["before"],
        json!({"weights": {"stable": 100, "canary": 0}})
    );
    assert_eq!(
        older["after"],
        json!({"weights": {"stable": 90, "canary": 10}})
    );
    assert_eq!(older["generation"], 2);
    for e in entries {
        let caller = e["caller"].as_str().expect("caller");
        assert!(caller.starts_with("127.0.0.1:"), "{e}");
        humantime::parse_rfc3339(e["at"].as_str().expect("at")).expect("at is RFC 3339");
    }
    assert!(time(&newest["at"]) >= time(&older["at"]));

    let (status, one) = admin(&c, "GET", &sy.admin_url("/admin/audit?limit=1"), "", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0], *newest);

    // A rollback is a change too.
    let (status, _) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/svc/rollback"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (_, audit) = admin(&c, "GET", &sy.admin_url("/admin/audit?limit=2"), "", &[]).await;
    assert_eq!(audit[0]["call"], "POST /admin/services/svc/rollback");
    assert_eq!(
        audit[0]["after"],
        json!({"weights": {"stable": 90, "canary": 10}})
    );
    assert_eq!(audit[1], *newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_in_the_audit() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    write_config(sy.dir.path(), &canary(&a, &b, 80, 20, ""));
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    // The watcher may have been first: then the admin reload finds nothing new.
    assert_eq!(status, 200, "{v}");
    let (_, audit) = admin(&c, "GET", &sy.admin_url("/admin/audit"), "", &[]).await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit:#}");
    let call = audit[0]["call"].as_str().expect("call");
    assert!(call.starts_with("reload ("), "{call}");
    assert_eq!(audit[0]["actor"], "file");
    assert_eq!(audit[0]["caller"], Value::Null);
    assert_eq!(audit[0]["generation"], 2);
    // One service changed: its touched fields, and its name.
    assert_eq!(
        audit[0]["before"],
        json!({"weights": {"stable": 100, "canary": 0}})
    );
    assert_eq!(
        audit[0]["after"],
        json!({"weights": {"stable": 80, "canary": 20}})
    );
    assert_eq!(audit[0]["service"], "svc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_window_or_limit_is_a_400() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    for q in [
        "/admin/stats?window=abc",
        "/admin/stats?window=2h",
        "/admin/stats?window=0s",
        "/admin/stats?window=1ms",
        "/admin/stats?window=999ms",
        "/admin/stats?window=",
        "/admin/audit?limit=0",
        "/admin/audit?limit=1001",
        "/admin/audit?limit=ten",
        "/admin/audit?limit=-1",
    ] {
        let (status, v) = admin(&c, "GET", &sy.admin_url(q), "", &[]).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"].is_string(), "{q}: {v}");
    }
    for q in [
        "/admin/stats?window=1h",
        "/admin/stats?window=30s",
        "/admin/stats?window=1s",
        "/admin/audit?limit=1000",
    ] {
        let (status, v) = admin(&c, "GET", &sy.admin_url(q), "", &[]).await;
        assert_eq!(status, 200, "{q}: {v}");
    }
}

/// Reads server-sent events from `/admin/events` into `(event, data)` pairs.
struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    async fn open(sy: &Switchyard) -> Events {
        match Events::try_open(sy).await {
            Ok(events) => events,
            Err((status, v)) => panic!("events: {status} {v}"),
        }
    }

    /// The stream, or the refusal's status and body.
    async fn try_open(sy: &Switchyard) -> Result<Events, (u16, Value)> {
        let req = Request::get(sy.admin_url("/admin/events"))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = client().request(req).await.expect("events");
        if resp.status() != 200 {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            return Err((status, serde_json::from_slice(&body).unwrap_or_default()));
        }
        assert_eq!(
            resp.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        Ok(Events {
            body: resp.into_body(),
            buffer: String::new(),
        })
    }

    /// The next event (comments skipped), within `limit`.
    async fn next(&mut self, limit: Duration) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !event.is_empty() {
                    let data = serde_json::from_str(&data).expect("data is JSON");
                    return (event, data);
                }
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream stays open")
                .expect("a frame");
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_stats_each_second_and_each_change() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let load = Paced::start(sy.url("/"), 1, Duration::from_millis(20));
    let mut events = Events::open(&sy).await;
    let mut stats_at = Vec::new();
    while stats_at.len() < 3 {
        let (event, data) = events.next(Duration::from_secs(5)).await;
        assert_eq!(event, "stats", "{data}");
        assert!(
            data["services"]["svc"]["pools"]["stable"]["rps"].is_number(),
            "{data}"
        );
        stats_at.push(time(&data["t"]));
    }
    for w in stats_at.windows(2) {
        let gap = w[1].duration_since(w[0]).unwrap_or_default();
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(2500),
            "stats events {gap:?} apart"
        );
    }

    let c = client();
    let (status, v) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":60,"canary":40}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let deadline = tokio::time::Instant::now() + T;
    let change = loop {
        assert!(tokio::time::Instant::now() < deadline, "no change event");
        let (event, data) = events.next(Duration::from_secs(5)).await;
        if event == "change" {
            break data;
        }
    };
    assert_eq!(change["service"], "svc");
    assert_eq!(
        change["state"]["weights"],
        serde_json::json!({"stable": 60, "canary": 40})
    );
    assert_eq!(change["state"]["generation"], 2);
    assert_eq!(change["audit"]["call"], "PUT /admin/services/svc/weights");
    assert_eq!(
        change["audit"]["after"],
        json!({"weights": {"stable": 60, "canary": 40}})
    );
    assert!(
        change["audit"]["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    // Still streaming afterwards.
    let (event, _) = events.next(Duration::from_secs(5)).await;
    assert!(event == "stats" || event == "change", "{event}");
    assert!(load.total().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_the_admin_stays_up() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    // Streams until one is refused: the cap (docs/admin-api.md says 32) and no more.
    let mut open = Vec::new();
    let refusal = loop {
        assert!(open.len() <= 32, "more than 32 event streams open");
        match Events::try_open(&sy).await {
            Ok(events) => open.push(events),
            Err(refusal) => break refusal,
        }
    };
    assert_eq!(open.len(), 32);
    let (status, v) = refusal;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("too many event streams (32)")),
        "{v}"
    );
    // The admin API still answers everything else, and a HEAD opens no stream.
    let c = client();
    for path in ["/admin/events", "/admin/events/"] {
        let head = Request::head(sy.admin_url(path))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let r = send(&c, head).await;
        assert_eq!(r.status, 200, "HEAD {path}");
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
    }
    let (status, _) = admin(&c, "GET", &sy.admin_url("/healthz"), "", &[]).await;
    assert_eq!(status, 200);
    let (status, v) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(status, 200, "{v}");
    // The open streams still stream.
    let (event, _) = open[0].next(Duration::from_secs(5)).await;
    assert_eq!(event, "stats");
    // A client that leaves gives its place back.
    open.pop();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match Events::try_open(&sy).await {
            Ok(events) => {
                open.push(events);
                break;
            }
            Err(refusal) => assert!(
                tokio::time::Instant::now() < deadline,
                "no place given back: {refusal:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_that_are_not_read_are_closed_and_give_their_places_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));
    // 32 clients take every place, read the stream's first bytes, then nothing more. Small
    // receive buffers, so that what the server sends piles up on its side.
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = socket.connect(sy.admin).await.expect("connect");
        let ask = format!("GET /admin/events HTTP/1.1\r\nHost: {}\r\n\r\n", sy.admin);
        s.write_all(ask.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        while !String::from_utf8_lossy(&head).contains(": connected") {
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(T, s.read(&mut buf))
                .await
                .expect("the stream opens")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        stalled.push(s);
    }
    assert!(matches!(Events::try_open(&sy).await, Err((503, _))));
    // Changes, each an event for every stream, fill what they do not read.
    let c = client();
    let url = sy.admin_url("/admin/services/svc/weights");
    let burst = tokio::time::Instant::now();
    for i in 0..100 {
        let body = if i % 2 == 0 {
            r#"{"stable":80,"canary":20}"#
        } else {
            r#"{"stable":90,"canary":10}"#
        };
        let (status, v) = admin(&c, "PUT", &url, body, &[]).await;
        assert_eq!(status, 200, "{v}");
    }
    // Their connections are closed about 30 s on, and a new stream gets a place.
    let deadline = burst + Duration::from_secs(60);
    let events = loop {
        match Events::try_open(&sy).await {
            Ok(events) => break events,
            Err((503, _)) => assert!(
                tokio::time::Instant::now() < deadline,
                "no place given back 60 s after the stalled streams fell behind"
            ),
            Err(other) => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = burst.elapsed();
    eprintln!("stalled event streams closed {took:?} after the burst");
    assert!(took >= Duration::from_secs(20), "closed after {took:?}");
    drop(events);
    // The proxy and the rest of the admin API were fine all along.
    assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    for s in &mut stalled {
        // What was sent is there to read, then the end.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a stalled stream still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_asking_for_an_hour_of_stats_shares_one_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Many pools, so that each answer is large.
    let admin = free_addr();
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"{admin}\"\npersist = false\n"
    );
    for i in 0..300 {
        config.push_str(&format!(
            "[[routes]]\nhost = \"s{i}.example\"\nservice = \"s{i}\"\n\
             [services.s{i}]\nstrategy = \"canary\"\nweights = {{ stable = 90, canary = 10 }}\n\
             [services.s{i}.pools.stable]\nendpoints = [\"127.0.0.1:1\"]\n\
             [services.s{i}.pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n"
        ));
    }
    let sy = ProxyProcess::spawn(&config);
    let url = format!("http://{admin}/admin/stats?window=1h");
    let c = client();
    // Wait until the series holds enough points (one a second).
    let deadline = tokio::time::Instant::now() + T;
    let size = loop {
        let size = get(&c, &url, &[]).await.body.len();
        if size > 500_000 {
            break size;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the answer is still {size} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let before = sy.peak_rss_kib();
    let crowd: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(admin).await.expect("connect");
                let ask = format!(
                    "GET /admin/stats?window=1h HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
                );
                s.write_all(ask.as_bytes()).await.expect("write");
                let mut answer = Vec::new();
                tokio::time::timeout(T, s.read_to_end(&mut answer))
                    .await
                    .expect("answered in time")
                    .expect("read");
                answer
            })
        })
        .collect();
    for t in crowd {
        let answer = t.await.expect("join");
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        assert!(answer.len() > 500_000, "{} bytes", answer.len());
    }
    let after = sy.peak_rss_kib();
    eprintln!(
        "100 parallel /admin/stats?window=1h of ~{} kB: peak RSS {before} KiB -> {after} KiB",
        size / 1000
    );
    assert!(
        after < before + 30 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}
