//! The automated canary and shadow traffic (issue "Per-version metrics and an automated
//! progressive canary"): real upstreams, real load, the controller inside switchyard.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(20);

/// A canary service `name` with a rollout section; baseline → a, canary → b.
fn rollout_config(name: &str, a: &Upstream, b: &Upstream, rollout: &str) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"{name}\"\n[services.{name}]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.{name}.pools.stable]\nendpoints = [\"{}\"]\n[services.{name}.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.{name}.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n{rollout}\n",
        server_section(),
        a.addr,
        b.addr
    )
}

async fn act(sy: &Switchyard, name: &str, action: &str) -> (u16, Value) {
    admin(
        &client(),
        "POST",
        &sy.admin_url(&format!("/admin/services/{name}/rollout/{action}")),
        "",
        &[],
    )
    .await
}

async fn wait_state(sy: &Switchyard, name: &str, want: &str) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + T;
    while tokio::time::Instant::now() < deadline {
        last = service_state(sy, name).await;
        if last["rollout"]["state"] == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("rollout of {name} never reached {want}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_canary_is_promoted_step_by_step() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&rollout_config(
        "r1",
        &a,
        &b,
        "steps = [5, 10, 25, 50, 100]\ninterval = \"150ms\"\nmin_requests = 10",
    ));
    let v = service_state(&sy, "r1").await;
    assert_eq!(v["rollout"]["state"], "idle", "{v}");
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || a.hits() > 100).await;

    let (status, v) = act(&sy, "r1", "start").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["rollout"]["state"].as_str(),
            v["rollout"]["weight"].as_u64()
        ),
        (Some("progressing"), Some(5))
    );
    assert_eq!(
        v["weights"],
        json!({"stable": 95, "canary": 5}),
        "the first step applies at start"
    );
    let (status, _) = act(&sy, "r1", "start").await;
    assert_eq!(status, 409, "already progressing");

    let v = wait_state(&sy, "r1", "promoted").await;
    assert_eq!(v["weights"], json!({"stable": 0, "canary": 100}), "{v}");
    assert_eq!(v["rollout"]["weight"], 100);
    assert_eq!(v["rollout"]["last_verdict"]["passed"], true, "{v}");
    let samples = load.finish().await;
    assert!(
        failures(&samples).is_empty(),
        "{:?}",
        failures(&samples).first()
    );
    // Each step was really served: the canary saw traffic at several weights.
    assert!(b.hits() >= 50, "canary hits {}", b.hits());
    // The audit says who did what: the start was an admin call, each step and the promotion
    // the rollout's own, one entry per change, in generation order.
    let (_, audit) = admin(&client(), "GET", &sy.admin_url("/admin/audit"), "", &[]).await;
    let mut entries = audit.as_array().cloned().unwrap_or_default();
    entries.reverse();
    let calls: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("?").to_string(),
                e["call"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("admin", "POST /admin/services/r1/rollout/start"),
        ("rollout", "rollout step 2 of 5 (10%)"),
        ("rollout", "rollout step 3 of 5 (25%)"),
        ("rollout", "rollout step 4 of 5 (50%)"),
        ("rollout", "rollout step 5 of 5 (100%)"),
    ]
    .iter()
    .map(|(a, c)| (a.to_string(), c.to_string()))
    .collect();
    assert_eq!(calls, want, "{audit:#}");
    let generations: Vec<u64> = entries
        .iter()
        .filter_map(|e| e["generation"].as_u64())
        .collect();
    assert!(
        generations.windows(2).all(|w| w[1] == w[0] + 1),
        "{generations:?}"
    );
    assert_eq!(
        entries[1]["after"],
        json!({"weights": {"stable": 90, "canary": 10}, "rollout": {"state": "progressing", "step": 1}}),
        "{audit:#}"
    );
    assert_eq!(
        entries[0]["caller"]
            .as_str()
            .map(|c| c.starts_with("127.0.0.1:")),
        Some(true)
    );
    assert_eq!(entries[1]["caller"], Value::Null);
    let metrics = get(&client(), &sy.admin_url("/metrics"), &[]).await.body;
    assert!(
        metrics.contains("switchyard_rollout_weight{service=\"r1\"} 100"),
        "{metrics}"
    );
    // Persisted-like: the weights are the live table's.
    for _ in 0..10 {
        assert_eq!(get(&client(), &sy.url("/"), &[]).await.body, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_canary_aborts_to_zero_with_the_reason() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    b.set_failing(true);
    let sy = Switchyard::start(&rollout_config(
        "r2",
        &a,
        &b,
        "steps = [20, 50, 100]\ninterval = \"5s\"\nmin_requests = 20\nmax_error_rate = 0.05",
    ));
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || a.hits() > 100).await;
    let (status, _) = act(&sy, "r2", "start").await;
    assert_eq!(status, 200);
    let v = wait_state(&sy, "r2", "aborted").await;
    assert_eq!(v["weights"], json!({"stable": 100, "canary": 0}), "{v}");
    let reason = v["rollout"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("canary 5xx 100.0% (≥ ")
            && reason.contains("% at 99%, n=")
            && reason.ends_with(") > 5.0% at step 20%"),
        "{reason}"
    );
    let aborted_at = tokio::time::Instant::now();
    let samples = load.finish().await;
    // After the abort answer, no request reaches the canary.
    assert!(
        samples
            .iter()
            .filter(|s| s.started > aborted_at)
            .all(|s| s.body == "v1")
    );
}

