//! The Grafana dashboard (`deploy/grafana/switchyard.json`) against a real Prometheus that
//! scrapes a real switchyard under load: every panel query and every template variable query
//! must return data, with `$service` and `$pool` set to real values.
//!
//! Needs Debian's `prometheus` (CI installs it); without it the test says so and passes,
//! unless `SWITCHYARD_REQUIRE_PROMETHEUS=1`.

#[path = "support/prom.rs"]
mod prom;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use prom::*;
use serde_json::Value;
use support::*;

const DASHBOARD: &str = include_str!("../deploy/grafana/switchyard.json");

/// What `$__rate_interval` becomes: Grafana's value for the Prometheus data source's default
/// 15 s scrape interval (4 × 15 s). Prometheus here scrapes every second, so two samples are
/// in the window after about two seconds.
const RATE_INTERVAL: &str = "1m";

/// How long every query gets to return data: a few scrapes are enough on an idle machine; the
/// margin is for a busy CI runner.
const DATA_DEADLINE: Duration = Duration::from_secs(60);

// === The dashboard ===

/// A panel query: the panel's title and its `expr`.
struct PanelQuery {
    title: String,
    expr: String,
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel's targets, rows' nested panels included.
fn panel_queries(d: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    title: p["title"].as_str().unwrap_or("").to_string(),
                    expr: t["expr"]
                        .as_str()
                        .expect("every target has an expr")
                        .to_string(),
                });
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// The query of the template variable `name` (the object form of current Grafana, or the
/// older plain string).
fn variable_query(d: &Value, name: &str) -> String {
    let var = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no template variable {name}"));
    assert_eq!(var["type"], "query", "${name} is a query variable");
    assert_eq!(
        var["datasource"]["uid"], "${datasource}",
        "${name} queries the chosen data source"
    );
    var["query"]["query"]
        .as_str()
        .or(var["query"].as_str())
        .unwrap_or_else(|| panic!("${name} has a query"))
        .to_string()
}

/// Sets the variables the way Grafana does before sending a query.
fn substitute(expr: &str, service: &str, pool: &str) -> String {
    let mut out = expr.to_string();
    for (names, value) in [
        (["$__rate_interval", "${__rate_interval}"], RATE_INTERVAL),
        (["$__interval", "${__interval}"], "1s"),
        (["$__range", "${__range}"], RATE_INTERVAL),
        (["$service", "${service}"], service),
        (["$pool", "${pool}"], pool),
    ] {
        for n in names {
            out = out.replace(n, value);
        }
    }
    assert!(
        !out.contains('$'),
        "a variable the test does not set: {expr}"
    );
    out
}

/// The `switchyard_*` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("switchyard_")
        .map(|(i, _)| {
            let rest = &expr[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn the_dashboard_is_importable_and_uses_its_variables() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "a current schema"
    );
    assert_eq!(d["uid"], "switchyard");
    assert!(d["id"].is_null(), "no instance id: import assigns one");
    let ds = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&Value::from("datasource"), &Value::from("prometheus"))
    );
    variable_query(&d, "service");
    variable_query(&d, "pool");

    let mut ids = std::collections::HashSet::new();
    fn check_panels(panels: &Value, ids: &mut std::collections::HashSet<u64>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "duplicate panel id: {title}"
            );
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{title}: the chosen data source"
                );
                assert!(
                    p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                    "{title}: has queries"
                );
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            }
            check_panels(&p["panels"], ids);
        }
    }
    check_panels(&d["panels"], &mut ids);

    for q in panel_queries(&d) {
        // Only the reload counter has no service label.
        let per_service = metric_names(&q.expr)
            .iter()
            .any(|m| *m != "switchyard_config_reloads_total");
        assert!(
            !per_service || q.expr.contains("$service"),
            "{}: filters by $service: {}",
            q.title,
            q.expr
        );
    }
    let all: String = panel_queries(&d).into_iter().map(|q| q.expr).collect();
    for m in [
        "switchyard_requests_total",
        "switchyard_decisions_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_upstream_errors_total",
        "switchyard_inflight_requests",
        "switchyard_pool_weight",
        "switchyard_endpoint_healthy",
        "switchyard_config_reloads_total",
        "switchyard_rollout_weight",
    ] {
        assert!(all.contains(m), "a panel shows {m}");
    }
    assert!(all.contains("$pool"), "$pool is used");
}

