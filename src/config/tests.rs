//! Config loading: the full model, defaults, every diagnostic with its key path and line:column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "config/switchyard.toml";

fn no_env(_: &str) -> Option<String> {
    None
}

fn ok(text: &str) -> Config {
    match parse_with_env(text, Path::new(FILE), &no_env) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_with_env(text, Path::new(FILE), &no_env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigErrors(diagnostics)) => diagnostics,
    }
}

/// 1-based line:column of the first `needle` in `text`, computed independently of `locate`.
/// A `|` in the needle marks the exact column: `"consecutive_failures = |0"`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let (before, after) = needle.split_once('|').unwrap_or(("", needle));
    let offset = text
        .find(&format!("{before}{after}"))
        .unwrap_or_else(|| panic!("needle {needle:?} not in text"))
        + before.len();
    let (mut line, mut col) = (1, 1);
    for c in text[..offset].chars() {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

fn duration(s: &str) -> Duration {
    parse_duration(s).unwrap_or_else(|e| panic!("{e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A valid canary service `shop`: `keys` go into `[services.shop]`, `tables` after the pools.
fn shop(keys: &str, tables: &str) -> String {
    format!(
        r#"[[routes]]
service = "shop"

[services.shop]
strategy = "canary"
{keys}

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080"]

[services.shop.pools.canary]
endpoints = ["10.0.0.2:8080"]
{tables}
"#
    )
}

fn weighted(keys: &str, tables: &str) -> String {
    shop(
        &format!("weights = {{ stable = 90, canary = 10 }}\n{keys}"),
        tables,
    )
}

/// A valid blue-green service `web`: `keys` go into `[services.web]`.
fn web(keys: &str, pools: &str) -> String {
    format!(
        r#"[[routes]]
service = "web"

[services.web]
strategy = "blue-green"
{keys}

{pools}
"#
    )
}

const BLUE_GREEN_POOLS: &str = r#"[services.web.pools.blue]
endpoints = ["10.0.1.1:8080"]

[services.web.pools.green]
endpoints = ["10.0.1.2:8080"]"#;

// === the full model ===

const FULL: &str = r#"# every key, non-default values where there is a choice
[server]
listen = "127.0.0.1:18080"
request_timeout = "45s"
connect_timeout = "1500ms"
header_read_timeout = "5s"
idle_timeout = "2m"
max_header_bytes = 32768
shutdown_grace = "1m30s"
pool_header = "X-Served-By"

[server.tls]
listen = "[::1]:18443"
certs = [
  { cert = "certs/shop.pem", key = "certs/shop.key" },
  { cert = "/etc/ssl/other.pem", key = "/etc/ssl/other.key" },
]

[admin]
listen = "10.1.2.3:9901"
token = "s3cret"
persist = false

[[routes]]
host = "Shop.Example.com"
path_prefix = "/api/"
service = "shop"

[[routes]]
host = "*.Example.com"
service = "web"

[services.shop]
strategy = "canary"
weights = { stable = 95, canary = 5, dark = 0 }
hash_key = { header = "X-User-Id" }
hash_salt = "salt-"
affinity_cookie = "sy_bucket"
affinity_max_age = "12h"
failover = false
hold_timeout = "250ms"

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
pool = "dark"

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080", "10.0.0.2:8080", "app.internal:80"]
drained = ["app.internal:80", "10.0.0.1:8080"]
balance = "least-requests"
min_available = 2
protocol = "h2c"

[services.shop.pools.canary]
endpoints = ["[::1]:8081"]
protocol = "h2"
ca = "ca.pem"
sni = "app.internal"

[services.shop.pools.dark]
endpoints = ["10.0.0.9:8080"]
tls = true

[services.shop.health]
path = "/ready"
interval = "10s"
timeout = "2s"
unhealthy_threshold = 2
healthy_threshold = 3

[services.shop.outlier]
consecutive_failures = 7
ejection = "45s"

[services.shop.rollout]
baseline = "stable"
canary = "canary"
steps = [1, 50, 100]
interval = "5m"
min_requests = 200
max_error_rate = 0.05
max_error_rate_increase = 0.01
max_p99_increase = "200ms"
max_p99 = "500ms"
pause_at = [50]
confidence = 0.995
auto_start = true

[services.shop.mirror]
pool = "dark"
percent = 25
max_body_bytes = 1024

[services.web]
strategy = "blue-green"
active = "green"
preview_header = { name = "X-Preview", equals = "true" }
prepromotion_checks = ["/health", "/api/test"]

[services.web.pools.blue]
endpoints = ["10.0.1.1:8080"]

[services.web.pools.green]
endpoints = ["10.0.1.2:8080"]
"#;

#[test]
fn full_config_parses_into_the_model() {
    // The pool's CA bundle is read at load: a real one, at an absolute path.
    let files = ClusterFiles::new();
    let ca_path = files.dir.path().join("ca.pem");
    let full = FULL.replace(
        "ca = \"ca.pem\"",
        &format!("ca = \"{}\"", ca_path.display()),
    );
    let c = match parse_with_env(&full, Path::new("/etc/sy/switchyard.toml"), &no_env) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.path, PathBuf::from("/etc/sy/switchyard.toml"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let s = &c.server;
    assert_eq!(s.listen, addr("127.0.0.1:18080"));
    assert_eq!(s.request_timeout, Duration::from_secs(45));
    assert_eq!(s.connect_timeout, Duration::from_millis(1500));
    assert_eq!(s.header_read_timeout, Duration::from_secs(5));
    assert_eq!(s.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.max_header_bytes, 32768);
    assert_eq!(s.shutdown_grace, Duration::from_secs(90));
    assert_eq!(
        s.pool_header.as_ref().map(|h| h.as_str()),
        Some("x-served-by")
    );
    let tls = s.tls.as_ref().expect("server.tls is set in FULL");
    assert_eq!(tls.listen, addr("[::1]:18443"));
    assert_eq!(
        tls.certs,
        vec![
            CertPair {
                cert: "/etc/sy/certs/shop.pem".into(),
                key: "/etc/sy/certs/shop.key".into()
            },
            CertPair {
                cert: "/etc/ssl/other.pem".into(),
                key: "/etc/ssl/other.key".into()
            },
        ]
    );

    assert_eq!(c.admin.listen, addr("10.1.2.3:9901"));
    assert_eq!(c.admin.token, Some(Secret("s3cret".into())));
    assert!(!c.admin.persist);

    assert_eq!(c.routes.len(), 2);
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Exact("shop.example.com".into()))
    );
    assert_eq!(c.routes[0].path_prefix, "/api");
    assert_eq!(c.routes[0].service, "shop");
    assert_eq!(
        c.routes[1].host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    assert_eq!(c.routes[1].path_prefix, "/");

    assert_eq!(
        c.services.keys().collect::<Vec<_>>(),
        vec!["shop", "web"],
        "services keep file order"
    );
    let shop = &c.services["shop"];
    assert_eq!(shop.name, "shop");
    assert_eq!(shop.strategy, Strategy::Canary);
    assert_eq!(
        shop.weights
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        vec![("stable", 95), ("canary", 5), ("dark", 0)],
        "weights keep written order"
    );
    assert_eq!(
        shop.hash_key,
        Some(KeySource::Header(http::HeaderName::from_static(
            "x-user-id"
        )))
    );
    assert_eq!(shop.hash_salt, "salt-");
    assert_eq!(shop.affinity_cookie.as_deref(), Some("sy_bucket"));
    assert_eq!(shop.affinity_max_age, Duration::from_secs(12 * 3600));
    assert!(!shop.failover);
    assert_eq!(shop.hold_timeout, Duration::from_millis(250));

    assert_eq!(shop.overrides.len(), 3);
    let o = &shop.overrides;
    assert_eq!(
        o[0].source,
        KeySource::Header(http::HeaderName::from_static("x-canary"))
    );
    assert!(matches!(&o[0].matcher, ValueMatch::Equals(v) if v == "true"));
    assert_eq!(o[0].pool, "canary");
    assert_eq!(o[1].source, KeySource::Cookie("beta".into()));
    assert!(matches!(&o[1].matcher, ValueMatch::Matches(r) if r.as_str() == "^(yes|1)$"));
    assert!(matches!(o[2].matcher, ValueMatch::Present));
    assert_eq!(o[2].pool, "dark");

    assert_eq!(
        shop.pools.keys().collect::<Vec<_>>(),
        vec!["stable", "canary", "dark"]
    );
    assert_eq!(
        shop.pools["stable"],
        Pool {
            name: "stable".into(),
            endpoints: vec![
                "10.0.0.1:8080".into(),
                "10.0.0.2:8080".into(),
                "app.internal:80".into()
            ],
            drained: vec!["app.internal:80".into(), "10.0.0.1:8080".into()],
            balance: Balance::LeastRequests,
            min_available: 2,
            protocol: Protocol::H2c,
            tls: false,
            ca: None,
            sni: None,
        }
    );
    assert_eq!(
        shop.pools["canary"],
        Pool {
            name: "canary".into(),
            endpoints: vec!["[::1]:8081".into()],
            drained: vec![],
            balance: Balance::RoundRobin,
            min_available: 1,
            protocol: Protocol::H2,
            tls: true,
            ca: Some(CaBundle {
                pem: std::fs::read(&ca_path).expect("ca.pem").into(),
                path: ca_path,
            }),
            sni: Some("app.internal".into()),
        }
    );
    assert_eq!(shop.pools["dark"].protocol, Protocol::Http1);
    assert!(shop.pools["dark"].tls);

    assert_eq!(
        shop.health,
        Some(Health {
            path: "/ready".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
            healthy_threshold: 3,
        })
    );
    assert_eq!(
        shop.outlier,
        Some(Outlier {
            consecutive_failures: 7,
            ejection: Duration::from_secs(45)
        })
    );
    assert_eq!(
        shop.rollout,
        Some(Rollout {
            baseline: "stable".into(),
            canary: "canary".into(),
            steps: vec![1, 50, 100],
            interval: Duration::from_secs(300),
            min_requests: 200,
            max_error_rate: Some(0.05),
            max_error_rate_increase: Some(0.01),
            max_p99_increase: Some(Duration::from_millis(200)),
            max_p99: Some(Duration::from_millis(500)),
            pause_at: vec![50],
            webhooks: Vec::new(),
            prometheus: None,
            checks: Vec::new(),
            confidence: 0.995,
            auto_start: true,
        })
    );
    assert_eq!(
        shop.mirror,
        Some(Mirror {
            pool: "dark".into(),
            percent: 25,
            max_body_bytes: 1024
        })
    );
    assert!(shop.active.is_none() && shop.preview_header.is_none());

    let web = &c.services["web"];
    assert_eq!(web.strategy, Strategy::BlueGreen);
    assert!(web.weights.is_empty());
    assert_eq!(web.active.as_deref(), Some("green"));
    assert_eq!(
        web.preview_header,
        Some(HeaderEquals {
            name: http::HeaderName::from_static("x-preview"),
            equals: "true".into()
        })
    );
    assert_eq!(web.prepromotion_checks, vec!["/health", "/api/test"]);
    assert_eq!(web.pool_order(), vec!["blue", "green"]);
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = ok(&weighted("", ""));
    let s = &c.server;
    assert_eq!(s.listen, addr("0.0.0.0:8080"));
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.connect_timeout, Duration::from_secs(2));
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.max_header_bytes, 65536);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(
        s.pool_header.as_ref().map(|h| h.as_str()),
        Some("x-switchyard-pool")
    );
    assert!(s.tls.is_none());
    assert_eq!(c.admin.listen, addr("127.0.0.1:9901"));
    assert!(c.admin.token.is_none());
    assert!(c.admin.persist);
    assert!(c.admin.allowed_hosts.is_empty());
    assert_eq!(c.routes[0].host, None);
    assert_eq!(c.routes[0].path_prefix, "/");

    let shop = &c.services["shop"];
    assert_eq!(shop.hash_key, None);
    assert_eq!(shop.hash_salt, "");
    assert_eq!(shop.affinity_cookie, None);
    assert_eq!(shop.affinity_max_age, Duration::from_secs(24 * 3600));
    assert!(shop.failover);
    assert_eq!(shop.hold_timeout, Duration::ZERO);
    assert!(shop.overrides.is_empty());
    assert!(shop.health.is_none() && shop.outlier.is_none());
    assert!(shop.rollout.is_none() && shop.mirror.is_none());
    let stable = &shop.pools["stable"];
    assert_eq!(stable.balance, Balance::RoundRobin);
    assert_eq!(stable.min_available, 1);
    assert_eq!(stable.protocol, Protocol::Http1);
    assert!(stable.drained.is_empty());
    assert!(!stable.tls);
    assert!(c.warnings.is_empty());
}

#[test]
fn section_defaults_are_the_documented_ones() {
    let c = ok(&weighted(
        "",
        "[services.shop.health]\n[services.shop.outlier]\n[services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n[services.shop.mirror]\npool = \"canary\"\n",
    ));
    let shop = &c.services["shop"];
    assert_eq!(
        shop.health,
        Some(Health {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 1,
        })
    );
    assert_eq!(
        shop.outlier,
        Some(Outlier {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30)
        })
    );
    assert_eq!(
        shop.rollout,
        Some(Rollout {
            baseline: "stable".into(),
            canary: "canary".into(),
            steps: vec![5, 10, 25, 50, 100],
            interval: Duration::from_secs(60),
            min_requests: 50,
            max_error_rate: None,
            max_error_rate_increase: None,
            max_p99_increase: None,
            max_p99: None,
            pause_at: Vec::new(),
            webhooks: Vec::new(),
            prometheus: None,
            checks: Vec::new(),
            confidence: 0.99,
            auto_start: false,
        })
    );
    assert_eq!(
        shop.mirror,
        Some(Mirror {
            pool: "canary".into(),
            percent: 10,
            max_body_bytes: 65536
        })
    );
}

#[test]
fn small_details() {
    // "" disables the pool header.
    let c = ok(&format!(
        "[server]\npool_header = \"\"\n{}",
        weighted("", "")
    ));
    assert!(c.server.pool_header.is_none());
    // The takeover socket: by default beside the config file, else relative to its directory.
    assert_eq!(
        c.server.takeover_socket.as_os_str(),
        format!("{}.takeover.sock", c.path.display()).as_str()
    );
    let c = ok(&format!(
        "[server]\ntakeover_socket = \"run/sy.sock\"\n{}",
        weighted("", "")
    ));
    assert_eq!(
        c.server.takeover_socket,
        c.path
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .join("run/sy.sock")
    );
    // A token from the environment; a non-loopback admin address is fine with one.
    let text = format!(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"SY_TOKEN\"\n{}",
        weighted("", "")
    );
    let env = |name: &str| (name == "SY_TOKEN").then(|| "t0k".to_owned());
    let c = parse_with_env(&text, Path::new(FILE), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.token, Some(Secret("t0k".into())));
    // Allowed admin host names are kept lower-case, without a trailing dot.
    let c = ok(&format!(
        "[admin]\nallowed_hosts = [\"Admin.Internal.\", \"sy_admin\"]\n{}",
        weighted("", "")
    ));
    assert_eq!(c.admin.allowed_hosts, ["admin.internal", "sy_admin"]);
    // A relative config path resolves relative paths against its own directory.
    let text = weighted("", "").replace(
        "[services.shop.pools.canary]\n",
        "[services.shop.pools.canary]\ntls = true\nca = \"ca.pem\"\n",
    );
    // The bundle is read at load (there is none here): the error names the resolved path.
    let e = parse_with_env(&text, Path::new("switchyard.toml"), &no_env)
        .expect_err("no ca.pem in the current directory");
    assert!(e.to_string().contains("cannot read ca.pem:"), "{e}");
    // Trailing-slash normalisation, and "/" alone stays.
    let c = ok(&weighted("", "").replace(
        "service = \"shop\"\n",
        "service = \"shop\"\npath_prefix = \"/\"\n",
    ));
    assert_eq!(c.routes[0].path_prefix, "/");
}

#[test]
fn warns_about_a_pool_without_weight() {
    let text = shop(
        "weights = { stable = 100 }",
        "[services.shop.pools.spare]\nendpoints = [\"10.0.0.3:8080\"]\n[[services.shop.overrides]]\nheader = \"x-spare\"\npresent = true\npool = \"spare\"\n",
    );
    let c = ok(&text);
    assert_eq!(
        c.warnings,
        vec!["services.shop.weights: pool \"canary\" has no weight entry, so it gets weight 0"],
        "an override target is unweighted on purpose and not warned about"
    );
    assert_eq!(
        c.services["shop"].pool_order(),
        vec!["stable", "canary", "spare"]
    );
}

// === diagnostics ===

#[test]
fn display_format() {
    let mut d = Diagnostic {
        file: FILE.into(),
        line: Some(14),
        col: Some(11),
        key_path: "services.shop.weights".into(),
        message: "unknown pool \"canry\" (pools: stable, canary)".into(),
    };
    assert_eq!(
        d.to_string(),
        "config/switchyard.toml:14:11: services.shop.weights: unknown pool \"canry\" (pools: stable, canary)"
    );
    d.line = None;
    d.col = None;
    assert_eq!(
        d.to_string(),
        "config/switchyard.toml: services.shop.weights: unknown pool \"canry\" (pools: stable, canary)"
    );
    d.key_path.clear();
    assert_eq!(
        d.to_string(),
        "config/switchyard.toml: unknown pool \"canry\" (pools: stable, canary)"
    );
    let two = ConfigErrors(vec![d.clone(), d]);
    assert_eq!(
        two.to_string(),
        "config/switchyard.toml: unknown pool \"canry\" (pools: stable, canary)\n".repeat(2)
    );
}

#[test]
fn documented_error_example_is_exact() {
    // Line 14, column 11, as the documented example of a config error shows.
    let text = r#"[server]
listen = "0.0.0.0:8080"

[admin]
listen = "127.0.0.1:9901"

[[routes]]
host = "shop.example.com"
service = "shop"

[services.shop]
strategy = "canary"
hash_key = { header = "x-user-id" }
weights = { stable = 95, canry = 5 }

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080"]

[services.shop.pools.canary]
endpoints = ["10.0.0.3:8080"]
"#;
    let d = errors(text);
    assert_eq!(
        d.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "config/switchyard.toml:14:11: services.shop.weights: unknown pool \"canry\" (pools: stable, canary)"
        ]
    );
}

