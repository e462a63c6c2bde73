//! Edges a user or an attacker finds: path tricks, CONNECT, admin flags and tokens,
//! cross-site and foreign-Host admin calls, a crowd on the admin port, a dead endpoint hidden
//! by retries, a closed stdout.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Two routes: `/public` to pool `pub` (upstream a), everything else to `priv` (b).
fn split_routes(a: &Upstream, b: &Upstream) -> String {
    format!(
        "{}\n[[routes]]\npath_prefix = \"/public\"\nservice = \"public\"\n[[routes]]\nservice = \"private\"\n\
         [services.public]\nstrategy = \"canary\"\nweights = {{ pub = 100 }}\n\
         [services.public.pools.pub]\nendpoints = [\"{}\"]\n\
         [services.private]\nstrategy = \"canary\"\nweights = {{ priv = 100 }}\n\
         [services.private.pools.priv]\nendpoints = [\"{}\"]\n",
        server_section(),
        a.addr,
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_the_normalised_path_and_the_upstream_receives_it() {
    let (a, b) = (
        Upstream::start("public").await,
        Upstream::start("private").await,
    );
    let sy = Switchyard::start(&split_routes(&a, &b));
    // `raw` keeps the target byte for byte (an HTTP client library would clean it up).
    let ask = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n")
    };
    let answer = raw(
        sy.addr,
        ask("/public/../admin-app/x?q=1").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-upstream: private"),
        "climbed out of /public: {answer}"
    );
    assert!(answer.contains("x-target: /admin-app/x?q=1"), "{answer}");
    let answer = raw(
        sy.addr,
        ask("/public//a/./%62").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.contains("x-upstream: public"), "{answer}");
    assert!(answer.contains("x-target: /public/a/b"), "{answer}");
    let answer = raw(
        sy.addr,
        ask("/../etc/passwd").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("x-switchyard-error: bad_request"),
        "{answer}"
    );
    assert_eq!(a.hits() + b.hits(), 2, "the 400 reached an upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_with_405() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let answer = raw(
        sy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.to_lowercase().contains("allow: get"), "{answer}");
    assert!(
        answer.contains("x-switchyard-error: method_not_allowed"),
        "{answer}"
    );
    assert_eq!(a.hits() + b.hits(), 0, "CONNECT reached an upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flags_are_parsed_strictly_and_the_bearer_scheme_is_case_insensitive() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let config = canary(&a, &b, 90, 10, "")
        .replace("persist = false\n", "persist = false\ntoken = \"s3cret\"\n");
    let sy = Switchyard::start(&config);
    let c = client();
    let auth = [("authorization", "bearer s3cret")];
    let generation = |v: &serde_json::Value| v["generation"].as_u64();
    let (_, before) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    for bad in ["yes", "TRUE1", "", "on"] {
        let url = sy.admin_url(&format!("/admin/services/svc/weights?dry_run={bad}"));
        let (status, body) = admin(&c, "PUT", &url, r#"{"stable":50,"canary":50}"#, &auth).await;
        assert_eq!(status, 400, "dry_run={bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("dry_run")),
            "{body}"
        );
    }
    for good in ["True", "TRUE", "1", ""] {
        let flag = if good.is_empty() {
            "dry_run".to_string()
        } else {
            format!("dry_run={good}")
        };
        let url = sy.admin_url(&format!("/admin/services/svc/weights?{flag}"));
        let (status, body) = admin(&c, "PUT", &url, r#"{"stable":50,"canary":50}"#, &auth).await;
        assert_eq!(status, 200, "{flag}: {body}");
    }
    let (_, after) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(
        generation(&after),
        generation(&before),
        "a dry run or a bad flag changed the state"
    );
    let (_, svc) = admin(&c, "GET", &sy.admin_url("/admin/services/svc"), "", &[]).await;
    assert_eq!(svc["weights"]["canary"], 10, "{svc}");
    let url = sy.admin_url("/admin/services/svc/swap?force=maybe");
    let (status, _) = admin(&c, "POST", &url, "", &auth).await;
    assert_eq!(status, 400);
    // `dry_run=false` applies, with the scheme in lowercase.
    let url = sy.admin_url("/admin/services/svc/weights?dry_run=FALSE");
    let (status, body) = admin(&c, "PUT", &url, r#"{"stable":50,"canary":50}"#, &auth).await;
    assert_eq!(status, 200, "{body}");
    let (_, svc) = admin(&c, "GET", &sy.admin_url("/admin/services/svc"), "", &[]).await;
    assert_eq!(svc["weights"]["canary"], 50, "{svc}");
    let wrong = [("authorization", "Basic s3cret")];
    let url = sy.admin_url("/admin/services/svc/weights");
    let (status, _) = admin(&c, "PUT", &url, r#"{"stable":90,"canary":10}"#, &wrong).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_stalled_admin_clients_is_capped_and_cut_and_the_proxy_keeps_serving() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    // 300 clients each send half a request head and stall.
    let started = std::time::Instant::now();
    let mut crowd = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(sy.admin).await.expect("connect");
        let _ = s
            .write_all(b"GET /admin/status HTTP/1.1\r\nHost: x\r\n")
            .await;
        crowd.push(s);
    }
    // Past 256 they are closed at once; the proxy port still answers meanwhile.
    let mut closed = 0;
    for s in &mut crowd {
        let mut buf = [0u8; 1];
        // Closed with the head unread: a reset rather than an orderly end; both count.
        let read = tokio::io::AsyncReadExt::read(s, &mut buf);
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(20), read).await {
            closed += 1;
        }
    }
    assert!(
        (44..=60).contains(&closed),
        "{closed} of 300 closed at once (cap 256)"
    );
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    // The stalled ones are cut once the head timeout (10 s) passes; new clients get in.
    let mut open = crowd.len();
    while open > 0 && started.elapsed() < Duration::from_secs(20) {
        open = 0;
        for s in &mut crowd {
            let mut buf = [0u8; 1];
            match tokio::time::timeout(
                Duration::from_millis(1),
                tokio::io::AsyncReadExt::read(s, &mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => open += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        open,
        0,
        "stalled admin clients still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "cut too early: {:?}",
        started.elapsed()
    );
    let (status, _) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_hidden_by_retries_shows_in_the_error_counter() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // A port nobody listens on: bind, note, close.
    let dead = free_addr();
    let config = canary(&a, &b, 100, 0, "").replace(
        &format!("endpoints = [\"{}\"]", a.addr),
        &format!(
            "endpoints = [\"{}\", \"{dead}\"]\nbalance = \"round-robin\"",
            a.addr
        ),
    );
    let sy = Switchyard::start(&config);
    let c = client();
    for _ in 0..20 {
        assert_eq!(
            get(&c, &sy.url("/"), &[]).await.status,
            200,
            "a retry should hide the dead endpoint"
        );
    }
    let metrics = get(&c, &sy.admin_url("/metrics"), &[]).await.body;
    let connect_errors: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_upstream_errors_total") && l.contains("kind=\"connect\"")
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(
        connect_errors >= 5.0,
        "connect errors counted: {connect_errors}\n{metrics}"
    );
}

#[test]
fn check_ends_quietly_when_its_reader_goes_away() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    // Like `| head -0`: the reading end is closed before the command starts, so its first
    // write meets a broken pipe every time (not only when it loses a race).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(bin)
        .args(["check", "--config", demo])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cluster_is_404_without_a_cluster_section() {
    let up = Upstream::start("v1").await;
    let sy = Switchyard::start(&one_pool(&[up.addr], "", ""));
    let (status, v) = admin(&client(), "GET", &sy.admin_url("/admin/cluster"), "", &[]).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("[cluster]"),
        "{v}"
    );
    // /admin/status has no cluster object either.
    let (_, status_view) = admin(&client(), "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert!(status_view.get("cluster").is_none(), "{status_view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_changes_are_refused_token_or_not() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let config = blue_green(&blue, &green, "")
        .replace("persist = false\n", "persist = false\ntoken = \"s3cret\"\n");
    let sy = Switchyard::start(&config);
    let c = client();
    let url = sy.admin_url("/admin/services/web/swap?force=true");
    let own = format!("http://{}", sy.admin);
    // What a page on another site can make a browser send without a preflight.
    let forged: [&[(&str, &str)]; 4] = [
        &[
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        &[
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer s3cret"),
        ],
        &[
            ("sec-fetch-site", "cross-site"),
            ("authorization", "Bearer s3cret"),
        ],
        &[
            ("sec-fetch-site", "same-site"),
            ("authorization", "Bearer s3cret"),
        ],
    ];
    for headers in forged {
        let (status, body) = admin(&c, "POST", &url, "", headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("cross-site")),
            "{body}"
        );
        let url = sy.admin_url("/admin/services/web/weights");
        let (status, _) = admin(&c, "PUT", &url, r#"{"blue":1}"#, headers).await;
        assert_eq!(status, 403, "{headers:?}");
    }
    let state = service_state(&sy, "web").await;
    assert_eq!(
        state["active"], "blue",
        "a refused swap was applied: {state}"
    );
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "blue");
    // The page's own calls (same origin) and calls without Origin (curl, ctl) work.
    let (status, body) = admin(
        &c,
        "POST",
        &url,
        "",
        &[
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
            ("authorization", "Bearer s3cret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(service_state(&sy, "web").await["active"], "green");
    let (status, body) = admin(&c, "POST", &url, "", &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(service_state(&sy, "web").await["active"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_answers_only_ip_literals_localhost_and_allowed_names() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let config = canary(&a, &b, 90, 10, "").replace(
        "persist = false\n",
        "persist = false\nallowed_hosts = [\"Admin.Internal\"]\n",
    );
    let sy = Switchyard::start(&config);
    let c = client();
    let port = sy.admin.port();
    let status_url = sy.admin_url("/admin/status");
    let weights_url = sy.admin_url("/admin/services/svc/weights");
    // A DNS name rebound to 127.0.0.1 arrives with its own name as the Host.
    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        let h = [("host", host.as_str())];
        for path in ["/admin/status", "/healthz", "/ui", "/admin/events"] {
            let (status, body) = admin(&c, "GET", &sy.admin_url(path), "", &h).await;
            assert_eq!(status, 403, "GET {path} Host: {host}: {body}");
        }
        let (status, body) =
            admin(&c, "PUT", &weights_url, r#"{"stable":10,"canary":90}"#, &h).await;
        assert_eq!(status, 403, "PUT Host: {host}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("allowed_hosts")),
            "{body}"
        );
        let url = sy.admin_url("/admin/services/svc/rollback");
        let (status, body) = admin(&c, "POST", &url, "", &h).await;
        assert_eq!(status, 403, "POST Host: {host}: {body}");
    }
    assert_eq!(service_state(&sy, "svc").await["weights"]["stable"], 90);
    for host in [
        format!("admin.internal:{port}"),
        "ADMIN.internal".to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = admin(&c, "GET", &status_url, "", &[("host", host.as_str())]).await;
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
    let h = [("host", "admin.internal")];
    let (status, body) = admin(&c, "PUT", &weights_url, r#"{"stable":10,"canary":90}"#, &h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(service_state(&sy, "svc").await["weights"]["stable"], 10);
    // HTTP/1.0 without a Host names nothing to check.
    let answer = raw(
        sy.admin,
        b"GET /admin/status HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 403 "),
        "{answer}"
    );
}
