//! A rollout's Prometheus checks (issue "progressive delivery"): a real Prometheus scrapes a
//! real switchyard, and the rollout gates on a query over switchyard's own series.
//!
//! Needs Debian's `prometheus` (CI installs it); without it each test says so and passes,
//! unless `SWITCHYARD_REQUIRE_PROMETHEUS=1`.

#[path = "support/prom.rs"]
mod prom;
mod support;

use std::time::Duration;

use prom::Prometheus;
use serde_json::Value;
use support::*;

/// Prometheus scrapes every second and a rate needs two samples: a few seconds for data,
/// with a margin for a busy machine.
const T: Duration = Duration::from_secs(40);

/// The canary's 5xx ratio over the last few seconds, from switchyard's own series; no value
/// while the canary has no traffic (0/0 is dropped by `> 0`).
const CANARY_5XX: &str = "sum(rate(switchyard_requests_total{service=\\\"$service\\\",pool=\\\"$canary\\\",status_class=\\\"5xx\\\"}[4s])) / (sum(rate(switchyard_requests_total{service=\\\"$service\\\",pool=\\\"$canary\\\"}[4s])) > 0)";

fn config(a: &Upstream, b: &Upstream, prom: std::net::SocketAddr, rollout: &str) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://{prom}\"\n{rollout}\n",
        server_section(),
        a.addr,
        b.addr
    )
}

fn check(name: &str, query: &str, bounds: &str) -> String {
    format!("[[services.shop.rollout.checks]]\nname = \"{name}\"\nquery = \"{query}\"\n{bounds}\n")
}

async fn rollout(sy: &Switchyard) -> Value {
    service_state(sy, "shop").await["rollout"].clone()
}

async fn start(sy: &Switchyard) {
    let url = sy.admin_url("/admin/services/shop/rollout/start");
    let (status, v) = admin(&client(), "POST", &url, "", &[]).await;
    assert_eq!(status, 200, "{v}");
}

/// Waits until the rollout's view satisfies `cond`; its last value on failure.
async fn wait_rollout(sy: &Switchyard, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let v = rollout(sy).await;
        if cond(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a switchyard with `rollout` and a Prometheus scraping it; `None` (the test passes,
/// saying so) without a `prometheus` binary.
async fn rig(a: &Upstream, b: &Upstream, rollout: &str) -> Option<(Switchyard, Prometheus)> {
    let Some(bin) = Prometheus::required_binary() else {
        eprintln!("prometheus not installed: rollout checks were not tested against it");
        return None;
    };
    let addr = free_addr();
    let sy = Switchyard::start(&config(a, b, addr, rollout));
    let mut prom = Prometheus::start_at(bin, sy.admin, addr);
    prom.ready().await;
    Some((sy, prom))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_the_canarys_5xx_rate_promotes_a_healthy_canary() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Named apart from the other tests' checks: the metrics recorder is process-wide.
    let rollout = format!(
        "steps = [50]\ninterval = \"500ms\"\nmin_requests = 5\n{}",
        check("healthy-5xx", CANARY_5XX, "max = 0.05\nfailures = 2")
    );
    let Some((sy, _prom)) = rig(&a, &b, &rollout).await else {
        return;
    };
    let _load = Trickle::start(sy.url("/"));
    start(&sy).await;
    let v = wait_rollout(&sy, "a promotion", |v| v["state"] == "promoted").await;
    let c = &v["checks"][0];
    assert_eq!(c["name"], "healthy-5xx", "{v:#}");
    assert_eq!(c["state"], "ok", "{v:#}");
    assert_eq!(c["value"], 0.0, "{v:#}");
    assert_eq!(c["max"], 0.05, "{v:#}");
    let m = get(&client(), &sy.admin_url("/metrics"), &[]).await.body;
    assert!(
        m.lines().any(|l| l == r#"switchyard_rollout_check_value{service="shop",check="healthy-5xx"} 0"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_aborted_with_the_checks_name_value_and_bound() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    b.set_failing(true);
    let rollout = format!(
        "steps = [50]\ninterval = \"500ms\"\nmin_requests = 5\n{}",
        check("canary-5xx", CANARY_5XX, "max = 0.05\nfailures = 2")
    );
    let Some((sy, _prom)) = rig(&a, &b, &rollout).await else {
        return;
    };
    let _load = Trickle::start(sy.url("/"));
    start(&sy).await;
    let v = wait_rollout(&sy, "an abort", |v| v["state"] != "progressing").await;
    assert_eq!(v["state"], "aborted", "{v:#}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("check \"canary-5xx\" = 1 > max 0.05, 2 evaluations in a row"),
        "{reason}"
    );
    assert_eq!(v["checks"][0]["state"], "failing", "{v:#}");
    assert_eq!(v["checks"][0]["failures_in_row"], 2, "{v:#}");
    let state = service_state(&sy, "shop").await;
    assert_eq!(state["weights"]["canary"], 0, "{state:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_gone_mid_step_holds_the_step_without_aborting() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // A value from the first scrape on, canary traffic or not; the step itself needs
    // canary traffic, which only flows once Prometheus is gone.
    let rollout = format!(
        "steps = [10, 50]\ninterval = \"300ms\"\nmin_requests = 20\n{}",
        check(
            "weight",
            "max(switchyard_rollout_weight{service=\\\"$service\\\"})",
            "max = 100"
        )
    );
    let Some((sy, mut prom)) = rig(&a, &b, &rollout).await else {
        return;
    };
    start(&sy).await;
    wait_rollout(&sy, "the check's first value", |v| {
        v["checks"][0]["state"] == "ok"
    })
    .await;
    prom.kill();
    let v = wait_rollout(&sy, "the check to be inconclusive", |v| {
        v["checks"][0]["state"] == "inconclusive"
    })
    .await;
    assert_eq!(v["checks"][0]["value"], Value::Null, "{v:#}");
    // Traffic enough for the step: its own figures pass, the check does not.
    let _load = Trickle::start(sy.url("/"));
    wait_until(T, "canary traffic", || b.hits() >= 40).await;
    let v = wait_rollout(&sy, "the step held by the check", |v| {
        v["waiting_for"]
            .as_str()
            .is_some_and(|w| w.starts_with("check weight: inconclusive (Prometheus unreachable"))
    })
    .await;
    assert_eq!(v["state"], "progressing", "{v:#}");
    assert_eq!(v["step"], 0, "{v:#}");
    assert_eq!(v["reason"], Value::Null, "{v:#}");

    // Prometheus back on the same address: the check passes and the rollout goes on.
    let bin = Prometheus::binary().unwrap_or("prometheus");
    let mut prom = Prometheus::start_at(bin, sy.admin, prom.addr);
    prom.ready().await;
    wait_rollout(&sy, "the next step", |v| v["step"] == 1).await;
}
