//! A rollout's webhooks (issue "progressive delivery"): a real HTTP receiver, a real
//! switchyard, real load.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

/// Records every POST (path and JSON body); answers `status` after `delay_ms`.
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    calls: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (tx, calls) = mpsc::unbounded_channel();
        let (st, dl) = (status.clone(), delay_ms.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, dl, tx) = (st.clone(), dl.clone(), tx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (st, dl, tx) = (st.clone(), dl.clone(), tx.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let json = body
                                    .ok()
                                    .and_then(|b: Bytes| serde_json::from_slice::<Value>(&b).ok())
                                    .unwrap_or(Value::Null);
                                let _ = tx.send((path, json));
                                let delay = dl.load(Ordering::SeqCst);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                let mut resp = hyper::Response::new(Full::new(Bytes::from("ok")));
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(st.load(Ordering::SeqCst))
                                        .unwrap_or(http::StatusCode::OK);
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            status,
            delay_ms,
            calls,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next call, within `T`.
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(T, self.calls.recv())
            .await
            .ok()
            .flatten()
            .expect("a webhook call")
    }
}

fn config(a: &Upstream, b: &Upstream, rollout: &str) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n{rollout}\n",
        server_section(),
        a.addr,
        b.addr
    )
}

fn hook(name: &str, url: &str, on: &str, extra: &str) -> String {
    format!(
        "[[services.shop.rollout.webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\non = \"{on}\"\n{extra}\n"
    )
}

async fn start(sy: &Switchyard) -> (u16, Value) {
    admin(
        &client(),
        "POST",
        &sy.admin_url("/admin/services/shop/rollout/start"),
        "",
        &[],
    )
    .await
}

async fn metrics(sy: &Switchyard) -> String {
    let resp = get(&client(), &sy.admin_url("/metrics"), &[]).await;
    resp.body
}

