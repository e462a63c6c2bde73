//! Cost of the per-request work that does not touch a socket: the routing decision and the
//! upstream request rewrite.
//!
//! Run: `cargo bench --bench router -- --warm-up-time 1 --measurement-time 3`.
//! Both run on every request, whose whole user-space work is a few microseconds.

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::config;
use switchyard::proxy::forward::{ClientFacts, check_request, for_connection, prepare_request};
use switchyard::router::{RequestView, RoutingTable, decide};
use switchyard::upstream::Registry;

/// The demo's shape: an A/B test, a blue/green service and a canary with an override.
const TABLE: &str = r#"
[[routes]]
path_prefix = "/ab"
service = "checkout"

[[routes]]
path_prefix = "/bg"
service = "web"

[[routes]]
path_prefix = "/"
service = "shop"

[services.shop]
strategy = "canary"
weights = { stable = 90, canary = 10 }

[[services.shop.overrides]]
header = "x-canary"
equals = "true"
pool = "canary"

[services.shop.pools.stable]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[services.shop.pools.canary]
endpoints = ["127.0.0.1:9003"]

[services.checkout]
strategy = "ab"
weights = { A = 50, B = 50 }
hash_key = { header = "x-user-id" }

[services.checkout.pools.A]
endpoints = ["127.0.0.1:9004"]

[services.checkout.pools.B]
endpoints = ["127.0.0.1:9005"]

[services.web]
strategy = "blue-green"
active = "blue"
preview_header = { name = "x-preview", equals = "true" }

[services.web.pools.blue]
endpoints = ["127.0.0.1:9006"]

[services.web.pools.green]
endpoints = ["127.0.0.1:9007"]
"#;

fn table(toml: &str) -> RoutingTable {
    let config = config::parse(toml, Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"));
    RoutingTable::build(&config, &mut Registry::new(), 1).expect("bench table builds")
}

/// Ten host-specific routes, none of which a request to `other.example.com` matches.
fn ten_routes() -> String {
    let mut toml = String::new();
    for i in 0..10 {
        toml.push_str(&format!(
            "[[routes]]\nhost = \"svc{i}.example.com\"\npath_prefix = \"/api/v{i}\"\nservice = \"s{i}\"\n\n\
             [services.s{i}]\nstrategy = \"canary\"\nweights = {{ stable = 100 }}\n\n\
             [services.s{i}.pools.stable]\nendpoints = [\"127.0.0.1:{}\"]\n\n",
            9100 + i
        ));
    }
    toml
}

/// The headers a browser-ish client sends, plus `extra`.
fn headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let base = [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=4f9d2c7e1b; theme=dark; consent=1"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    for (k, v) in base.iter().chain(extra) {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
            HeaderValue::from_str(v).expect("valid value"),
        );
    }
    map
}

fn bench_decide(c: &mut Criterion) {
    let main = table(TABLE);
    let miss = table(&ten_routes());
    let plain = headers(&[]);
    let keyed = headers(&[("x-user-id", "3f2c9a4e-5b1d-4c8e-9f7a-0d6b2e1c8a47")]);
    let forced = headers(&[("x-canary", "true")]);
    // (name, table, host, path, headers)
    let cases: [(&str, &RoutingTable, &str, &str, &HeaderMap); 5] = [
        (
            "keyless canary 90/10 random",
            &main,
            "shop.example.com",
            "/products/42",
            &plain,
        ),
        (
            "keyed md5 header (ab 50/50)",
            &main,
            "shop.example.com",
            "/ab/cart",
            &keyed,
        ),
        (
            "override hit (x-canary: true)",
            &main,
            "shop.example.com",
            "/products/42",
            &forced,
        ),
        (
            "blue-green active",
            &main,
            "shop.example.com",
            "/bg/index.html",
            &plain,
        ),
        (
            "route miss among 10 routes",
            &miss,
            "other.example.com",
            "/api/v3/items",
            &plain,
        ),
    ];

    let mut group = c.benchmark_group("decide");
    for (name, t, host, path, h) in cases {
        let mut rng = SmallRng::seed_from_u64(7);
        let view = RequestView {
            host: Some(host),
            path,
            headers: h,
        };
        group.bench_function(name, |b| {
            b.iter(|| decide(black_box(t), black_box(&view), &mut rng, |_| true))
        });
    }
    group.finish();
}

fn realistic_request() -> Request<()> {
    let mut req = Request::builder()
        .method("GET")
        .uri("/products/42?ref=home")
        .version(Version::HTTP_11)
        .body(())
        .expect("valid request");
    *req.headers_mut() = headers(&[]);
    req
}

fn bench_prepare_request(c: &mut Criterion) {
    let facts = ClientFacts {
        peer_ip: HeaderValue::from_static("10.1.2.3"),
        https: false,
    };
    let pool_name = HeaderName::from_static("x-switchyard-pool");
    let pool_value = HeaderValue::from_static("stable");
    c.bench_function("request rewrite: check + prepare + for_connection", |b| {
        // Building the request is setup, not measured: the rewrite works in place, in the
        // three steps the proxy service takes (before routing, once routed, once the serving
        // pool and connection are known).
        b.iter_batched(
            realistic_request,
            |mut req| {
                let res = check_request(black_box(&mut req))
                    .and_then(|host| prepare_request(&mut req, &host, &facts, false))
                    .and_then(|()| for_connection(&mut req, Some((&pool_name, &pool_value)), None));
                black_box(res).expect("request is valid");
                req
            },
            BatchSize::SmallInput,
        )
    });
}

/// What the metrics add per request: the latency/status record into the pool's statistics
/// and the decision counter (a real Prometheus recorder installed), against doing nothing.
fn bench_metrics(c: &mut Criterion) {
    let _ = switchyard::metrics::install();
    let stats = std::sync::Arc::new(switchyard::stats::PoolStats::default());
    let pool = switchyard::metrics::PoolMetrics::new("bench", "stable", stats.clone(), false);
    let elapsed = std::time::Duration::from_micros(850);
    c.bench_function("metrics/none (baseline)", |b| {
        b.iter(|| black_box((black_box(200u16), black_box(elapsed))))
    });
    c.bench_function("metrics/record status + latency + decision", |b| {
        b.iter(|| {
            pool.stats.record(black_box(200), black_box(elapsed));
            pool.decision(black_box(switchyard::router::Reason::Random));
        })
    });
}

criterion_group!(benches, bench_decide, bench_prepare_request, bench_metrics);
criterion_main!(benches);
