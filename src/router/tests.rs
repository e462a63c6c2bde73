//! Table-driven tests of the decision, with MD5 vectors computed outside this code
//! (`printf %s alice | md5sum` → 6384e2b2 → 1669653170 → % 100 = 70).

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::bucket::{Hasher, Ranges};
use super::*;
use crate::config;
use crate::upstream::Registry;

fn table(toml: &str) -> RoutingTable {
    let config = config::parse(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    RoutingTable::build(&config, &mut Registry::new(), 1).expect("table builds")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

/// (service, pool, reason, bucket) for a request, every pool available.
fn run(
    t: &RoutingTable,
    host: Option<&str>,
    path: &str,
    h: &[(&str, &str)],
) -> (String, String, Reason, Option<u32>) {
    let map = headers(h);
    let view = RequestView {
        host,
        path,
        headers: &map,
    };
    let d = decide(t, &view, &mut SmallRng::seed_from_u64(7), |_| true).expect("a route");
    let svc = t.service(d.service).expect("service");
    let pool = svc.pool(d.pool).expect("pool");
    (
        svc.name.to_string(),
        pool.name.to_string(),
        d.reason,
        d.bucket,
    )
}

const AB: &str = r#"
[[routes]]
service = "exp"
[services.exp]
strategy = "ab"
weights = { A = 50, B = 50 }
hash_key = { header = "x-user-id" }
[services.exp.pools.A]
endpoints = ["127.0.0.1:1"]
[services.exp.pools.B]
endpoints = ["127.0.0.1:2"]
"#;

#[test]
fn md5_vectors_match_md5sum() {
    // (id, first 8 hex digits of md5sum, % 100)
    let cases = [
        ("alice", 0x6384e2b2u32, 70),
        ("bob", 0x9f9d51bc, 20),
        ("carol", 0xa9a01980, 92),
        ("dave", 0x16108387, 99),
        ("user-1", 0xd6d77053, 19),
        ("user-42", 0x7631bc07, 87),
        ("12345", 0x827ccb0e, 26),
        ("", 0xd41d8cd9, 93),
    ];
    let h = Hasher::new(b"");
    for (id, n, bucket) in cases {
        assert_eq!(n % 100, bucket, "vector {id}");
        assert_eq!(h.bucket(id.as_bytes(), 100), bucket, "bucket of {id:?}");
        assert_eq!(
            h.bucket(id.as_bytes(), u32::MAX),
            n % u32::MAX,
            "raw of {id:?}"
        );
    }
    // md5("saltalice") = 36264c5c...
    assert_eq!(Hasher::new(b"salt").bucket(b"alice", 100), 0x36264c5c % 100);
}

#[test]
fn ab_split_is_the_apps_js_rule() {
    // parseInt(md5(id).substr(0,8),16) % 100 < 50 ? "A" : "B"
    let t = table(AB);
    for (id, want) in [
        ("alice", "B"),
        ("bob", "A"),
        ("carol", "B"),
        ("dave", "B"),
        ("user-1", "A"),
        ("user-42", "B"),
        ("12345", "A"),
    ] {
        let (_, pool, reason, _) = run(&t, None, "/", &[("x-user-id", id)]);
        assert_eq!((pool.as_str(), reason), (want, Reason::Bucket), "user {id}");
    }
    // No key: the control (first pool), not a random one.
    assert_eq!(run(&t, None, "/", &[]).1, "A");
    assert_eq!(run(&t, None, "/", &[]).2, Reason::Default);
}

#[test]
fn ranges_follow_written_order_and_skip_zero_weights() {
    let r = Ranges::new([(0, 90), (1, 0), (2, 10)]);
    assert_eq!(r.total(), 100);
    assert_eq!(r.pool_of(0), Some(0));
    assert_eq!(r.pool_of(89), Some(0));
    assert_eq!(r.pool_of(90), Some(2));
    assert_eq!(r.pool_of(99), Some(2));
    assert_eq!(r.pool_of(100), None);
}

const CANARY: &str = r#"
[[routes]]
host = "*.example.com"
path_prefix = "/api"
service = "api"
[[routes]]
host = "shop.example.com"
service = "shop"

[services.shop]
strategy = "canary"
weights = { stable = 100, canary = 0 }
hash_key = { cookie = "uid" }
affinity_cookie = "sy_bucket"
[[services.shop.overrides]]
header = "x-canary"
equals = "true"
pool = "canary"
[[services.shop.overrides]]
cookie = "beta"
matches = "^(yes|1)$"
pool = "canary"
[[services.shop.overrides]]
header = "x-debug"
present = true
pool = "canary"
[services.shop.pools.stable]
endpoints = ["127.0.0.1:1"]
[services.shop.pools.canary]
endpoints = ["127.0.0.1:2"]

[services.api]
strategy = "canary"
weights = { stable = 90, canary = 10 }
affinity_cookie = "sy_bucket"
[services.api.pools.stable]
endpoints = ["127.0.0.1:3"]
[services.api.pools.canary]
endpoints = ["127.0.0.1:4"]
"#;

#[test]
fn routes_overrides_and_buckets() {
    let t = table(CANARY);
    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
        Reason,
    );
    let cases: &[Case] = &[
        (
            Some("shop.example.com"),
            "/",
            &[],
            "shop",
            "stable",
            Reason::Random,
        ),
        (
            Some("SHOP.Example.com:8080"),
            "/x",
            &[],
            "shop",
            "stable",
            Reason::Random,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("x-canary", "true")],
            "shop",
            "canary",
            Reason::Override,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("x-canary", "false")],
            "shop",
            "stable",
            Reason::Random,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("cookie", "a=b; beta=yes")],
            "shop",
            "canary",
            Reason::Override,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("cookie", "beta=no")],
            "shop",
            "stable",
            Reason::Random,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("x-debug", "")],
            "shop",
            "canary",
            Reason::Override,
        ),
        (
            Some("shop.example.com"),
            "/",
            &[("cookie", "uid=alice")],
            "shop",
            "stable",
            Reason::Bucket,
        ),
        // *.example.com matches deeper names only, and /api whole segments only.
        (
            Some("a.example.com"),
            "/api",
            &[],
            "api",
            "stable",
            Reason::Random,
        ),
        (
            Some("a.b.example.com"),
            "/api/v1",
            &[("cookie", "sy_bucket=95")],
            "api",
            "canary",
            Reason::Affinity,
        ),
        (
            Some("a.example.com"),
            "/api/v1",
            &[("cookie", "sy_bucket=5")],
            "api",
            "stable",
            Reason::Affinity,
        ),
    ];
    for (host, path, h, svc, pool, reason) in cases {
        let got = run(&t, *host, path, h);
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2),
            (*svc, *pool, *reason),
            "{host:?} {path} {h:?}"
        );
    }
    let none = headers(&[]);
    for (host, path) in [
        (Some("example.com"), "/api"),
        (Some("a.example.com"), "/apix"),
        (None, "/"),
        (Some("other.com"), "/"),
    ] {
        let view = RequestView {
            host,
            path,
            headers: &none,
        };
        assert_eq!(
            decide(&t, &view, &mut SmallRng::seed_from_u64(1), |_| true),
            Err(NoRoute),
            "{host:?} {path}"
        );
    }
}