/// One problem per case: (toml, key path, needle whose position the diagnostic must point at
/// (None: no position), a part of the message).
fn error_cases() -> Vec<(String, &'static str, Option<&'static str>, &'static str)> {
    let w = |k: &str| weighted(k, "");
    let wt = |t: &str| weighted("", t);
    let pool_canary = |extra: &str| {
        weighted("", "").replace(
            "[services.shop.pools.canary]\nendpoints = [\"10.0.0.2:8080\"]\n",
            &format!("[services.shop.pools.canary]\n{extra}\n"),
        )
    };
    let rollout = |body: &str| wt(&format!("[services.shop.rollout]\n{body}"));
    vec![
        // routes
        (
            "[services.shop]\nstrategy = \"canary\"\nweights = { a = 1 }\n[services.shop.pools.a]\nendpoints = [\"h:1\"]\n".into(),
            "routes",
            None,
            "at least one [[routes]] entry is required",
        ),
        (w("").replace("service = \"shop\"", "service = \"shpo\""), "routes[0].service", Some("\"shpo\""), "unknown service \"shpo\" (services: shop)"),
        (w("").replace("service = \"shop\"\n", "service = \"shop\"\npath_prefix = \"api\"\n"), "routes[0].path_prefix", Some("\"api\""), "must start with \"/\""),
        (w("").replace("service = \"shop\"\n", "host = \"shop.*.com\"\nservice = \"shop\"\n"), "routes[0].host", Some("\"shop.*.com\""), "wildcard is only allowed as a leading"),
        (w("").replace("service = \"shop\"\n", "host = \"shop.example.com:8080\"\nservice = \"shop\"\n"), "routes[0].host", Some("\"shop.example.com:8080\""), "port is not allowed"),
        (w("").replace("[[routes]]\nservice = \"shop\"\n", "[[routes]]\nservice = \"shop\"\n[[routes]]\npath_prefix = \"/x\"\n"), "routes[1].service", Some("[[routes]]\npath_prefix"), "required key is missing"),
        // server and admin
        (format!("[server]\nlisten = \"localhost:80\"\n{}", w("")), "server.listen", Some("\"localhost:80\""), "invalid listen address"),
        (format!("[server]\nrequest_timeout = \"0s\"\n{}", w("")), "server.request_timeout", Some("\"0s\""), "must be greater than 0s"),
        (format!("[server]\nconnect_timeout = \"10\"\n{}", w("")), "server.connect_timeout", Some("\"10\""), "needs a unit"),
        (format!("[server]\nidle_timeout = \"0ms\"\n{}", w("")), "server.idle_timeout", Some("\"0ms\""), "greater than 0s"),
        (format!("[server]\nheader_read_timeout = \"1x\"\n{}", w("")), "server.header_read_timeout", Some("\"1x\""), "unknown unit"),
        (format!("[server]\nmax_header_bytes = 4096\n{}", w("")), "server.max_header_bytes", Some("4096"), "8192 (hyper's smallest read buffer)"),
        (format!("[server]\nmax_header_bytes = 2000000\n{}", w("")), "server.max_header_bytes", Some("2000000"), "1048576 (1 MiB)"),
        (format!("[server]\npool_header = \"bad header\"\n{}", w("")), "server.pool_header", Some("\"bad header\""), "invalid header name"),
        (format!("[server]\ntakeover_socket = \"\"\n{}", w("")), "server.takeover_socket", Some("\"\""), "must not be empty"),
        (format!("[server]\ntakeover_socket = \"/run/{}.sock\"\n{}", "x".repeat(110), w("")), "server.takeover_socket", Some("\"/run/x"), "a Unix socket path holds at most 107"),
        (format!("[server.tls]\ncerts = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n{}", w("")), "server.tls.listen", Some("[server.tls]"), "required key is missing"),
        (format!("[server.tls]\nlisten = \"0.0.0.0:8443\"\ncerts = [{{ cert = \"a.pem\" }}]\n{}", w("")), "server.tls.certs[0].key", Some("{ cert"), "required key is missing"),
        (format!("[server.tls]\nlisten = \"0.0.0.0:8443\"\ncerts = []\n{}", w("")), "server.tls.certs", Some("[]"), "at least one"),
        (format!("[admin]\ntoken = \"a\"\ntoken_env = \"B\"\n{}", w("")), "admin.token_env", Some("\"B\""), "not both"),
        (format!("[admin]\ntoken_env = \"SY_UNSET\"\n{}", w("")), "admin.token_env", Some("\"SY_UNSET\""), "\"SY_UNSET\" is not set or is empty"),
        (format!("[admin]\ntoken = \"\"\n{}", w("")), "admin.token", Some("\"\""), "must not be empty"),
        (format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{}", w("")), "admin.listen", Some("\"0.0.0.0:9901\""), "needs a token"),
        (format!("[admin]\nallowed_hosts = [\"a.example\", \"\"]\n{}", w("")), "admin.allowed_hosts[1]", Some("\"\"]"), "must not be empty"),
        (format!("[admin]\nallowed_hosts = [\"a.example:9901\"]\n{}", w("")), "admin.allowed_hosts[0]", Some("\"a.example:9901\""), "without a port"),
        (format!("[admin]\nallowed_hosts = [\"http://a.example\"]\n{}", w("")), "admin.allowed_hosts[0]", Some("\"http://a.example\""), "not a URL"),
        (format!("[admin]\nallowed_hosts = [\"*.example\"]\n{}", w("")), "admin.allowed_hosts[0]", Some("\"*.example\""), "wildcards are not supported"),
        (format!("[admin]\nallowed_hosts = [\"a b\"]\n{}", w("")), "admin.allowed_hosts[0]", Some("\"a b\""), "is not a host name"),
        // weights and keys
        (w("").replace("canary = 10", "canary = -5"), "services.shop.weights.canary", Some("-5"), "between 0 and 1000000, not -5"),
        (w("").replace("canary = 10", "canary = 2.5"), "services.shop.weights.canary", Some("2.5"), "must be an integer, not a float"),
        (w("").replace("canary = 10", "canary = \"10\""), "services.shop.weights.canary", Some("\"10\""), "must be an integer, not a string"),
        (w("").replace("canary = 10", "canary = 1000001"), "services.shop.weights.canary", Some("1000001"), "between 0 and 1000000"),
        (w("").replace("stable = 90, canary = 10", "stable = 0, canary = 0"), "services.shop.weights", Some("{ stable = 0"), "sum to more than 0"),
        (shop("", ""), "services.shop.weights", Some("[services.shop]"), "required key is missing"),
        (shop("weights = {}", ""), "services.shop.weights", Some("{}"), "at least one pool weight"),
        (w("").replace("\"canary\"\n", "\"ab\"\n"), "services.shop.hash_key", Some("[services.shop]"), "required for strategy \"ab\""),
        (w("hash_key = { header = \"x\", cookie = \"y\" }"), "services.shop.hash_key", Some("{ header = \"x\""), "not both"),
        (w("hash_key = {}"), "services.shop.hash_key", Some("{}"), "exactly one of header or cookie"),
        (w("hash_key = { header = \"x y\" }"), "services.shop.hash_key.header", Some("\"x y\""), "invalid header name"),
        (w("hash_key = { cookie = \"a;b\" }"), "services.shop.hash_key.cookie", Some("\"a;b\""), "invalid cookie name"),
        (w("affinity_cookie = \"\""), "services.shop.affinity_cookie", Some("\"\""), "invalid cookie name"),
        (w("affinity_max_age = \"1d\""), "services.shop.affinity_max_age", Some("\"1d\""), "unknown unit \"d\""),
        (w("active = \"stable\""), "services.shop.active", Some("\"stable\""), "only used by strategy \"blue-green\""),
        (w("preview_header = { name = \"x\", equals = \"1\" }"), "services.shop.preview_header", Some("{ name"), "only used by strategy \"blue-green\""),
        // overrides
        (wt("[[services.shop.overrides]]\nheader = \"x\"\nequals = \"1\"\npresent = true\npool = \"canary\"\n"), "services.shop.overrides[0]", Some("[[services.shop.overrides]]"), "exactly one of equals, matches or present"),
        (wt("[[services.shop.overrides]]\nheader = \"x\"\nmatches = \"(abc\"\npool = \"canary\"\n"), "services.shop.overrides[0].matches", Some("\"(abc\""), "invalid regex: unclosed group"),
        (wt("[[services.shop.overrides]]\nheader = \"x\"\npresent = true\npool = \"canary\"\n[[services.shop.overrides]]\ncookie = \"c\"\nequals = \"1\"\npool = \"canry\"\n"), "services.shop.overrides[1].pool", Some("\"canry\""), "unknown pool \"canry\" (pools: stable, canary)"),
        (wt("[[services.shop.overrides]]\nheader = \"x\"\npresent = false\npool = \"canary\"\n"), "services.shop.overrides[0].present", Some("false"), "must be true"),
        (wt("[[services.shop.overrides]]\nequals = \"1\"\npool = \"canary\"\n"), "services.shop.overrides[0]", Some("[[services.shop.overrides]]"), "exactly one of header or cookie"),
        (wt("[[services.shop.overrides]]\nheader = \"x\"\nequals = \"1\"\n"), "services.shop.overrides[0].pool", Some("[[services.shop.overrides]]"), "required key is missing"),
        // blue-green
        (web("active = \"blue\"\nweights = { blue = 1 }", BLUE_GREEN_POOLS), "services.web.weights", Some("{ blue = 1 }"), "not used by blue-green"),
        (web("active = \"blue\"\nhash_key = { header = \"x\" }", BLUE_GREEN_POOLS), "services.web.hash_key", Some("{ header"), "not used by blue-green"),
        (web("active = \"blue\"\naffinity_cookie = \"c\"", BLUE_GREEN_POOLS), "services.web.affinity_cookie", Some("\"c\""), "not used by blue-green"),
        (web("active = \"blue\"", &format!("{BLUE_GREEN_POOLS}\n[services.web.rollout]\nbaseline = \"blue\"\ncanary = \"green\"")), "services.web.rollout", Some("[services.web.rollout]"), "not used by blue-green"),
        (web("active = \"blue\"", &format!("{BLUE_GREEN_POOLS}\n[services.web.pools.red]\nendpoints = [\"h:1\"]")), "services.web.pools", Some("web.|pools.blue"), "exactly two pools, found 3 (blue, green, red)"),
        (web("", BLUE_GREEN_POOLS), "services.web.active", Some("[services.web]"), "required key is missing"),
        (web("active = \"purple\"", BLUE_GREEN_POOLS), "services.web.active", Some("\"purple\""), "unknown pool \"purple\" (pools: blue, green)"),
        (web("active = \"blue\"\nprepromotion_checks = [\"/ok\", \"health\"]", BLUE_GREEN_POOLS), "services.web.prepromotion_checks[1]", Some("\"health\""), "must start with \"/\""),
        (web("active = \"blue\"\npreview_header = { equals = \"1\" }", BLUE_GREEN_POOLS), "services.web.preview_header.name", Some("{ equals"), "required key is missing"),
        // pools
        (shop("weights = { stable = 1 }", "").replace("endpoints = [\"10.0.0.2:8080\"]", "endpoints = []"), "services.shop.pools.canary.endpoints", Some("[]"), "at least one endpoint"),
        (pool_canary("balance = \"random\""), "services.shop.pools.canary.balance", Some("\"random\""), "unknown variant `random`"),
        (pool_canary("endpoints = [\"10.0.0.2\"]"), "services.shop.pools.canary.endpoints[0]", Some("\"10.0.0.2\""), "expected host:port"),
        (pool_canary("endpoints = [\"h:1\", \"10.0.0.2:0\"]"), "services.shop.pools.canary.endpoints[1]", Some("\"10.0.0.2:0\""), "port must be a number from 1 to 65535"),
        (pool_canary("endpoints = [\":80\"]"), "services.shop.pools.canary.endpoints[0]", Some("\":80\""), "host is empty"),
        (pool_canary("endpoints = [\"::1:80\"]"), "services.shop.pools.canary.endpoints[0]", Some("\"::1:80\""), "in brackets"),
        (pool_canary("endpoints = [\"http://h:80\"]"), "services.shop.pools.canary.endpoints[0]", Some("\"http://h:80\""), "without a scheme"),
        (pool_canary("endpoints = [\"h:1\", \"h:2\", \"h:1\"]"), "services.shop.pools.canary.endpoints[2]", Some("\"h:1\"]"), "duplicate endpoint \"h:1\" (also endpoints[0])"),
        (pool_canary("endpoints = [\"h:1\", \"h:2\"]\ndrained = [\"h:2\", \"10.0.0.9:80\"]"), "services.shop.pools.canary.drained[1]", Some("\"10.0.0.9:80\""), "\"10.0.0.9:80\" is not an endpoint of this pool (endpoints: h:1, h:2)"),
        (pool_canary("endpoints = [\"h:1\", \"h:2\"]\ndrained = [\"h:2\", \"h:2\"]"), "services.shop.pools.canary.drained[1]", Some("\"h:2\", |\"h:2\"]"), "duplicate drained endpoint \"h:2\" (also drained[0])"),
        (pool_canary("endpoints = [\"h:1\"]\nmin_available = 2"), "services.shop.pools.canary.min_available", Some("2\n"), "more than the pool's 1 endpoint(s)"),
        (pool_canary("endpoints = [\"h:1\"]\nprotocol = \"h2c\"\ntls = true"), "services.shop.pools.canary.protocol", Some("\"h2c\""), "cleartext"),
        (pool_canary("endpoints = [\"h:1\"]\nprotocol = \"h2\"\ntls = false"), "services.shop.pools.canary.tls", Some("false"), "HTTP/2 over TLS"),
        (pool_canary("endpoints = [\"h:1\"]\nca = \"ca.pem\""), "services.shop.pools.canary.ca", Some("\"ca.pem\""), "needs tls = true"),
        (pool_canary("endpoints = [\"h:1\"]\nsni = \"x\""), "services.shop.pools.canary.sni", Some("\"x\""), "needs tls = true"),
        (w("").replace("[services.shop.pools.stable]", "[services.shop.pools.\"st able\"]").replace("stable = 90", "\"st able\" = 90"), "services.shop.pools.\"st able\"", Some("[services.shop.pools.\"st able\"]"), "invalid pool name"),
        // health, outlier
        (wt("[services.shop.health]\ninterval = \"0s\""), "services.shop.health.interval", Some("\"0s\""), "greater than 0s"),
        (wt("[services.shop.health]\nhealthy_threshold = 0"), "services.shop.health.healthy_threshold", Some("healthy_threshold = |0"), "at least 1, not 0"),
        (wt("[services.shop.health]\nunhealthy_threshold = -1"), "services.shop.health.unhealthy_threshold", Some("= |-1"), "at least 1"),
        (wt("[services.shop.health]\npath = \"health\""), "services.shop.health.path", Some("\"health\""), "must start with \"/\""),
        (wt("[services.shop.outlier]\nconsecutive_failures = 0"), "services.shop.outlier.consecutive_failures", Some("consecutive_failures = |0"), "at least 1"),
        // rollout
        (rollout("baseline = \"stable\"\ncanary = \"stable\""), "services.shop.rollout.canary", Some("canary = |\"stable\""), "must differ from baseline"),
        (rollout("canary = \"canary\""), "services.shop.rollout.baseline", Some("[services.shop.rollout]"), "required key is missing"),
        (rollout("baseline = \"stabel\"\ncanary = \"canary\""), "services.shop.rollout.baseline", Some("\"stabel\""), "unknown pool \"stabel\""),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = []"), "services.shop.rollout.steps", Some("[]"), "at least one step"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 10, 50]"), "services.shop.rollout.steps[1]", Some("10, 50"), "increase strictly (10 after 10)"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = [0, 50]"), "services.shop.rollout.steps[0]", Some("0, 50"), "from 1 to 100, not 0"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = [50, 101]"), "services.shop.rollout.steps[1]", Some("101"), "from 1 to 100, not 101"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nmax_error_rate = 1.5"), "services.shop.rollout.max_error_rate", Some("1.5"), "from 0.0 to 1.0"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nmax_error_rate_increase = -0.1"), "services.shop.rollout.max_error_rate_increase", Some("-0.1"), "from 0.0 to 1.0"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\ninterval = \"0s\""), "services.shop.rollout.interval", Some("\"0s\""), "greater than 0s"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nconfidence = 1.0"), "services.shop.rollout.confidence", Some("1.0"), "a confidence from 0.5 to 0.9999 (0.99 = 99%), not 1"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nconfidence = 0.3"), "services.shop.rollout.confidence", Some("0.3"), "not 0.3"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\n[[services.shop.rollout.webhooks]]\nname = \"x\"\nurl = \"ftp://h/x\"\non = \"event\""), "services.shop.rollout.webhooks[0].url", Some("\"ftp://h/x\""), "not an http:// or https:// url"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\n[[services.shop.rollout.webhooks]]\nname = \"x\"\nurl = \"http://h/x\"\non = \"later\""), "services.shop.rollout.webhooks[0].on", Some("\"later\""), "\"later\" is not one of pre-rollout, step, confirm-promotion, post-rollout, event"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\n[[services.shop.rollout.webhooks]]\nname = \"x\"\nurl = \"http://h/x\"\non = \"event\"\nformat = \"teams\""), "services.shop.rollout.webhooks[0].format", Some("\"teams\""), "is not \"json\" or \"slack\""),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"ftp://p:9090\""), "services.shop.rollout.prometheus", Some("\"ftp://p:9090\""), "is not an http:// or https:// url with a host"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\"\nmin = 1.0"), "services.shop.rollout.checks[0]", Some("[[services.shop.rollout.checks]]"), "checks need `prometheus`"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://p:9090\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nmin = 1.0"), "services.shop.rollout.checks[0].query", Some("[[services.shop.rollout.checks]]"), "required key is missing"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://p:9090\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\"\nmin = 2.0\nmax = 1.0"), "services.shop.rollout.checks[0].min", Some("min = |2.0"), "min 2 is above max 1: no value could pass"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://p:9090\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\""), "services.shop.rollout.checks[0]", Some("[[services.shop.rollout.checks]]"), "needs `min`, `max` or both"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://p:9090\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\"\nmax = 1.0\nfailures = 0"), "services.shop.rollout.checks[0].failures", Some("failures = |0"), "between 1 and 1000, not 0"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nprometheus = \"http://p:9090\"\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\"\nmax = 1.0\n[[services.shop.rollout.checks]]\nname = \"ok\"\nquery = \"up\"\nmax = 2.0"), "services.shop.rollout.checks[1].name", Some("\"ok\"\nquery = \"up\"\nmax = 2.0"), "check name \"ok\" is used twice"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\n[[services.shop.rollout.webhooks]]\nname = \"x\"\nurl = \"http://h/x\"\non = \"step\"\ntimeout = \"0s\""), "services.shop.rollout.webhooks[0].timeout", Some("\"0s\""), "greater than 0s"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nmax_p99 = \"0s\""), "services.shop.rollout.max_p99", Some("\"0s\""), "greater than 0s"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 50, 100]\npause_at = [50, 40]"), "services.shop.rollout.pause_at[1]", Some("40]"), "40 is not one of the steps [10, 50, 100]"),
        (rollout("baseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 50, 100]\npause_at = [50, 50]"), "services.shop.rollout.pause_at[1]", Some("50]"), "50 is listed twice"),
        (
            shop("weights = { stable = 80, canary = 10, extra = 10 }", "[services.shop.pools.extra]\nendpoints = [\"h:1\"]\n[services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\""),
            "services.shop.weights.extra",
            Some("10 }"),
            "a rollout weights only baseline \"stable\" and canary \"canary\"",
        ),
        (w("").replace("\"canary\"\n", "\"ab\"\nhash_key = { cookie = \"u\" }\n") + "[services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n", "services.shop.rollout", Some("[services.shop.rollout]"), "only for strategy \"canary\""),
        // mirror
        (wt("[services.shop.mirror]\npool = \"dark\""), "services.shop.mirror.pool", Some("\"dark\""), "unknown pool \"dark\""),
        (wt("[services.shop.mirror]\npool = \"canary\"\npercent = 150"), "services.shop.mirror.percent", Some("150"), "between 0 and 100, not 150"),
        (wt("[services.shop.mirror]\npercent = 5"), "services.shop.mirror.pool", Some("[services.shop.mirror]"), "required key is missing"),
        // serde-level: unknown key, wrong type, unknown variant
        (w("stratgy = \"x\""), "services.shop.stratgy", Some("stratgy"), "unknown field `stratgy`, expected one of `strategy`, `weights`"),
        (w("").replace("service = \"shop\"", "service = 5"), "routes[0].service", Some("5\n"), "invalid type: integer `5`, expected a string"),
        (w("").replace("strategy = \"canary\"", "strategy = \"cnary\""), "services.shop.strategy", Some("\"cnary\""), "unknown variant `cnary`, expected one of `canary`, `ab`, `blue-green`"),
        (format!("[server]\nmax_header_bytes = \"big\"\n{}", w("")), "server.max_header_bytes", Some("\"big\""), "expected an integer"),
        (format!("[admin]\npersist = \"yes\"\n{}", w("")), "admin.persist", Some("\"yes\""), "expected a boolean"),
        (format!("[bogus]\nx = 1\n{}", w("")), "bogus", Some("bogus"), "unknown field `bogus`"),
        // syntax: one diagnostic, no key path
        (w("").replace("[[routes]]", "[[routes]"), "", Some("\nservice"), "expected `]`"),
    ]
}