/// Polls the variable query `query` (with `$service` set to `service`) until its values
/// include `want`; returns them.
async fn values_until(prom: &Prometheus, query: &str, service: &str, want: &[&str]) -> Vec<String> {
    let call = substitute(query, service, "");
    let deadline = tokio::time::Instant::now() + DATA_DEADLINE;
    loop {
        let got = prom.label_values(&call).await;
        if let Ok(values) = &got
            && want.iter().all(|w| values.iter().any(|v| v == w))
        {
            return values.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{call}: no {want:?} within {DATA_DEADLINE:?}; last answer: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A canary service with a rollout section (for the rollout weight) at `/`.
fn config(stable: &Upstream, canary: &Upstream) -> String {
    format!(
        "{}\n[[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\n\
         weights = {{ stable = 80, canary = 20 }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n\
         [services.shop.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n",
        server_section(),
        stable.addr,
        canary.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_variable_query_returns_data_from_a_real_prometheus() {
    let started = std::time::Instant::now();
    let Some(bin) = Prometheus::binary() else {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_PROMETHEUS").is_none(),
            "prometheus is required (SWITCHYARD_REQUIRE_PROMETHEUS is set; Debian: apt-get install prometheus)"
        );
        eprintln!(
            "prometheus not installed: the Grafana dashboard's queries were not checked \
             (Debian: apt-get install prometheus; CI installs it)"
        );
        return;
    };
    let d = dashboard();
    let (stable, canary) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Some 5xx on the canary, so the error ratio panel has something other than 0 to show.
    canary.set_failure_ratio(0.2);
    let sy = Switchyard::start(&config(&stable, &canary));
    let c = client();

    // Every metric a panel reads is in the exposition (a quicker, clearer failure for a
    // misspelt name than "no data").
    let exposition = get(&c, &sy.admin_url("/metrics"), &[]).await.body;
    for q in panel_queries(&d) {
        for m in metric_names(&q.expr) {
            assert!(
                exposition
                    .lines()
                    .any(|l| l.strip_prefix(m).is_some_and(|r| r.starts_with(['{', ' ']))),
                "{}: {m} is not exported:\n{exposition}",
                q.title
            );
        }
    }

    let mut prom = Prometheus::start(bin, sy.admin);
    prom.ready().await;
    let load = Load::start(sy.url("/"), 1, Vec::new());

    // A reload once Prometheus holds the counter's 0, so `increase` sees it go up.
    wait_for(
        DATA_DEADLINE,
        "the first scrape of switchyard_config_reloads_total",
        || async {
            prom.query("switchyard_config_reloads_total")
                .await
                .is_ok_and(|r| !r.is_empty())
        },
    )
    .await;
    let text = std::fs::read_to_string(&sy.path).expect("read config");
    std::fs::write(&sy.path, format!("{text}\n# edited\n")).expect("write config");
    let (status, body) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 200, "{body}");

    // The template variables, as Grafana resolves them: $pool's query depends on $service.
    let services = values_until(&prom, &variable_query(&d, "service"), "", &["shop"]).await;
    let pools = values_until(
        &prom,
        &variable_query(&d, "pool"),
        "shop",
        &["stable", "canary"],
    )
    .await;
    assert!(services.iter().all(|s| !s.is_empty()), "{services:?}");
    assert_eq!(
        pools,
        ["canary", "stable"],
        "no empty pool label among them"
    );

    // Every panel query, for each pool: data means at least one sample with a number (a 0/0
    // NaN is no data on a graph).
    let mut pending: Vec<(String, String)> = Vec::new();
    for q in panel_queries(&d) {
        for pool in ["stable", "canary"] {
            pending.push((
                format!("{} [pool={pool}]", q.title),
                substitute(&q.expr, "shop", pool),
            ));
        }
    }
    let deadline = tokio::time::Instant::now() + DATA_DEADLINE;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (what, promql) in pending {
            match prom.query(&promql).await {
                Ok(r) if r.iter().any(|(_, v)| v.is_finite()) => {}
                other => {
                    last.insert(what.clone(), format!("{other:?}"));
                    still.push((what, promql));
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no data within {DATA_DEADLINE:?} for:\n{}",
            pending
                .iter()
                .map(|(what, promql)| format!(
                    "- {what}\n  {promql}\n  last answer: {}",
                    last.get(what).map_or("", String::as_str)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Prometheus scrapes every second: asking much more often only costs CPU.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The data means what the panels say: the canary's errors and the reload show.
    let expr_of = |title: &str| {
        panel_queries(&d)
            .into_iter()
            .find(|q| q.title == title)
            .unwrap_or_else(|| panic!("a panel {title:?}"))
            .expr
    };
    let ratio = expr_of("5xx ratio by pool");
    let canary_ratio = prom
        .query(&substitute(&ratio, "shop", "canary"))
        .await
        .expect("query");
    assert!(
        canary_ratio.iter().any(|(_, v)| *v > 0.0),
        "the canary's 5xx show: {canary_ratio:?}"
    );
    let stable_ratio = prom
        .query(&substitute(&ratio, "shop", "stable"))
        .await
        .expect("query");
    assert!(
        stable_ratio.iter().all(|(_, v)| *v == 0.0),
        "stable answers no 5xx: {stable_ratio:?}"
    );
    let reloads = prom
        .query(&substitute(&expr_of("Config reloads"), "shop", "stable"))
        .await
        .expect("query");
    assert!(
        reloads
            .iter()
            .any(|(l, v)| l.get("result").is_some_and(|r| r == "success") && *v > 0.0),
        "the reload shows: {reloads:?}"
    );

    let samples = load.finish().await;
    assert!(!samples.is_empty(), "the load sent requests");
    eprintln!(
        "every dashboard query returned data ({} panel queries × 2 pools, 2 variables) in {:.1?}",
        panel_queries(&d).len(),
        started.elapsed()
    );
}