/// Two upstreams, a receiver answering `status` after `delay_ms`, and a switchyard whose
/// rollout (`rollout`'s lines) has one hook: `name` on `on` (with `extra` lines), posting to
/// `path` on the receiver. The upstreams are returned to live as long as the switchyard.
async fn one_hook(
    (status, delay_ms): (u16, u64),
    rollout: &str,
    (name, path, on, extra): (&str, &str, &str, &str),
) -> (Upstream, Upstream, Receiver, Switchyard) {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let rx = Receiver::start().await;
    rx.status.store(status, Ordering::SeqCst);
    rx.delay_ms.store(delay_ms, Ordering::SeqCst);
    let hook = hook(name, &rx.url(path), on, extra);
    let sy = Switchyard::start(&config(&a, &b, &format!("{rollout}\n{hook}")));
    (a, b, rx, sy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_pre_rollout_hook_refuses_the_start_and_changes_nothing() {
    let (_a, _b, mut rx, sy) = one_hook(
        (503, 0),
        "steps = [10, 100]\ninterval = \"100ms\"\nmin_requests = 5",
        ("smoke", "/hooks/smoke", "pre-rollout", "timeout = \"2s\""),
    )
    .await;
    // A stale If-Match is a 412 before any hook is called.
    let (status, v) = admin(
        &client(),
        "POST",
        &sy.admin_url("/admin/services/shop/rollout/start"),
        "",
        &[("if-match", "999")],
    )
    .await;
    assert_eq!(status, 412, "{v}");
    let (status, v) = start(&sy).await;
    assert_eq!(status, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or("");
    assert!(
        msg.contains("\"smoke\"") && msg.contains("status 503"),
        "{msg}"
    );
    let (path, body) = rx.next().await;
    assert_eq!(path, "/hooks/smoke");
    assert_eq!(body["service"], "shop", "{body}");
    assert_eq!(body["event"], "pre-rollout", "{body}");
    assert_eq!(body["rollout"]["state"], "idle", "{body}");
    assert!(
        body["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "idle", "nothing changed: {v}");
    assert_eq!(v["weights"]["canary"], 0, "{v}");

    // Answering 2xx, it lets the start through.
    rx.status.store(200, Ordering::SeqCst);
    let (status, v) = start(&sy).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rollout"]["state"], "progressing", "{v}");
    let m = metrics(&sy).await;
    assert!(
        m.lines().any(|l| l
            == r#"switchyard_webhook_calls_total{service="shop",hook="smoke",outcome="failed"} 1"#)
            && m.lines().any(|l| l
                == r#"switchyard_webhook_calls_total{service="shop",hook="smoke",outcome="ok"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pre_rollout_hook_that_hangs_past_its_timeout_refuses_the_start() {
    let (_a, _b, _rx, sy) = one_hook(
        (200, 10_000),
        "steps = [10, 100]",
        ("slow", "/", "pre-rollout", "timeout = \"300ms\""),
    )
    .await;
    let t0 = std::time::Instant::now();
    let (status, v) = start(&sy).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(status, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or("");
    assert!(
        msg.contains("\"slow\"") && msg.contains("no answer within 300ms"),
        "{msg}"
    );
    // The control task was never held: state answers at once.
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "idle", "{v}");
    assert!(metrics(&sy).await.lines().any(|l| l
        == r#"switchyard_webhook_calls_total{service="shop",hook="slow",outcome="timeout"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_and_post_rollout_hooks_hear_every_change_without_blocking() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let mut events = Receiver::start().await;
    let mut post = Receiver::start().await;
    let chat = Receiver::start().await;
    // A chat hook that hangs: the rollout goes on regardless.
    chat.delay_ms.store(10_000, Ordering::SeqCst);
    let sy = Switchyard::start(&config(
        &a,
        &b,
        &format!(
            "steps = [10, 50, 100]\ninterval = \"100ms\"\nmin_requests = 5\npause_at = [50]\n{}{}{}",
            hook("audit", &events.url("/events"), "event", ""),
            hook("done", &post.url("/done"), "post-rollout", ""),
            hook(
                "chat",
                &chat.url("/slack"),
                "event",
                "timeout = \"200ms\"\nformat = \"slack\""
            ),
        ),
    ));
    let load = Load::start(sy.url("/"), 4, vec![]);
    wait_until(T, "load to flow", || a.hits() > 20).await;
    assert_eq!(start(&sy).await.0, 200);
    let mut seen = Vec::new();
    while !seen.contains(&"step".to_string()) {
        let (_, body) = events.next().await;
        seen.push(body["event"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(seen, ["start", "step"], "pause_at's step is a step");
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "paused", "{v}");
    assert_eq!(
        admin(
            &client(),
            "POST",
            &sy.admin_url("/admin/services/shop/rollout/resume"),
            "",
            &[]
        )
        .await
        .0,
        200
    );
    let mut rest = Vec::new();
    while !rest.contains(&"promotion".to_string()) {
        let (_, body) = events.next().await;
        rest.push(body["event"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(rest, ["resume", "step", "promotion"]);
    let (path, body) = post.next().await;
    assert_eq!(path, "/done");
    assert_eq!(
        (
            body["event"].as_str(),
            body["rollout"]["state"].as_str(),
            body["rollout"]["weight"].as_u64()
        ),
        (Some("promotion"), Some("promoted"), Some(100)),
        "{body}"
    );
    // The hanging chat hook timed out (and was retried) without holding anything up.
    wait_for(T, "chat timeouts counted", || async {
        metrics(&sy).await.contains(
            r#"switchyard_webhook_calls_total{service="shop",hook="chat",outcome="timeout"}"#,
        )
    })
    .await;
    assert!(failures(&load.finish().await).is_empty());
}

/// The rollout's view, polled until `cond` holds (its last value on failure).
async fn wait_rollout(sy: &Switchyard, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let v = service_state(sy, "shop").await["rollout"].clone();
        if cond(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_hook_failing_three_times_in_a_row_aborts() {
    let (_a, _b, mut rx, sy) = one_hook(
        (500, 0),
        "steps = [10, 100]\ninterval = \"200ms\"\nmin_requests = 5",
        ("gate", "/gate", "step", "timeout = \"1s\""),
    )
    .await;
    let _load = Trickle::start(sy.url("/"));
    let (status, v) = start(&sy).await;
    assert_eq!(status, 200, "{v}");
    // Held at its first step while the hook fails, and the view says on what.
    let v = wait_rollout(&sy, "the step held by the hook", |v| {
        v["waiting_for"]
            .as_str()
            .is_some_and(|w| w.starts_with("webhook gate"))
    })
    .await;
    assert_eq!(v["step"], 0, "{v:#}");
    let v = wait_rollout(&sy, "an abort", |v| v["state"] == "aborted").await;
    assert_eq!(
        v["reason"],
        "webhook \"gate\" (on = \"step\") failed 3 times in a row (status 500) at step 10%",
        "{v:#}"
    );
    assert_eq!(v["step"], 0, "never stepped past the gate: {v:#}");
    let hook = &v["hooks"][0];
    assert_eq!(hook["on"], "step", "{v:#}");
    assert_eq!(hook["outcome"], "failed", "{v:#}");
    assert_eq!(hook["failures_in_row"], 3, "{v:#}");
    assert!(
        hook["last_call"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v:#}"
    );
    for _ in 0..3 {
        let (path, body) = rx.next().await;
        assert_eq!(
            (path.as_str(), &body["event"]),
            ("/gate", &Value::from("step"))
        );
        assert_eq!(body["rollout"]["weight"], 10, "{body}");
    }
    assert!(
        metrics(&sy).await.lines().any(|l| l
            == r#"switchyard_webhook_calls_total{service="shop",hook="gate",outcome="failed"} 3"#)
    );
    let state = service_state(&sy, "shop").await;
    assert_eq!(state["weights"]["canary"], 0, "{state:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_hook_that_hangs_past_its_timeout_counts_as_a_failure() {
    let (_a, _b, _rx, sy) = one_hook(
        (200, 10_000),
        "steps = [10, 100]\ninterval = \"200ms\"\nmin_requests = 5",
        ("hanging", "/", "step", "timeout = \"300ms\""),
    )
    .await;
    let _load = Trickle::start(sy.url("/"));
    let t0 = std::time::Instant::now();
    let (status, v) = start(&sy).await;
    assert_eq!(status, 200, "{v}");
    // While a call hangs, the control task is never held: every state read answers.
    let v = wait_rollout(&sy, "an abort", |v| v["state"] == "aborted").await;
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(
        v["reason"],
        "webhook \"hanging\" (on = \"step\") failed 3 times in a row (no answer within 300ms) at step 10%",
        "{v:#}"
    );
    assert_eq!(v["hooks"][0]["outcome"], "timeout", "{v:#}");
    assert!(metrics(&sy).await.lines().any(|l| l
        == r#"switchyard_webhook_calls_total{service="shop",hook="hanging",outcome="timeout"} 3"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_promotion_waits_until_its_hook_answers_2xx() {
    let (_a, _b, mut rx, sy) = one_hook(
        (503, 0),
        "steps = [10, 50]\ninterval = \"200ms\"\nmin_requests = 5",
        ("approve", "/approve", "confirm-promotion", ""),
    )
    .await;
    let _load = Trickle::start(sy.url("/"));
    let (status, v) = start(&sy).await;
    assert_eq!(status, 200, "{v}");
    // The first step (10% → 50%) does not ask: only the move to 100% does.
    let (path, body) = rx.next().await;
    assert_eq!(path, "/approve");
    assert_eq!(body["event"], "confirm-promotion", "{body}");
    assert_eq!(body["rollout"]["weight"], 50, "{body}");
    let v = wait_rollout(&sy, "the wait named in waiting_for", |v| {
        v["waiting_for"] == "webhook approve (status 503)"
    })
    .await;
    assert_eq!(v["state"], "progressing", "{v:#}");
    // Asked again every interval, and still waiting, not aborted.
    let _ = rx.next().await;
    let _ = rx.next().await;
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "progressing", "{v:#}");
    assert_eq!(v["weights"]["canary"], 50, "{v:#}");

    rx.status.store(200, Ordering::SeqCst);
    let v = wait_rollout(&sy, "the promotion", |v| v["state"] == "promoted").await;
    assert_eq!(v["hooks"][0]["outcome"], "ok", "{v:#}");
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["weights"]["canary"], 100, "{v:#}");
}