#[test]
fn every_error_has_its_key_path_and_location() {
    let mut failures = Vec::new();
    for (text, key_path, needle, message) in error_cases() {
        let diagnostics = match parse_with_env(&text, Path::new(FILE), &no_env) {
            Ok(_) => {
                failures.push(format!("{key_path}: no error for\n{text}"));
                continue;
            }
            Err(ConfigErrors(d)) => d,
        };
        let want = needle.map(|n| pos(&text, n));
        let found = diagnostics.iter().any(|d| {
            d.key_path == key_path
                && d.line.zip(d.col) == want
                && d.message.contains(message)
                && d.file == Path::new(FILE)
                && !d.message.contains('\n')
        });
        if !found {
            failures.push(format!(
                "want {key_path} at {want:?} containing {message:?}; got:\n{}\nin:\n{text}",
                ConfigErrors(diagnostics)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = r#"[server]
listen = "nope"
idle_timeout = "0s"

[admin]
listen = "0.0.0.0:9901"

[[routes]]
service = "shpo"

[services.shop]
strategy = "canary"
weights = { stable = 90, canry = 10 }

[[services.shop.overrides]]
header = "x-canary"
matches = "("
pool = "beta"

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080", "10.0.0.1:8080"]

[services.shop.pools.canary]
endpoints = ["10.0.0.2"]
"#;
    let got: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    let f = FILE;
    assert_eq!(
        got,
        vec![
            format!(
                "{f}:2:10: server.listen: invalid listen address \"nope\": expected ip:port, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\""
            ),
            format!("{f}:3:16: server.idle_timeout: must be greater than 0s"),
            format!(
                "{f}:6:10: admin.listen: admin API on non-loopback address 0.0.0.0:9901 needs a token (set admin.token or admin.token_env)"
            ),
            format!("{f}:9:11: routes[0].service: unknown service \"shpo\" (services: shop)"),
            format!(
                "{f}:21:31: services.shop.pools.stable.endpoints[1]: duplicate endpoint \"10.0.0.1:8080\" (also endpoints[0])"
            ),
            format!(
                "{f}:24:14: services.shop.pools.canary.endpoints[0]: invalid endpoint \"10.0.0.2\": expected host:port"
            ),
            format!(
                "{f}:13:11: services.shop.weights: unknown pool \"canry\" (pools: stable, canary)"
            ),
            format!("{f}:17:11: services.shop.overrides[0].matches: invalid regex: unclosed group"),
            format!(
                "{f}:18:8: services.shop.overrides[0].pool: unknown pool \"beta\" (pools: stable, canary)"
            ),
        ]
    );
}

#[test]
fn every_unknown_key_and_wrong_type_is_reported_at_once() {
    let text = r#"[server]
lisen = "127.0.0.1:8080"
max_header_bytes = "big"

[[routes]]
service = "shop"
prefx = "/"

[services.shop]
strategy = "canary"
weights = { stable = 90, canary = 10 }
hash_key = { cooki = "u" }

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080"]
timeout = 5

[services.shop.pools.canary]
endpoints = ["10.0.0.2:8080", 7]
"#;
    let got: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    let f = FILE;
    let want = [
        format!("{f}:2:1: server.lisen: unknown field `lisen`"),
        format!(
            "{f}:3:20: server.max_header_bytes: invalid type: string \"big\", expected an integer"
        ),
        format!("{f}:7:1: routes[0].prefx: unknown field `prefx`"),
        format!("{f}:12:14: services.shop.hash_key.cooki: unknown field `cooki`"),
        format!("{f}:16:1: services.shop.pools.stable.timeout: unknown field `timeout`"),
        format!(
            "{f}:19:31: services.shop.pools.canary.endpoints[1]: invalid type: integer `7`, expected a string"
        ),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (got, want) in got.iter().zip(&want) {
        assert!(got.starts_with(want.as_str()), "got {got}\nwant {want}…");
    }
}

#[test]
fn unknown_keys_do_not_hide_the_other_problems() {
    let text = r#"[server]
listen = "nope"
lisen = "127.0.0.1:8080"

[[routes]]
service = "shpo"

[services.shop]
strategy = "canary"
weights = { stable = 90, canary = 10 }
stratgy = "ab"

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080"]

[services.shop.pools.canary]
endpoints = ["10.0.0.2:8080"]
"#;
    let got: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
    let f = FILE;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with(&format!("{f}:3:1: server.lisen: unknown field `lisen`")),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with(&format!(
            "{f}:11:1: services.shop.stratgy: unknown field `stratgy`"
        )),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with(&format!("{f}:2:10: server.listen: invalid listen address")),
        "{got:#?}"
    );
    assert!(
        got[3].starts_with(&format!(
            "{f}:6:11: routes[0].service: unknown service \"shpo\""
        )),
        "{got:#?}"
    );
}

#[test]
fn token_values_never_appear_in_messages() {
    let text = format!(
        "[admin]\ntoken = \"hunter2\"\ntoken_env = \"SY_TOKEN\"\n{}",
        weighted("", "")
    );
    let env = |_: &str| Some("sekrit".to_owned());
    let Err(e) = parse_with_env(&text, Path::new(FILE), &env) else {
        panic!("token and token_env together must fail");
    };
    let shown = e.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("sekrit"),
        "{shown}"
    );
    let c = ok(&format!(
        "[admin]\ntoken = \"hunter2\"\n{}",
        weighted("", "")
    ));
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn unreadable_file_is_one_diagnostic_naming_it() {
    let path = Path::new("/nonexistent/switchyard/config.toml");
    let Err(ConfigErrors(d)) = load(path) else {
        panic!("a missing file must fail");
    };
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].file, path);
    assert!(d[0].line.is_none() && d[0].key_path.is_empty());
    assert!(
        d[0].to_string()
            .starts_with("/nonexistent/switchyard/config.toml: cannot read config file:"),
        "{}",
        d[0]
    );
}

#[test]
fn load_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("switchyard-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, weighted("", "")).unwrap_or_else(|e| panic!("{e}"));
    let loaded = load(&path);
    let _ = std::fs::remove_dir_all(&dir);
    let c = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.path, path);
    assert_eq!(c.services["shop"].weight_total(), 100);
}

/// The reference example config, with the two gaps filled: `services.web` gets its two pools, and the
/// token variable is set.
const REFERENCE_EXAMPLE: &str = r#"[server]
listen = "0.0.0.0:8080"            # HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port
request_timeout = "30s"            # whole upstream exchange; 504 past it
connect_timeout = "2s"             # past it: a connect error (502 if no retry succeeds)
header_read_timeout = "10s"        # a client that has not sent its headers by then is closed
idle_timeout = "60s"               # client keep-alive
max_header_bytes = 65536           # larger request head: 431
shutdown_grace = "30s"
pool_header = "x-switchyard-pool"  # names the serving pool on the upstream request AND the response; "" disables

[server.tls]                        # optional HTTPS listener (rustls); ALPN h2 and http/1.1
listen = "0.0.0.0:8443"                                            # (example)
certs = [ { cert = "certs/shop.pem", key = "certs/shop.key" } ]    # (example) chosen by SNI; first is default; hot-reloaded

[admin]
listen = "127.0.0.1:9901"          # admin API, /metrics, /healthz, /readyz
token_env = "SWITCHYARD_ADMIN_TOKEN"   # (example) or token = "..."; naming an unset variable is a config error
persist = true                     # write admin changes back into the config file (comments kept)

[[routes]]                          # (required, at least one) tried in file order; the first that matches wins
host = "shop.example.com"          # optional; exact, or "*.example.com" (any deeper name, not the bare one);
                                   # compared case-insensitively, without the port
path_prefix = "/"                  # matches whole segments: "/api" matches /api and /api/x, not /apix
service = "shop"                   # (required)

[services.shop]
strategy = "canary"                # (required) "canary" | "ab" | "blue-green"
weights = { stable = 95, canary = 5 }   # (required for canary, ab) integers >= 0, sum > 0; order as written
hash_key = { header = "x-user-id" }     # or { cookie = "uid" }; optional for canary, required for ab
hash_salt = ""                     # prepended to the key before hashing
affinity_cookie = "sy_bucket"      # (example) keyless clients get a random bucket kept in this cookie
affinity_max_age = "24h"
failover = true                    # chosen pool has no available endpoint: use the first pool (in weights order) that has one
hold_timeout = "0s"                # > 0: a request no pool can serve waits up to this long for an endpoint to recover

[[services.shop.overrides]]         # checked in order before buckets; win even at weight 0
header = "x-canary"                # (example) or cookie = "name"
equals = "true"                    # or matches = "regex", or present = true
pool = "canary"

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080", "10.0.0.2:8080"]   # (required, at least one)
balance = "round-robin"            # or "least-requests"
min_available = 1                  # a drain that would leave fewer available endpoints is refused (409)
protocol = "http1"                 # or "h2c", "h2" (HTTP/2 over TLS): what switchyard speaks to this pool
tls = false                        # TLS to the endpoints; optional ca = "ca.pem", sni = "app.internal"

[services.shop.pools.canary]
endpoints = ["10.0.0.3:8080"]

[services.shop.health]              # optional active checks, per endpoint
path = "/health"
interval = "5s"
timeout = "1s"
unhealthy_threshold = 3
healthy_threshold = 1

[services.shop.outlier]             # optional passive ejection
consecutive_failures = 5           # connect errors or 5xx in a row
ejection = "30s"

[services.shop.rollout]             # optional automated progressive canary (strategy = "canary")
baseline = "stable"                # (required)
canary = "canary"                  # (required)
steps = [5, 10, 25, 50, 100]       # canary's share, percent of the weight total
interval = "60s"                   # least dwell per step
min_requests = 50                  # canary requests a step needs before it is judged
max_error_rate = 0.05              # optional: canary 5xx ratio over the step
max_error_rate_increase = 0.01     # optional: canary 5xx ratio minus baseline's
max_p99_increase = "200ms"         # optional: canary p99 minus baseline p99
max_p99 = "500ms"                  # optional: the canary's own p99
pause_at = [50]                    # optional: steps where the rollout pauses itself until `resume`
confidence = 0.99                  # how sure a judgement must be before it aborts
auto_start = false

[services.shop.mirror]              # optional shadow traffic; responses discarded
pool = "canary"                    # (required)
percent = 10
max_body_bytes = 65536             # larger bodies are not mirrored

[services.web]                      # blue/green (example)
strategy = "blue-green"
active = "blue"                    # (required) all non-override traffic goes to the active pool
preview_header = { name = "x-preview", equals = "true" }   # optional: reach the standby pool
prepromotion_checks = ["/health", "/api/test"]            # GET on every standby endpoint must be 2xx before a swap
# exactly two pools: [services.web.pools.blue], [services.web.pools.green]

[services.web.pools.blue]
endpoints = ["10.0.1.1:8080"]

[services.web.pools.green]
endpoints = ["10.0.1.2:8080"]
"#;

#[test]
fn reference_example_is_valid() {
    let env = |name: &str| (name == "SWITCHYARD_ADMIN_TOKEN").then(|| "t".to_owned());
    let c =
        parse_with_env(REFERENCE_EXAMPLE, Path::new(FILE), &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services["shop"].weight_total(), 100);
    assert_eq!(
        c.server.tls.map(|t| t.certs),
        Some(vec![CertPair {
            cert: "config/certs/shop.pem".into(),
            key: "config/certs/shop.key".into()
        }])
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Through `parse` (the process environment): a literal token instead of the variable.
    let literal =
        REFERENCE_EXAMPLE.replace("token_env = \"SWITCHYARD_ADMIN_TOKEN\"", "token = \"t\"");
    let c = parse(&literal, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.services["web"].active.as_deref(), Some("blue"));

    // And with the variable unset, one error naming it.
    let Err(ConfigErrors(d)) = parse_with_env(REFERENCE_EXAMPLE, Path::new(FILE), &no_env) else {
        panic!("an unset token_env must fail");
    };
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].key_path, "admin.token_env");
    assert_eq!((d[0].line, d[0].col), (Some(17), Some(13)));
}

