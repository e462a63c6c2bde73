//! Per-version metrics (issue "Per-version metrics"): the exposition counts what was sent.

mod support;

use std::time::Duration;

use support::*;

/// The value of the series `name{labels}` (labels exactly as rendered, in order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

async fn scrape(sy: &Switchyard) -> String {
    let r = get(&client(), &sy.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_pool_and_status_class_equal_the_traffic() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Service names are unique per test: the metrics recorder is process-wide.
    let toml = canary(
        &a,
        &b,
        100,
        0,
        "[[services.svc.overrides]]\nheader = \"x-canary\"\npresent = true\npool = \"canary\"\n",
    )
    .replace("service = \"svc\"", "service = \"m1\"")
    .replace("[services.svc", "[services.m1");
    let toml = format!("{toml}\n[[routes]]\npath_prefix = \"/never\"\nservice = \"m1\"\n").replace(
        "[[routes]]\nservice = \"m1\"",
        "[[routes]]\npath_prefix = \"/app\"\nservice = \"m1\"",
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for _ in 0..30 {
        assert_eq!(get(&c, &sy.url("/app"), &[]).await.status, 200);
    }
    for _ in 0..10 {
        assert_eq!(
            get(&c, &sy.url("/app"), &[("x-canary", "1")]).await.status,
            200
        );
    }
    for _ in 0..5 {
        assert_eq!(get(&c, &sy.url("/app/status/500"), &[]).await.status, 500);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, &sy.url("/elsewhere"), &[]).await.status, 404);
    }
    let text = scrape(&sy).await;
    let req = |svc: &str, pool: &str, class: &str| {
        value(
            &text,
            &format!(
                "switchyard_requests_total{{service=\"{svc}\",pool=\"{pool}\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(req("m1", "stable", "2xx"), Some(30.0), "{text}");
    assert_eq!(req("m1", "stable", "5xx"), Some(5.0));
    assert_eq!(req("m1", "canary", "2xx"), Some(10.0));
    assert_eq!(req("m1", "canary", "5xx"), Some(0.0));
    assert_eq!(
        req("", "", "4xx"),
        Some(3.0),
        "no route: no service, no pool"
    );
    let dec = |pool: &str, reason: &str| {
        value(
            &text,
            &format!(
                "switchyard_decisions_total{{service=\"m1\",pool=\"{pool}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(dec("stable", "random"), Some(35.0), "{text}");
    assert_eq!(dec("canary", "override"), Some(10.0));
    let count = value(
        &text,
        "switchyard_request_duration_seconds_count{service=\"m1\",pool=\"stable\"}",
    );
    assert_eq!(count, Some(35.0));
    let inf = value(
        &text,
        "switchyard_request_duration_seconds_bucket{service=\"m1\",pool=\"stable\",le=\"+Inf\"}",
    );
    assert_eq!(inf, Some(35.0));
    assert_eq!(
        value(
            &text,
            "switchyard_pool_weight{service=\"m1\",pool=\"stable\"}"
        ),
        Some(100.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "switchyard_endpoint_healthy{{service=\"m1\",pool=\"canary\",endpoint=\"{}\"}}",
                b.addr
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "switchyard_inflight_requests{service=\"m1\",pool=\"stable\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_reload_and_errors_have_kinds() {
    let a = Upstream::start("v1").await;
    let dead = Upstream::start("dead").await;
    let dead_addr = dead.addr;
    drop(dead);
    let toml = format!(
        "{}\n[[routes]]\nservice = \"m2\"\n[services.m2]\nstrategy = \"canary\"\nweights = {{ stable = 100, down = 0 }}\nfailover = false\n[[services.m2.overrides]]\nheader = \"x-down\"\npresent = true\npool = \"down\"\n[services.m2.pools.stable]\nendpoints = [\"{}\"]\n[services.m2.pools.down]\nendpoints = [\"{dead_addr}\"]\n",
        server_section(),
        a.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    for _ in 0..7 {
        get(&c, &sy.url("/"), &[]).await;
    }
    for _ in 0..2 {
        assert_eq!(get(&c, &sy.url("/"), &[("x-down", "1")]).await.status, 502);
    }
    // A reload that keeps the pool keeps its counters.
    let text = std::fs::read_to_string(&sy.path).expect("read");
    std::fs::write(&sy.path, format!("{text}\n# edited\n")).expect("write");
    let (status, _) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 200);
    get(&c, &sy.url("/"), &[]).await;
    let text = scrape(&sy).await;
    let stable_2xx = value(
        &text,
        "switchyard_requests_total{service=\"m2\",pool=\"stable\",status_class=\"2xx\"}",
    )
    .unwrap_or(0.0);
    let down_5xx = value(
        &text,
        "switchyard_requests_total{service=\"m2\",pool=\"down\",status_class=\"5xx\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(
        (stable_2xx, down_5xx),
        (8.0, 2.0),
        "7 before and 1 after the reload; 2 failed: {text}"
    );
    assert_eq!(
        value(
            &text,
            "switchyard_upstream_errors_total{service=\"m2\",pool=\"down\",kind=\"connect\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "switchyard_config_reloads_total{result=\"success\"}").map(|v| v >= 1.0),
        Some(true),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_passes_promtool() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = canary(&a, &b, 50, 50, "")
        .replace("\"svc\"", "\"m3\"")
        .replace("[services.svc", "[services.m3");
    let sy = Switchyard::start(&toml);
    for _ in 0..20 {
        get(&client(), &sy.url("/"), &[]).await;
    }
    let text = scrape(&sy).await;
    let promtool = ["promtool", "/usr/bin/promtool"].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(promtool) = promtool else {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (CI installs it)"
        );
        eprintln!("promtool not installed: exposition not linted (CI installs it)");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("promtool in time")
    .expect("join")
    .expect("output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
