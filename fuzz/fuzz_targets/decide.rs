//! Fuzz target: `router::decide` on structured requests against three fixed tables (canary
//! with overrides and an affinity cookie, A/B with a hash key and salt, blue-green with a
//! preview header), then the request rewrite (`proxy::forward::check_request` and
//! `prepare_request`) on the same request parts.
//! Besides "never panics", it checks what the decision and the rewrite promise.
#![no_main]

use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::proxy::forward::{ClientFacts, check_request, is_upgrade_request, prepare_request};
use switchyard::router::{Decision, PoolTable, Reason, RequestView, RoutingTable, decide};
use switchyard::upstream::Registry;

const CANARY: &str = r#"
[[routes]]
host = "shop.example.com"
path_prefix = "/checkout"
service = "shop"

[[routes]]
host = "*.example.com"
path_prefix = "/"
service = "shop"

[services.shop]
strategy = "canary"
weights = { stable = 95, canary = 5 }
affinity_cookie = "sy_bucket"
affinity_max_age = "24h"
failover = true

[[services.shop.overrides]]
header = "x-canary"
equals = "true"
pool = "canary"

[[services.shop.overrides]]
cookie = "account"
matches = "^(staff|qa)-[0-9]+$"
pool = "canary"

[[services.shop.overrides]]
header = "x-force-stable"
present = true
pool = "stable"

[services.shop.pools.stable]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[services.shop.pools.canary]
endpoints = ["127.0.0.1:9003"]
min_available = 0
"#;

const AB: &str = r#"
[[routes]]
path_prefix = "/signup"
service = "signup"

[services.signup]
strategy = "ab"
weights = { A = 50, B = 30, C = 20 }
hash_key = { header = "x-user-id" }
hash_salt = "signup-form-v2:"
failover = false

[services.signup.pools.A]
endpoints = ["127.0.0.1:9001"]

[services.signup.pools.B]
endpoints = ["127.0.0.1:9002"]

[services.signup.pools.C]
endpoints = ["127.0.0.1:9003"]
"#;

const BLUE_GREEN: &str = r#"
[[routes]]
host = "web.internal"
path_prefix = "/"
service = "web"

[services.web]
strategy = "blue-green"
active = "blue"
preview_header = { name = "x-preview", equals = "true" }

[[services.web.overrides]]
cookie = "uid"
equals = "tester"
pool = "green"

[services.web.pools.blue]
endpoints = ["127.0.0.1:9001"]

[services.web.pools.green]
endpoints = ["127.0.0.1:9002"]
"#;

fn tables() -> &'static [RoutingTable; 3] {
    static TABLES: OnceLock<[RoutingTable; 3]> = OnceLock::new();
    TABLES.get_or_init(|| {
        [CANARY, AB, BLUE_GREEN].map(|text| {
            let cfg = switchyard::config::parse(text, Path::new("/nonexistent/fuzz.toml"))
                .unwrap_or_else(|e| panic!("fixed fuzz config must be valid: {e}"));
            RoutingTable::build(&cfg, &mut Registry::new(), 1)
                .unwrap_or_else(|e| panic!("fixed fuzz config must build: {e}"))
        })
    })
}

#[derive(Arbitrary, Debug)]
enum Name {
    Host,
    Cookie,
    XCanary,
    XForceStable,
    XUserId,
    XPreview,
    Connection,
    Upgrade,
    Te,
    KeepAlive,
    TransferEncoding,
    ProxyAuthorization,
    XForwardedFor,
    Expect,
    Other(String),
}

impl Name {
    fn header(&self) -> Option<HeaderName> {
        let s = match self {
            Name::Host => "host",
            Name::Cookie => "cookie",
            Name::XCanary => "x-canary",
            Name::XForceStable => "x-force-stable",
            Name::XUserId => "x-user-id",
            Name::XPreview => "x-preview",
            Name::Connection => "connection",
            Name::Upgrade => "upgrade",
            Name::Te => "te",
            Name::KeepAlive => "keep-alive",
            Name::TransferEncoding => "transfer-encoding",
            Name::ProxyAuthorization => "proxy-authorization",
            Name::XForwardedFor => "x-forwarded-for",
            Name::Expect => "expect",
            Name::Other(s) => s,
        };
        HeaderName::from_bytes(s.as_bytes()).ok()
    }
}

#[derive(Arbitrary, Debug)]
enum CookieName {
    Bucket,
    Account,
    Uid,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    table: u8,
    host: Option<String>,
    /// Host sent in the request target (absolute form) instead of only in `Host`.
    absolute: bool,
    path: String,
    method: u8,
    version: u8,
    headers: Vec<(Name, Vec<u8>)>,
    cookies: Vec<(CookieName, String)>,
    seed: u64,
    /// Bit i: pool i (stable, canary, A, B, C, blue, green) has an available endpoint.
    ready: u8,
    peer: IpAddr,
    https: bool,
}