// === durations ===

#[test]
fn durations_parse() {
    let cases = [
        ("1m30s", 90_000),
        ("500ms", 500),
        ("2h", 7_200_000),
        ("0s", 0),
        ("1h1m1s1ms", 3_661_001),
        ("90s", 90_000),
    ];
    for (text, millis) in cases {
        assert_eq!(duration(text), Duration::from_millis(millis), "{text}");
    }
    for bad in [
        "",
        "10",
        "1x",
        "1.5s",
        "s",
        "-1s",
        " 1s",
        "1s ",
        "1 s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} must be an error");
    }
}

#[test]
fn durations_format_and_round_trip() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_millis(3_661_001), "1h1m1s1ms"),
        (Duration::from_secs(24 * 3600), "24h"),
    ];
    for (d, text) in cases {
        assert_eq!(format_duration(d), text);
        assert_eq!(duration(text), d);
    }
}

#[test]
fn a_token_with_surrounding_whitespace_is_refused() {
    // A token read from a file with `echo` ends in a newline; no header could match it.
    let text = format!("[admin]\ntoken_env = \"SY_TOKEN\"\n{}", weighted("", ""));
    let env = |name: &str| (name == "SY_TOKEN").then(|| "t0k\n".to_owned());
    let err = parse_with_env(&text, Path::new(FILE), &env)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("admin.token_env"), "{err}");
    assert!(err.contains("whitespace"), "{err}");
    let text = format!("[admin]\ntoken = \" t0k\"\n{}", weighted("", ""));
    let err = parse_with_env(&text, Path::new(FILE), &no_env)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("admin.token"), "{err}");
    assert!(err.contains("whitespace"), "{err}");
}

