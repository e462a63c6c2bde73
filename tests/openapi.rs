//! `docs/openapi.yaml` against a real switchyard: every JSON answer of the admin API (each
//! kind of service, a rollout with judged steps, the audit, the stats, refusals) is checked
//! against the schema the document gives for it, both ways: every field the document
//! requires is there, and no field is there that the document does not describe. Every path
//! the document lists with a GET is served.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(10);

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    serde_json::to_value(yaml).expect("as JSON")
}

/// Where `value` (at `at`) does not fit `schema`; empty when it does.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options
            .iter()
            .filter(|o| check(spec, o, value, at).is_empty())
            .count();
        return if fits >= 1 {
            Vec::new()
        } else {
            vec![format!("{at}: {value} fits none of {schema}")]
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.is_empty()
        && !types.contains(&kind)
        && (kind != "integer" || !types.contains(&"number"))
    {
        return vec![format!("{at}: {kind} {value}, the document says {types:?}")];
    }
    let mut out = Vec::new();
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    match value {
        Value::Object(fields) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(name) = r.as_str()
                    && !fields.contains_key(name)
                {
                    out.push(format!(
                        "{at}: the document requires {name:?}, the answer has none"
                    ));
                }
            }
            let props = schema["properties"].as_object();
            for (name, v) in fields {
                let here = format!("{at}.{name}");
                match (
                    props.and_then(|p| p.get(name)),
                    &schema["additionalProperties"],
                ) {
                    (Some(s), _) => out.extend(check(spec, s, v, &here)),
                    (None, extra) if extra.is_object() => out.extend(check(spec, extra, v, &here)),
                    (None, _) if props.is_some() => {
                        out.push(format!("{here}: in the answer, not in the document"));
                    }
                    // An object the document leaves open.
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, v) in items.iter().enumerate() {
                out.extend(check(spec, &schema["items"], v, &format!("{at}[{i}]")));
            }
        }
        _ => {}
    }
    out
}

/// The schema of `path`'s answer to `method` with `status`.
fn answer_schema(spec: &Value, path: &str, method: &str, status: u16) -> Value {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "the document has no {method} {path}");
    let mut r = op["responses"][status.to_string()].clone();
    if let Some(name) = r["$ref"].as_str() {
        r = spec["components"]["responses"][name.trim_start_matches("#/components/responses/")]
            .clone();
    }
    let schema = r["content"]["application/json"]["schema"].clone();
    assert!(
        schema.is_object(),
        "the document gives no JSON answer for {method} {path} {status}"
    );
    schema
}