fn pool_bit(p: &PoolTable) -> u32 {
    match &*p.name {
        "stable" => 0,
        "canary" => 1,
        "A" => 2,
        "B" => 3,
        "C" => 4,
        "blue" => 5,
        "green" => 6,
        _ => 7,
    }
}

fuzz_target!(|input: Input| {
    let table = &tables()[usize::from(input.table % 3)];

    let mut headers = http::HeaderMap::new();
    if let Some(host) = input
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.append(http::header::HOST, host);
    }
    for (name, value) in &input.headers {
        if let (Some(n), Ok(v)) = (name.header(), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    if !input.cookies.is_empty() {
        let jar: Vec<String> = input
            .cookies
            .iter()
            .map(|(n, v)| {
                let n = match n {
                    CookieName::Bucket => "sy_bucket",
                    CookieName::Account => "account",
                    CookieName::Uid => "uid",
                    CookieName::Other(s) => s,
                };
                format!("{n}={v}")
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&jar.join("; ")) {
            headers.append(http::header::COOKIE, v);
        }
    }

    // === decide ===
    let ready = |p: &PoolTable| input.ready & (1 << pool_bit(p)) != 0;
    let view = RequestView {
        host: input.host.as_deref(),
        path: &input.path,
        headers: &headers,
    };
    let first = decide(
        table,
        &view,
        &mut SmallRng::seed_from_u64(input.seed),
        ready,
    );
    // A pure function: the same inputs and seed give the same decision.
    let again = decide(
        table,
        &view,
        &mut SmallRng::seed_from_u64(input.seed),
        ready,
    );
    assert_eq!(first, again, "decide is not deterministic");
    if let Ok(d) = first {
        check_decision(table, &d, &ready);
    }

    // === prepare_request ===
    let method = match input.method % 5 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::HEAD,
        3 => Method::OPTIONS,
        _ => Method::CONNECT,
    };
    let version = match input.version % 4 {
        0 => Version::HTTP_10,
        1 | 2 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let uri = match (&input.host, input.absolute) {
        (Some(h), true) => format!("http://{h}{}", input.path),
        _ => input.path.clone(),
    };
    let mut builder = Request::builder().method(method).uri(uri).version(version);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    // Skip what `http` itself refuses to build (hyper would never hand it to us).
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    let Ok(peer_ip) = HeaderValue::from_str(&input.peer.to_string()) else {
        return;
    };
    let facts = ClientFacts {
        peer_ip: peer_ip.clone(),
        https: input.https,
    };
    let upgrade = is_upgrade_request(&req);
    let prepared =
        check_request(&mut req).and_then(|host| prepare_request(&mut req, &host, &facts, upgrade));
    if prepared.is_ok() {
        check_prepared(&req, &peer_ip, upgrade);
    }
});

fn check_decision(table: &RoutingTable, d: &Decision, ready: &impl Fn(&PoolTable) -> bool) {
    let svc = table
        .service(d.service)
        .expect("decision names a service of the table");
    let pool = svc
        .pool(d.pool)
        .expect("decision names a pool of its service");
    let total = svc.ranges.total();
    if let Some(b) = d.bucket {
        assert!(b < total, "bucket {b} outside 0..{total}");
    }
    if let Some(b) = d.set_affinity {
        assert!(b < total, "affinity bucket {b} outside 0..{total}");
        assert!(
            svc.affinity.is_some(),
            "affinity cookie set without affinity"
        );
    }
    if d.reason == Reason::Failover {
        assert!(svc.failover && ready(pool), "failover to an unready pool");
        assert!(d.available);
    }
    if d.available {
        assert!(ready(pool), "available decision on an unready pool");
    }
}

fn check_prepared(req: &Request<()>, peer_ip: &HeaderValue, upgrade: bool) {
    use http::header::*;
    assert_eq!(req.version(), Version::HTTP_11);
    assert!(req.uri().scheme().is_none() && req.uri().authority().is_none());
    let h = req.headers();
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
        "expect",
    ] {
        assert!(!h.contains_key(name), "{name} left in the upstream request");
    }
    if !upgrade {
        assert!(
            !h.contains_key(CONNECTION),
            "connection left in the upstream request"
        );
        assert!(
            !h.contains_key(UPGRADE),
            "upgrade left in the upstream request"
        );
    }
    if let Some(te) = h.get(TE) {
        assert!(
            te.as_bytes().eq_ignore_ascii_case(b"trailers"),
            "te {te:?} kept"
        );
    }
    let xff = h.get("x-forwarded-for").expect("x-forwarded-for set");
    assert!(
        xff.as_bytes().ends_with(peer_ip.as_bytes()),
        "x-forwarded-for {xff:?} lacks the peer"
    );
    assert!(h.contains_key("x-forwarded-proto"));
    assert!(h.get_all(HOST).iter().count() <= 1, "more than one Host");
}