#[test]
fn a_health_timeout_longer_than_its_interval_is_accepted() {
    let text = weighted(
        "",
        "[services.shop.health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n",
    );
    let c = ok(&text);
    let h = c.services["shop"].health.clone().expect("health section");
    assert_eq!(h.interval, std::time::Duration::from_millis(200));
    assert_eq!(h.timeout, std::time::Duration::from_millis(500));
}

#[test]
fn a_huge_bad_value_is_not_echoed_whole() {
    let huge = "x".repeat(1_000_000);
    let text = format!("[server]\nlisten = \"{huge}\"\n{}", weighted("", ""));
    let err = parse_with_env(&text, Path::new(FILE), &no_env)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("server.listen"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert!(err.len() < 2_000, "message of {} bytes", err.len());
    assert!(
        err.contains("more bytes)"),
        "{}",
        &err[..err.len().min(500)]
    );
}

#[test]
fn a_cluster_section_is_checked() {
    let text = format!(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/sy/prod\"\nname = \"r1\"\n{}",
        weighted("", "")
    );
    let config = ok(&text);
    let cluster = config.cluster.expect("cluster");
    assert_eq!(
        (
            cluster.etcd,
            cluster.prefix.as_str(),
            cluster.name.as_str(),
            cluster.lease_ttl
        ),
        (
            vec!["http://127.0.0.1:2379".to_string()],
            "/sy/prod",
            "r1",
            Duration::from_secs(5)
        )
    );
    let bad = format!(
        "[cluster]\netcd = [\"127.0.0.1:2379\"]\nprefix = \"sy/\"\nname = \"a b\"\nlease_ttl = \"1s\"\n{}",
        weighted("", "")
    );
    let got: Vec<String> = errors(&bad)
        .iter()
        .map(|d| format!("{}: {}", d.key_path, d.message))
        .collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with("cluster.etcd[0]: invalid etcd endpoint"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("cluster.prefix: invalid prefix"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with("cluster.name: invalid replica name"),
        "{got:#?}"
    );
    assert!(
        got[3].starts_with("cluster.lease_ttl: must be at least 2s"),
        "{got:#?}"
    );
    // An hour would let a hung store hold every admin change that long.
    let long = format!(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/sy\"\nname = \"r1\"\nlease_ttl = \"1h\"\n{}",
        weighted("", "")
    );
    let got: Vec<String> = errors(&long)
        .iter()
        .map(|d| format!("{}:{}: {}", d.line.unwrap_or(0), d.key_path, d.message))
        .collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("5:cluster.lease_ttl: must be at most 60s"),
        "{got:#?}"
    );
    let with_rollout = format!(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/sy\"\nname = \"r1\"\n{}",
        weighted(
            "",
            "[services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n"
        )
    );
    // A fleet runs its rollouts too: one leader judges the whole fleet's figures.
    let config = ok(&with_rollout);
    assert!(config.services["shop"].rollout.is_some());
}

/// A `[cluster]` config in a temp dir next to a CA, a client certificate and its key (rcgen),
/// and an unrelated key; `keys` go into `[cluster]` after `etcd`.
struct ClusterFiles {
    dir: tempfile::TempDir,
}

impl ClusterFiles {
    fn new() -> ClusterFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["etcd-ca".to_string()]).expect("ca");
        let client = rcgen::generate_simple_self_signed(vec!["r1".to_string()]).expect("client");
        let other = rcgen::KeyPair::generate().expect("other key");
        for (name, text) in [
            ("ca.pem", ca.cert.pem()),
            ("client.pem", client.cert.pem()),
            ("client.key", client.signing_key.serialize_pem()),
            ("other.key", other.serialize_pem()),
            ("junk.pem", "not a certificate\n".to_string()),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        ClusterFiles { dir }
    }

    fn text(etcd: &str, keys: &str) -> String {
        format!(
            "[cluster]\netcd = [{etcd}]\nprefix = \"/sy\"\nname = \"r1\"\n{keys}{}",
            weighted("", "")
        )
    }

    fn parse(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        parse_with_env(text, &self.dir.path().join("switchyard.toml"), env)
    }

    /// `key_path: message` of each error, and the line of each.
    fn errors(&self, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, usize)> {
        match self.parse(text, env) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(ConfigErrors(d)) => d
                .iter()
                .map(|d| {
                    (
                        format!("{}: {}", d.key_path, d.message),
                        d.line.unwrap_or(0),
                    )
                })
                .collect(),
        }
    }
}