#[test]
fn random_split_follows_weights_and_sets_affinity() {
    let t = table(CANARY);
    let none = headers(&[]);
    let view = RequestView {
        host: Some("x.example.com"),
        path: "/api",
        headers: &none,
    };
    let mut rng = SmallRng::seed_from_u64(42);
    let mut canary = 0;
    for _ in 0..10_000 {
        let d = decide(&t, &view, &mut rng, |_| true).expect("route");
        assert_eq!(d.reason, Reason::Random);
        assert_eq!(
            d.set_affinity, d.bucket,
            "a drawn bucket is offered as a cookie"
        );
        let b = d.bucket.expect("bucket");
        assert_eq!(d.pool, usize::from(b >= 90), "bucket {b}");
        canary += usize::from(d.pool == 1);
    }
    assert!((800..1200).contains(&canary), "canary share {canary}/10000");
}

const BLUE_GREEN: &str = r#"
[[routes]]
service = "web"
[services.web]
strategy = "blue-green"
active = "green"
preview_header = { name = "x-preview", equals = "true" }
failover = false
[[services.web.overrides]]
header = "x-pin"
equals = "blue"
pool = "blue"
[services.web.pools.blue]
endpoints = ["127.0.0.1:1"]
[services.web.pools.green]
endpoints = ["127.0.0.1:2"]
"#;

#[test]
fn blue_green_active_preview_and_override() {
    let t = table(BLUE_GREEN);
    assert_eq!(run(&t, None, "/", &[]).1, "green");
    assert_eq!(run(&t, None, "/", &[]).2, Reason::Active);
    assert_eq!(run(&t, None, "/", &[("x-preview", "true")]).1, "blue");
    assert_eq!(
        run(&t, None, "/", &[("x-preview", "true")]).2,
        Reason::Preview
    );
    assert_eq!(run(&t, None, "/", &[("x-pin", "blue")]).2, Reason::Override);
}