/// Runs a rollout of a canary failing `ratio` of requests at random (the baseline 2%), and
/// returns the service state once the rollout has ended.
async fn noisy_rollout(name: &str, ratio: f64) -> Value {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    a.set_failure_ratio(0.02);
    b.set_failure_ratio(ratio);
    let sy = Switchyard::start(&rollout_config(
        name,
        &a,
        &b,
        "steps = [25, 50, 100]\ninterval = \"1s\"\nmin_requests = 50\nmax_error_rate = 0.05",
    ));
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || a.hits() > 100).await;
    assert_eq!(act(&sy, name, "start").await.0, 200);
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        last = service_state(&sy, name).await;
        if ["promoted", "aborted", "paused"]
            .contains(&last["rollout"]["state"].as_str().unwrap_or(""))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = load.finish().await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noisy_healthy_canary_is_promoted() {
    // 2% of requests fail at random on both versions, against a 5% limit: small windows
    // often show more than 5%, and none of that is evidence.
    let v = noisy_rollout("n1", 0.02).await;
    assert_eq!(v["rollout"]["state"], "promoted", "{v}");
    let history = v["rollout"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(history.len(), 3, "{v}");
    assert!(history.iter().all(|h| h["outcome"] == "passed"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_15_percent_is_aborted_with_its_figures() {
    let v = noisy_rollout("n2", 0.15).await;
    assert_eq!(v["rollout"]["state"], "aborted", "{v}");
    assert_eq!(v["weights"]["canary"], 0, "{v}");
    // `canary 5xx 14.2% (≥ 8.1% at 99%, n=512) > 5.0% at step 25%`
    let reason = v["rollout"]["reason"].as_str().unwrap_or("");
    let figures = reason
        .strip_prefix("canary 5xx ")
        .and_then(|r| r.split_once("% (≥ "))
        .and_then(|(estimate, r)| Some((estimate, r.split_once("% at 99%, n=")?)))
        .and_then(|(estimate, (low, r))| {
            let (n, r) = r.split_once(") > 5.0% at step ")?;
            Some((
                estimate.parse::<f64>().ok()?,
                low.parse::<f64>().ok()?,
                n.parse::<u64>().ok()?,
                r,
            ))
        });
    let Some((estimate, low, n, _)) = figures else {
        panic!("reason without its figures: {reason}");
    };
    assert!((8.0..25.0).contains(&estimate), "{reason}");
    // The bound is above the threshold for a breach, but the reason shows one decimal: a
    // bound of 5.04% reads "5.0".
    assert!(5.0 <= low && low < estimate, "{reason}");
    assert!(n >= 50, "{reason}");
    let verdict = &v["rollout"]["last_verdict"];
    assert_eq!(verdict["outcome"], "breached", "{v}");
    assert_eq!(verdict["canary"]["requests"], n, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_canary_aborts_on_p99() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    b.set_delay_ms(300);
    let sy = Switchyard::start(&rollout_config(
        "r3",
        &a,
        &b,
        // At 10% the baseline gets enough requests quickly to bound its p99 from above.
        "steps = [10, 100]\ninterval = \"10s\"\nmin_requests = 10\nmax_p99_increase = \"100ms\"",
    ));
    let load = Load::start(sy.url("/"), 16, vec![]);
    wait_until(T, "load to flow", || a.hits() > 50).await;
    assert_eq!(act(&sy, "r3", "start").await.0, 200);
    let v = wait_state(&sy, "r3", "aborted").await;
    let reason = v["rollout"]["reason"].as_str().unwrap_or("");
    // Every canary request took over 300 ms: its p99 is at least that.
    assert!(
        reason.starts_with("canary p99 ")
            && reason.contains("(≥ 300ms at 99%, n=")
            && reason.ends_with("by more than 100ms at step 10%"),
        "{reason}"
    );
    let samples = load.finish().await;
    assert!(failures(&samples).is_empty(), "slow is not failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_slower_than_max_p99_aborts_at_its_first_min_requests() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    b.set_delay_ms(800);
    let sy = Switchyard::start(&rollout_config(
        "r3b",
        &a,
        &b,
        // No baseline threshold: max_p99 judges the canary alone.
        "steps = [50, 100]\ninterval = \"1m\"\nmin_requests = 10\nmax_p99 = \"300ms\"",
    ));
    let conns = 8;
    let load = Load::start(sy.url("/"), conns, vec![]);
    wait_until(T, "load to flow", || a.hits() > 20).await;
    assert_eq!(act(&sy, "r3b", "start").await.0, 200);
    let v = wait_state(&sy, "r3b", "aborted").await;
    let reason = v["rollout"]["reason"].as_str().unwrap_or("");
    // Every canary request took 800 ms, in the (750, 1000] ms bucket.
    assert!(
        reason.starts_with("canary p99 ")
            && reason.contains("(≥ 750ms at 99%, n=")
            && reason.ends_with("> 300ms at step 50%"),
        "{reason}"
    );
    // Judged as soon as min_requests answers were in (a tick may see a few more land).
    let n = v["rollout"]["last_verdict"]["canary"]["requests"]
        .as_u64()
        .unwrap_or(0);
    assert!((10..=10 + conns as u64).contains(&n), "{v}");
    assert_eq!(v["weights"], json!({"stable": 100, "canary": 0}));
    let samples = load.finish().await;
    assert!(failures(&samples).is_empty(), "slow is not failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_at_applies_the_step_and_waits_for_resume() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&rollout_config(
        "r4p",
        &a,
        &b,
        "steps = [10, 50, 100]\ninterval = \"100ms\"\nmin_requests = 5\npause_at = [50]",
    ));
    let load = Load::start(sy.url("/"), 4, vec![]);
    wait_until(T, "load to flow", || a.hits() > 50).await;
    assert_eq!(act(&sy, "r4p", "start").await.0, 200);
    let v = wait_state(&sy, "r4p", "paused").await;
    let r = &v["rollout"];
    assert_eq!(
        (
            r["step"].as_u64(),
            r["weight"].as_u64(),
            r["reason"].as_str()
        ),
        (Some(1), Some(50), Some("paused at step 50% (pause_at)")),
        "{v}"
    );
    assert_eq!(r["waiting_for"], "resume", "{v}");
    assert_eq!(v["weights"], json!({"stable": 50, "canary": 50}), "applied");
    // Canary traffic well past the dwell (8 intervals of 100ms, and 8× min_requests):
    // still paused, the 50% step not judged.
    let (canary_hits, paused_at) = (b.hits(), std::time::Instant::now());
    wait_until(T, "canary traffic while paused", || {
        b.hits() > canary_hits + 40 && paused_at.elapsed() > Duration::from_millis(800)
    })
    .await;
    let v = service_state(&sy, "r4p").await;
    assert_eq!(v["rollout"]["state"], "paused", "{v}");
    assert_eq!(v["rollout"]["history"].as_array().map(Vec::len), Some(1));
    let (status, v) = act(&sy, "r4p", "resume").await;
    assert_eq!(
        (status, &v["rollout"]["reason"]),
        (200, &Value::Null),
        "{v}"
    );
    let v = wait_state(&sy, "r4p", "promoted").await;
    // The 50% step was judged once, after the resume.
    let judged_50: Vec<_> = v["rollout"]["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["weight"] == 50)
        .collect();
    assert_eq!(judged_50.len(), 1, "{v}");
    assert!(failures(&load.finish().await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_holds_the_step_and_resume_goes_on() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&rollout_config(
        "r4",
        &a,
        &b,
        "steps = [10, 100]\ninterval = \"100ms\"\nmin_requests = 5",
    ));
    let load = Load::start(sy.url("/"), 4, vec![]);
    wait_until(T, "load to flow", || a.hits() > 50).await;
    assert_eq!(act(&sy, "r4", "start").await.0, 200);
    let (status, v) = act(&sy, "r4", "pause").await;
    assert_eq!(
        (status, v["rollout"]["state"].as_str()),
        (200, Some("paused")),
        "{v}"
    );
    // Well past the dwell with plenty of canary traffic: still paused at 10%.
    let canary_hits = b.hits();
    wait_until(T, "canary traffic while paused", || {
        b.hits() > canary_hits + 20
    })
    .await;
    let v = service_state(&sy, "r4").await;
    assert_eq!(
        (
            v["rollout"]["state"].as_str(),
            v["rollout"]["weight"].as_u64()
        ),
        (Some("paused"), Some(10)),
        "{v}"
    );
    assert_eq!(act(&sy, "r4", "resume").await.0, 200);
    wait_state(&sy, "r4", "promoted").await;
    // Abort after promotion is refused; promote/abort of a fresh start work.
    assert_eq!(act(&sy, "r4", "abort").await.0, 409);
    assert_eq!(act(&sy, "r4", "start").await.0, 200);
    let (status, v) = act(&sy, "r4", "abort").await;
    assert_eq!(
        (status, v["rollout"]["reason"].as_str()),
        (200, Some("aborted by admin")),
        "{v}"
    );
    assert_eq!(v["weights"], json!({"stable": 100, "canary": 0}));
    let (status, v) = act(&sy, "r4", "promote").await;
    assert_eq!(
        (status, v["weights"]["canary"].as_u64()),
        (200, Some(100)),
        "{v}"
    );
    let _ = load.finish().await;
    // A service without a rollout section: 404.
    let (status, _) = admin(
        &client(),
        "POST",
        &sy.admin_url("/admin/services/nope/rollout/start"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirroring_doubles_traffic_without_touching_clients() {
    let (a, b, shadow) = (
        Upstream::start("v1").await,
        Upstream::start("v2").await,
        Upstream::start("shadow").await,
    );
    let toml = format!(
        "{}\n[[routes]]\nservice = \"mr\"\n[services.mr]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0, shadow = 0 }}\n\
         [services.mr.mirror]\npool = \"shadow\"\npercent = 100\nmax_body_bytes = 1024\n\
         [services.mr.pools.stable]\nendpoints = [\"{}\"]\n[services.mr.pools.canary]\nendpoints = [\"{}\"]\n[services.mr.pools.shadow]\nendpoints = [\"{}\"]\n",
        server_section(),
        a.addr,
        b.addr,
        shadow.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for _ in 0..50 {
        let r = get(&c, &sy.url("/"), &[]).await;
        assert_eq!(r.body, "v1", "clients only see the primary's answer");
    }
    // A small body is copied too; a large one is not.
    let small = http::Request::post(sy.url("/upload"))
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            1u8;
            100
        ])))
        .expect("req");
    assert_eq!(send(&c, small).await.body, "100");
    let large = http::Request::post(sy.url("/upload"))
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            1u8;
            5000
        ])))
        .expect("req");
    assert_eq!(send(&c, large).await.body, "5000");
    wait_until(T, "every small request mirrored", || shadow.hits() == 51).await;
    assert_eq!(a.hits(), 52);
    // The shadow counts a request when it arrives; switchyard counts it when the answer is
    // back, a moment later.
    let counted =
        "switchyard_mirror_requests_total{service=\"mr\",pool=\"shadow\",status_class=\"2xx\"} 51";
    wait_for_metric(&sy, counted, "51 mirrored answers counted").await;

    // A mirror that takes 2 s never slows the client.
    shadow.set_delay_ms(2000);
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "20 requests took {took:?} with a 2 s mirror"
    );
    // A dead mirror neither.
    shadow.stop();
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    }
}

/// With `admin.persist = true`, a single instance that restarts resumes its rollout at the
/// same step, the dwell counted from that step's `since`, and then promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_instance_resumes_its_rollout_at_the_same_step() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = rollout_config(
        "r9",
        &a,
        &b,
        "steps = [5, 50, 100]\ninterval = \"3s\"\nmin_requests = 10",
    )
    .replace("persist = false", "persist = true");
    let sy = Switchyard::start(&toml);
    let (status, v) = act(&sy, "r9", "start").await;
    assert_eq!(status, 200, "{v}");
    let before = service_state(&sy, "r9").await;
    assert_eq!(before["rollout"]["state"], "progressing", "{before}");
    assert!(before["rollout"]["since"].is_string(), "{before}");
    let (dir, path) = sy.stop().await;
    let progress = std::fs::read_to_string(format!("{}.rollouts.json", path.display()))
        .expect("the progress is kept beside the config file");
    assert!(progress.contains("progressing"), "{progress}");

    let sy = Switchyard::start_at(dir, path);
    let after = service_state(&sy, "r9").await;
    assert_eq!(after["rollout"]["state"], "progressing", "{after}");
    assert_eq!(
        after["rollout"]["step"], before["rollout"]["step"],
        "{after}"
    );
    assert_eq!(
        after["rollout"]["since"], before["rollout"]["since"],
        "{after}"
    );
    assert_eq!(
        after["weights"],
        json!({"stable": 95, "canary": 5}),
        "{after}"
    );

    let load = Load::start(sy.url("/"), 4, vec![]);
    let done = wait_state(&sy, "r9", "promoted").await;
    assert_eq!(
        done["weights"],
        json!({"stable": 0, "canary": 100}),
        "{done}"
    );
    assert!(failures(&load.finish().await).is_empty());
    let (_dir, path) = sy.stop().await;
    assert!(
        !std::path::Path::new(&format!("{}.rollouts.json", path.display())).exists(),
        "a finished rollout is not kept"
    );
}