fn etcd_password(name: &str) -> Option<String> {
    match name {
        "ETCD_PW" => Some("pw".to_string()),
        "ETCD_PW_NEWLINE" => Some("pw\n".to_string()),
        "ETCD_PW_EMPTY" => Some(String::new()),
        _ => None,
    }
}

#[test]
fn cluster_tls_files_and_the_etcd_password_are_read_at_load() {
    let files = ClusterFiles::new();
    let text = ClusterFiles::text(
        "\"https://10.0.0.5:2379\", \"https://10.0.0.6:2379\"",
        "username = \"sy\"\npassword_env = \"ETCD_PW\"\n\
         ca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n",
    );
    let cluster = match files.parse(&text, &etcd_password) {
        Ok(config) => config.cluster.expect("cluster"),
        Err(e) => panic!("{e}"),
    };
    let auth = cluster.auth.expect("auth");
    assert_eq!(
        (auth.username.as_str(), auth.password.0.as_str()),
        ("sy", "pw")
    );
    // The password never shows in a debug print (which a log line could carry).
    assert!(!format!("{auth:?}").contains("pw\""), "{auth:?}");
    let tls = cluster.tls.expect("tls");
    let read = |name: &str| std::fs::read_to_string(files.dir.path().join(name)).expect("read");
    assert_eq!(tls.ca.as_deref(), Some(read("ca.pem").as_str()));
    let (cert, key) = tls.identity.expect("identity");
    assert_eq!((cert, key.0), (read("client.pem"), read("client.key")));

    // https:// alone: TLS with the public roots, no client certificate, no credentials.
    let text = ClusterFiles::text("\"https://etcd.example.com:2379\"", "");
    let cluster = files
        .parse(&text, &no_env)
        .expect("valid")
        .cluster
        .expect("cluster");
    assert_eq!(
        cluster.tls,
        Some(EtcdTls {
            ca: None,
            identity: None
        })
    );
    assert_eq!(cluster.auth, None);
    // http:// alone: neither.
    let text = ClusterFiles::text("\"http://127.0.0.1:2379\"", "");
    let cluster = files
        .parse(&text, &no_env)
        .expect("valid")
        .cluster
        .expect("cluster");
    assert_eq!((cluster.tls, cluster.auth), (None, None));
}