async fn conforms(sy: &Switchyard, method: &str, url: &str, body: &str, path: &str) -> Value {
    let spec = spec();
    let (status, v) = admin(&client(), method, &sy.admin_url(url), body, &[]).await;
    let schema = answer_schema(&spec, path, &method.to_ascii_lowercase(), status);
    let wrong = check(&spec, &schema, &v, &format!("{method} {url} {status}"));
    assert!(wrong.is_empty(), "{}\n{v:#}", wrong.join("\n"));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_fits_the_document() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = format!(
        "{}\n[[routes]]\npath_prefix = \"/bg\"\nservice = \"web\"\n[[routes]]\npath_prefix = \"/cart\"\nservice = \"cart\"\n[[routes]]\nservice = \"shop\"\n\
         [services.shop]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 50]\n\
         interval = \"100ms\"\nmin_requests = 5\n\
         [services.shop.pools.stable]\nendpoints = [\"{a}\"]\n[services.shop.pools.canary]\nendpoints = [\"{b}\"]\n\
         [services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\n\
         [services.web.pools.blue]\nendpoints = [\"{a}\"]\n[services.web.pools.green]\nendpoints = [\"{b}\"]\n\
         [services.cart]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.cart.pools.stable]\nendpoints = [\"{a}\"]\n[services.cart.pools.canary]\nendpoints = [\"{b}\"]\n\
         [services.cart.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\ninterval = \"100ms\"\nprometheus = \"http://{gone}\"\n\
         [[services.cart.rollout.checks]]\nname = \"up\"\nquery = \"up\"\nmin = 1\n\
         [[services.cart.rollout.webhooks]]\nname = \"chat\"\nurl = \"http://{gone}/chat\"\non = \"event\"\n",
        server_section(),
        a = a.addr,
        b = b.addr,
        // Nothing listens there: the check is inconclusive and the hook fails, both shown.
        gone = free_addr(),
    );
    let sy = Switchyard::start(&toml);
    let load = Load::start(sy.url("/"), 4, vec![]);
    let p = "/admin/services/{svc}";
    conforms(&sy, "GET", "/admin/services/web", "", p).await;
    conforms(&sy, "GET", "/admin/services/shop", "", p).await;
    conforms(&sy, "GET", "/admin/services/nope", "", p).await;
    let w = "/admin/services/{svc}/weights";
    conforms(
        &sy,
        "PUT",
        "/admin/services/shop/weights?dry_run=true",
        r#"{"stable": 90, "canary": 10}"#,
        w,
    )
    .await;
    conforms(
        &sy,
        "PUT",
        "/admin/services/shop/weights",
        r#"{"stable": -1}"#,
        w,
    )
    .await;
    conforms(
        &sy,
        "POST",
        "/admin/services/web/swap?force=true",
        "",
        "/admin/services/{svc}/swap",
    )
    .await;
    conforms(
        &sy,
        "POST",
        "/admin/services/web/rollback",
        "",
        "/admin/services/{svc}/rollback",
    )
    .await;
    let drain = "/admin/services/{svc}/pools/{pool}/endpoints/{addr}/{action}";
    conforms(
        &sy,
        "POST",
        &format!(
            "/admin/services/web/pools/green/endpoints/{b}/drain",
            b = b.addr
        ),
        "",
        drain,
    )
    .await;
    let r = "/admin/services/{svc}/rollout/{action}";
    conforms(&sy, "POST", "/admin/services/shop/rollout/start", "", r).await;
    conforms(&sy, "POST", "/admin/services/shop/rollout/start", "", r).await;
    // A rollout with judged steps: verdicts and their figures.
    wait_for(T, "a judged step", || async {
        service_state(&sy, "shop").await["rollout"]["last_verdict"].is_object()
    })
    .await;
    conforms(&sy, "GET", "/admin/services/shop", "", p).await;
    conforms(&sy, "POST", "/admin/services/shop/rollout/abort", "", r).await;
    // A rollout's checks and hooks, once each has a last call to show.
    conforms(&sy, "POST", "/admin/services/cart/rollout/start", "", r).await;
    wait_for(T, "the check and the hook called", || async {
        let v = service_state(&sy, "cart").await["rollout"].clone();
        v["checks"][0]["state"] == "inconclusive" && v["hooks"][0]["last_call"].is_string()
    })
    .await;
    let cart = conforms(&sy, "GET", "/admin/services/cart", "", p).await;
    assert_eq!(cart["rollout"]["checks"][0]["min"], 1.0, "{cart}");
    conforms(&sy, "GET", "/admin/status", "", "/admin/status").await;
    conforms(&sy, "POST", "/admin/reload", "", "/admin/reload").await;
    let audit = conforms(&sy, "GET", "/admin/audit", "", "/admin/audit").await;
    assert!(audit.as_array().is_some_and(|a| a.len() >= 4), "{audit}");
    conforms(&sy, "GET", "/admin/audit?limit=0", "", "/admin/audit").await;
    wait_for(T, "a second of stats", || async {
        let (_, v) = admin(
            &client(),
            "GET",
            &sy.admin_url("/admin/stats?window=5s"),
            "",
            &[],
        )
        .await;
        v["services"]["shop"]["pools"]["stable"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    conforms(&sy, "GET", "/admin/stats?window=5s", "", "/admin/stats").await;
    conforms(&sy, "GET", "/admin/stats?window=2h", "", "/admin/stats").await;
    conforms(&sy, "GET", "/admin/cluster", "", "/admin/cluster").await;
    load.finish().await;

    // Every GET the document lists is served.
    let spec = spec();
    for (path, ops) in spec["paths"].as_object().into_iter().flatten() {
        if !ops["get"].is_object() || path.contains('{') || path == "/admin/events" {
            continue;
        }
        let got = get(&client(), &sy.admin_url(path), &[]).await;
        let documented = ops["get"]["responses"]
            .as_object()
            .is_some_and(|r| r.contains_key(&got.status.as_u16().to_string()));
        assert!(
            documented,
            "GET {path} answered {}, which the document does not list",
            got.status
        );
    }
}

#[test]
fn the_checker_finds_what_does_not_fit() {
    let spec = spec();
    let schema = json!({"$ref": "#/components/schemas/EndpointView"});
    let good = json!({"address": "a:1", "healthy": true, "draining": false,
        "ejected_until": null, "inflight": 0});
    assert_eq!(check(&spec, &schema, &good, "e"), Vec::<String>::new());
    let mut extra = good.clone();
    extra["surprise"] = json!(1);
    assert_eq!(check(&spec, &schema, &extra, "e").len(), 1);
    let mut missing = good.clone();
    missing.as_object_mut().map(|o| o.remove("inflight"));
    assert_eq!(check(&spec, &schema, &missing, "e").len(), 1);
    let mut wrong = good;
    wrong["healthy"] = json!("yes");
    assert_eq!(check(&spec, &schema, &wrong, "e").len(), 1);
}