#[test]
fn failover_picks_first_available_pool_in_weights_order() {
    let t = table(&CANARY.replace(
        "weights = { stable = 100, canary = 0 }",
        "weights = { canary = 0, stable = 100 }",
    ));
    let map = headers(&[]);
    let view = RequestView {
        host: Some("shop.example.com"),
        path: "/",
        headers: &map,
    };
    let mut rng = SmallRng::seed_from_u64(3);
    let svc = &t.services[0];
    // stable (chosen) is down: the first available pool in weights order is canary.
    let d = decide(&t, &view, &mut rng, |p| &*p.name != "stable").expect("route");
    assert_eq!(
        (&*svc.pools[d.pool].name, d.reason, d.available),
        ("canary", Reason::Failover, true)
    );
    // Nothing is up.
    let d = decide(&t, &view, &mut rng, |_| false).expect("route");
    assert!(!d.available);
    // Without failover the request stays on its pool, unavailable.
    let bg = table(BLUE_GREEN);
    let d = decide(&bg, &view, &mut rng, |p| &*p.name != "green").expect("route");
    assert_eq!(
        (&*bg.services[0].pools[d.pool].name, d.available),
        ("green", false)
    );
}

#[test]
fn matcher_edge_cases() {
    use super::matcher::{cookie, path_matches, strip_port};
    assert!(path_matches("/", "/anything"));
    assert!(path_matches("/api", "/api"));
    assert!(path_matches("/api", "/api/"));
    assert!(!path_matches("/api", "/apix"));
    assert!(!path_matches("/api", "/"));
    assert_eq!(strip_port("[::1]:8080"), "[::1]");
    assert_eq!(strip_port("example.com:80"), "example.com");
    assert_eq!(strip_port("example.com"), "example.com");
    let h = headers(&[("cookie", "a=1; b = 2 ;c=3"), ("cookie", "d=4")]);
    assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
    assert_eq!(cookie(&h, "d"), Some(&b"4"[..]));
    assert_eq!(cookie(&h, "e"), None);
}

#[test]
fn failover_never_picks_the_mirror_pool() {
    let t = table(
        r#"
[[routes]]
service = "svc"
[services.svc]
strategy = "canary"
weights = { stable = 100, shadow = 0, canary = 0 }
[services.svc.mirror]
pool = "shadow"
[services.svc.pools.stable]
endpoints = ["127.0.0.1:1"]
[services.svc.pools.shadow]
endpoints = ["127.0.0.1:2"]
[services.svc.pools.canary]
endpoints = ["127.0.0.1:3"]
"#,
    );
    let map = headers(&[]);
    let view = RequestView {
        host: None,
        path: "/",
        headers: &map,
    };
    let svc = &t.services[0];
    let d = decide(&t, &view, &mut SmallRng::seed_from_u64(1), |p| {
        &*p.name != "stable"
    })
    .expect("route");
    assert_eq!(
        (&*svc.pools[d.pool].name, d.reason),
        ("canary", Reason::Failover)
    );
    let d = decide(&t, &view, &mut SmallRng::seed_from_u64(1), |p| {
        &*p.name == "shadow"
    })
    .expect("route");
    assert!(
        !d.available,
        "only the mirror pool is up: nothing may serve"
    );
}

#[test]
fn reason_all_is_in_declaration_order() {
    // metrics::PoolMetrics::decision indexes its counters by discriminant.
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
}

#[test]
fn bucket_matches_md5_for_every_salt_and_key_length() {
    use md5::{Digest, Md5};
    // Salt and key lengths around every block boundary, salts longer than a block included:
    // the salted state is cloned and finished per request.
    let bytes: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
    for salt_len in [0, 1, 5, 8, 19, 55, 56, 63, 64, 65, 119, 120, 128, 130] {
        let salt = &bytes[..salt_len];
        let hasher = Hasher::new(salt);
        for key_len in 0..=200 {
            let key = &bytes[salt_len..salt_len + key_len];
            let mut h = Md5::new();
            h.update(salt);
            h.update(key);
            let d = h.finalize();
            let want = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            for total in [1, 7, 100, u32::MAX] {
                assert_eq!(
                    hasher.bucket(key, total),
                    want % total,
                    "salt {salt_len} key {key_len} total {total}"
                );
            }
        }
    }
}