#[test]
fn cluster_credentials_come_in_pairs_from_a_clean_environment_variable() {
    let files = ClusterFiles::new();
    let http = "\"http://127.0.0.1:2379\"";
    let cases: [(&str, &str, &str); 6] = [
        (
            "username = \"sy\"\n",
            "username = ",
            "cluster.username: username needs password_env",
        ),
        (
            "password_env = \"ETCD_PW\"\n",
            "password_env = ",
            "cluster.password_env: password_env needs username",
        ),
        (
            "username = \"sy\"\npassword_env = \"ETCD_PW_UNSET\"\n",
            "password_env = ",
            "cluster.password_env: environment variable \"ETCD_PW_UNSET\" is not set or is empty",
        ),
        (
            "username = \"sy\"\npassword_env = \"ETCD_PW_EMPTY\"\n",
            "password_env = ",
            "cluster.password_env: environment variable \"ETCD_PW_EMPTY\" is not set or is empty",
        ),
        (
            "username = \"sy\"\npassword_env = \"ETCD_PW_NEWLINE\"\n",
            "password_env = ",
            "cluster.password_env: environment variable \"ETCD_PW_NEWLINE\" has leading or trailing whitespace",
        ),
        (
            "username = \"\"\npassword_env = \"ETCD_PW\"\n",
            "username = ",
            "cluster.username: must not be empty",
        ),
    ];
    for (keys, at, want) in cases {
        let text = ClusterFiles::text(http, keys);
        let got = files.errors(&text, &etcd_password);
        assert_eq!(got.len(), 1, "{keys}: {got:#?}");
        assert!(got[0].0.starts_with(want), "{keys}: {got:#?}");
        assert_eq!(got[0].1, pos(&text, at).0, "{keys}: {got:#?}");
        // The password itself is never in a message.
        assert!(!got[0].0.contains("pw\n"), "{got:#?}");
    }
}

