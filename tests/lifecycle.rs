//! Endpoint lifecycle (issue "Endpoint lifecycle"): active health checks, passive ejection,
//! drains for rolling deploys, hold for recreate deploys. Upstreams are stopped, restarted
//! and flipped between healthy and unhealthy by the tests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(10);

fn endpoint<'a>(v: &'a Value, pool: &str, addr: SocketAddr) -> &'a Value {
    v["pools"][pool]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoint_leaves_rotation_and_comes_back() {
    let (a1, a2) = (Upstream::start("a1").await, Upstream::start("a2").await);
    let health = "[services.svc.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n";
    let sy = Switchyard::start(&one_pool(&[a1.addr, a2.addr], health, ""));
    let c = client();
    wait_until(T, "probes to reach both endpoints", || {
        a1.health_checks() > 2 && a2.health_checks() > 2
    })
    .await;

    a1.set_healthy(false);
    wait_for(T, "a1 marked unhealthy", || async {
        endpoint(&service_state(&sy, "svc").await, "stable", a1.addr)["healthy"] == false
    })
    .await;
    let before = a1.traffic();
    for _ in 0..40 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "a2");
    }
    assert_eq!(
        a1.traffic(),
        before,
        "an unhealthy endpoint gets no traffic"
    );

    a1.set_healthy(true);
    wait_for(T, "a1 healthy again", || async {
        endpoint(&service_state(&sy, "svc").await, "stable", a1.addr)["healthy"] == true
    })
    .await;
    let before = a1.traffic();
    for _ in 0..40 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    }
    assert!(
        a1.traffic() >= before + 15,
        "round-robin sends a1 its share again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_but_never_the_last() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    let outlier = "[services.svc.outlier]\nconsecutive_failures = 3\nejection = \"700ms\"\n";
    let sy = Switchyard::start(&one_pool(&[bad.addr, good.addr], outlier, ""));
    let c = client();
    bad.set_failing(true);
    // Round-robin alternates; the bad endpoint answers 502 three times, then it is out.
    let mut bad_answers = 0;
    for _ in 0..40 {
        let r = get(&c, &sy.url("/"), &[]).await;
        if r.status == 502 {
            bad_answers += 1;
        }
    }
    assert_eq!(
        bad_answers, 3,
        "ejected after exactly consecutive_failures 5xx"
    );
    let v = service_state(&sy, "svc").await;
    assert!(
        endpoint(&v, "stable", bad.addr)["ejected_until"].is_string(),
        "{v}"
    );
    // After the ejection it is tried again; healthy now, it serves.
    bad.set_failing(false);
    wait_for(T, "the ejected endpoint to serve again", || async {
        get(&client(), &sy.url("/"), &[]).await.body == "bad"
    })
    .await;

    // A pool's last available endpoint is never ejected on passive evidence alone.
    let only = Upstream::start("only").await;
    let sy2 = Switchyard::start(&one_pool(&[only.addr], outlier, ""));
    only.set_failing(true);
    for _ in 0..10 {
        assert_eq!(get(&c, &sy2.url("/"), &[]).await.status, 502);
    }
    assert!(
        endpoint(&service_state(&sy2, "svc").await, "stable", only.addr)["ejected_until"].is_null()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_replacement_through_the_admin_api_loses_nothing() {
    let mut ups = [
        Upstream::start("old").await,
        Upstream::start("old").await,
        Upstream::start("old").await,
    ];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let sy = Switchyard::start(&one_pool(&addrs, "", ""));
    let c = client();
    let load = Load::start(sy.url("/sleep/5"), 8, vec![]);
    wait_until(T, "load on every endpoint", || {
        ups.iter().all(|u| u.hits() > 20)
    })
    .await;

    for (i, addr) in addrs.iter().enumerate() {
        let action = |a: &str| {
            sy.admin_url(&format!(
                "/admin/services/svc/pools/stable/endpoints/{addr}/{a}"
            ))
        };
        // 1. deregister + drain: no new requests; wait for in-flight ones to finish.
        let (status, v) = admin(&c, "POST", &action("drain"), "", &[]).await;
        assert_eq!(status, 200, "{v}");
        wait_for(T, "in-flight requests to drain", || async {
            endpoint(&service_state(&sy, "svc").await, "stable", *addr)["inflight"] == 0
        })
        .await;
        // 2. deploy: the old instance goes away, the new one starts on the same address.
        ups[i].stop();
        ups[i] = Upstream::start_at("new", *addr).await;
        // 3. health-check, 4. register.
        crate::support::wait_for(T, "the new instance to answer", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        let (status, v) = admin(&c, "POST", &action("undrain"), "", &[]).await;
        assert_eq!(status, 200, "{v}");
        let seen = ups[i].hits();
        wait_until(T, "traffic on the new instance", || {
            ups[i].hits() > seen + 10
        })
        .await;
    }
    let samples = load.finish().await;
    assert!(samples.len() > 100);
    assert!(
        failures(&samples).is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures(&samples).len(),
        samples.len(),
        failures(&samples).first()
    );
    let last = &samples[samples.len() - 1];
    assert_eq!(last.body, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_within_hold_timeout_loses_nothing() {
    let up = Upstream::start("v1").await;
    let addr = up.addr;
    let sy = Switchyard::start(&one_pool(&[addr], "hold_timeout = \"5s\"", ""));
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || up.hits() > 100).await;

    // Recreate: the only instance goes down for about 1.5 s, then comes back.
    up.stop();
    drop(up);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let up = Upstream::start_at("v2", addr).await;
    wait_until(T, "traffic on the new instance", || up.hits() > 200).await;

    let samples = load.finish().await;
    assert!(
        failures(&samples).is_empty(),
        "{} of {} failed, e.g. {:?}",
        failures(&samples).len(),
        samples.len(),
        failures(&samples).first()
    );
    // Some requests really waited through the gap.
    let slowest = samples
        .iter()
        .map(|s| s.finished - s.started)
        .max()
        .unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(1000),
        "slowest request took {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_gives_up_with_503_and_retry_after() {
    let dead = Upstream::start("dead").await;
    let addr = dead.addr;
    drop(dead);
    let sy = Switchyard::start(&one_pool(&[addr], "hold_timeout = \"300ms\"", ""));
    let started = tokio::time::Instant::now();
    let r = get(&client(), &sy.url("/"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-switchyard-error")),
        (503, Some("no_healthy_endpoint"))
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
}