#[test]
fn cluster_tls_files_need_https_endpoints_and_must_exist_parse_and_match() {
    let files = ClusterFiles::new();
    let https = "\"https://127.0.0.1:2379\"";
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "\"http://127.0.0.1:2379\"",
            "ca = \"ca.pem\"\n",
            "ca = ",
            "cluster.ca: ca is for TLS to etcd: use https:// endpoints",
        ),
        (
            "\"http://127.0.0.1:2379\"",
            "cert = \"client.pem\"\n",
            "cert = ",
            "cluster.cert: cert is for TLS to etcd: use https:// endpoints",
        ),
        (
            "\"https://127.0.0.1:2379\", \"http://127.0.0.2:2379\"",
            "",
            "etcd = ",
            "cluster.etcd[1]: mixes http:// and https:// endpoints",
        ),
        (
            https,
            "cert = \"client.pem\"\n",
            "cert = ",
            "cluster.cert: cert needs key",
        ),
        (
            https,
            "key = \"client.key\"\n",
            "key = ",
            "cluster.key: key needs cert",
        ),
        (
            https,
            "ca = \"missing.pem\"\n",
            "ca = ",
            "cluster.ca: cannot read ",
        ),
        (
            https,
            "ca = \"junk.pem\"\n",
            "ca = ",
            "cluster.ca: no CERTIFICATE in the file",
        ),
        (
            https,
            "cert = \"client.pem\"\nkey = \"other.key\"\n",
            "key = ",
            "cluster.key: does not fit the certificate",
        ),
    ];
    for (etcd, keys, at, want) in cases {
        let text = ClusterFiles::text(etcd, keys);
        let got = files.errors(&text, &no_env);
        assert_eq!(got.len(), 1, "{keys}: {got:#?}");
        assert!(got[0].0.starts_with(want), "{keys}: {got:#?}");
        assert_eq!(got[0].1, pos(&text, at).0, "{keys}: {got:#?}");
    }
    // A missing file is named, resolved against the config file's directory.
    let text = ClusterFiles::text(https, "ca = \"missing.pem\"\n");
    let got = files.errors(&text, &no_env);
    let missing = files.dir.path().join("missing.pem");
    assert!(
        got[0].0.contains(&missing.display().to_string()),
        "{got:#?}"
    );
    // A key that is not a key.
    let text = ClusterFiles::text(https, "cert = \"client.pem\"\nkey = \"junk.pem\"\n");
    let got = files.errors(&text, &no_env);
    assert!(
        got[0]
            .0
            .starts_with("cluster.key: cannot read a private key"),
        "{got:#?}"
    );
}

#[test]
fn webhook_urls_are_split_into_authority_and_path() {
    let toml = "[[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\nweights = { stable = 100, canary = 0 }\n\
        [services.shop.pools.stable]\nendpoints = [\"h:1\"]\n[services.shop.pools.canary]\nendpoints = [\"h:2\"]\n\
        [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n\
        [[services.shop.rollout.webhooks]]\nname = \"a\"\nurl = \"https://hooks.example.com/x?y=1\"\non = \"event\"\nformat = \"slack\"\n\
        [[services.shop.rollout.webhooks]]\nname = \"b\"\nurl = \"http://127.0.0.1:7000\"\non = \"pre-rollout\"\ntimeout = \"2s\"\n";
    let cfg = parse(toml, Path::new("t.toml")).expect("valid");
    let hooks = &cfg.services["shop"]
        .rollout
        .as_ref()
        .expect("rollout")
        .webhooks;
    let got: Vec<_> = hooks
        .iter()
        .map(|h| {
            (
                h.tls,
                h.authority.as_str(),
                h.path.as_str(),
                h.on,
                h.format,
                h.timeout,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                true,
                "hooks.example.com:443",
                "/x?y=1",
                HookMoment::Event,
                HookFormat::Slack,
                Duration::from_secs(5)
            ),
            (
                false,
                "127.0.0.1:7000",
                "/",
                HookMoment::PreRollout,
                HookFormat::Json,
                Duration::from_secs(2)
            ),
        ]
    );
}
