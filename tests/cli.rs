//! The command line: `check`, `route`, `demo` and signals, run as the real binary.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn switchyard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.env("RUST_LOG", "warn");
    c
}

fn check(path: &Path) -> (bool, String, String) {
    let out = switchyard()
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .expect("config/")
        .flatten()
        .map(|e| e.path())
        .collect();
    if let Ok(examples) = std::fs::read_dir(root.join("examples")) {
        files.extend(examples.flatten().map(|e| e.path()));
    }
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    assert!(!files.is_empty());
    for f in files {
        let (ok, stdout, stderr) = check(&f);
        assert!(ok, "{} is invalid:\n{stderr}", f.display());
        assert!(stdout.contains("is valid"), "{stdout}");
    }
}

#[test]
fn broken_configs_name_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str, &[&str])] = &[
        ("syntax.toml", "[server\nlisten = 1\n", &["syntax.toml:1:"]),
        (
            "unknown-key.toml",
            "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = \"x\"\n",
            &["unknown-key.toml:3:1: server.lisen: unknown field `lisen`"],
        ),
        (
            "unknown-pool.toml",
            "[[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\nweights = { stable = 95, canry = 5 }\n[services.shop.pools.stable]\nendpoints = [\"127.0.0.1:1\"]\n[services.shop.pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n",
            &[
                "unknown-pool.toml:5:11: services.shop.weights: unknown pool \"canry\" (pools: stable, canary)",
            ],
        ),
        (
            // Two problems in one file: both reported.
            "route.toml",
            "[[routes]]\nservice = \"nope\"\n[services.shop]\nstrategy = \"ab\"\nweights = { a = 1 }\n[services.shop.pools.a]\nendpoints = [\"127.0.0.1:1\"]\n",
            &[
                "route.toml:2:11: routes[0].service: unknown service \"nope\"",
                "services.shop.hash_key",
            ],
        ),
    ];
    for (name, text, wants) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let (ok, _, stderr) = check(&path);
        assert!(!ok, "{name} must fail");
        for want in *wants {
            assert!(stderr.contains(want), "{name}: want {want:?} in:\n{stderr}");
        }
    }
}

#[test]
fn route_explains_the_decision() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let run = |args: &[&str]| {
        let out = switchyard()
            .arg("route")
            .arg("--config")
            .arg(&demo)
            .args(args)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    // md5("alice") = 6384e2b2… → 1669653170 % 100 = 70 → B
    assert_eq!(
        run(&["--path", "/ab", "--header", "x-user-id: alice"]),
        "service=checkout pool=B reason=bucket bucket=70"
    );
    assert_eq!(
        run(&["--path", "/ab"]),
        "service=checkout pool=A reason=default"
    );
    assert_eq!(
        run(&["--header", "x-canary: true"]),
        "service=shop pool=canary reason=override"
    );
    assert_eq!(
        run(&["--cookie", "sy_bucket=95"]),
        "service=shop pool=canary reason=affinity bucket=95"
    );
    assert_eq!(
        run(&["--path", "/bg"]),
        "service=web pool=blue reason=active"
    );
    assert_eq!(
        run(&["--path", "/bg", "--header", "x-preview: true"]),
        "service=web pool=green reason=preview"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_every_strategy_and_exits_on_sigterm() {
    let mut child = switchyard()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    let stdout = child.stdout.take().expect("stdout");
    // The whole banner, up to its last line.
    let banner = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let mut reader = BufReader::new(stdout);
        while !out.contains("Ctrl-C") {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            out.push_str(&line);
        }
        Ok::<_, std::io::Error>(out)
    });
    let banner = tokio::time::timeout(Duration::from_secs(20), banner)
        .await
        .expect("banner in time")
        .expect("join")
        .expect("read");
    let first = banner.lines().next().unwrap_or_default().to_string();
    // "switchyard demo: proxy on http://127.0.0.1:PORT  (...)"
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address in banner")
        .to_string();
    let c = client();
    let url = |p: &str| format!("http://{addr}{p}");
    let r = get(&c, &url("/"), &[("x-canary", "true")]).await;
    assert!(r.body.starts_with("v2 "), "{}", r.body);
    assert_eq!(r.header("x-switchyard-pool"), Some("canary"));
    assert!(
        get(&c, &url("/ab"), &[("x-user-id", "alice")])
            .await
            .body
            .starts_with("v2 ")
    );
    assert!(
        get(&c, &url("/ab"), &[("x-user-id", "bob")])
            .await
            .body
            .starts_with("v1 ")
    );
    assert!(get(&c, &url("/bg"), &[]).await.body.starts_with("v1 "));
    assert!(
        get(&c, &url("/bg"), &[("x-preview", "true")])
            .await
            .body
            .starts_with("v2 ")
    );

    // The admin API is in the banner, and the demo says it writes no file.
    let admin_addr = first
        .split("http://")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .expect("admin address in banner")
        .to_string();
    let status = get(&c, &format!("http://{admin_addr}/admin/status"), &[]).await;
    assert!(
        status.body.contains("\"persisted\": false"),
        "{}",
        status.body
    );
    // The printed `route` command runs as printed.
    let route = banner
        .lines()
        .find(|l| l.contains(" route --config "))
        .expect("route line in banner")
        .trim()
        .to_string();
    let out = Command::new("sh")
        .args(["-c", &route])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run route");
    assert!(
        out.status.success(),
        "{route}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        explained.starts_with("service=checkout pool=B "),
        "{route}: {explained}"
    );

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn a_missing_config_says_how_to_name_one() {
    let out = switchyard()
        .arg("check")
        .current_dir(std::env::temp_dir())
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("config/switchyard.toml"), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(stderr.contains("SWITCHYARD_CONFIG"), "{stderr}");
}

#[test]
fn a_port_in_use_is_reported_once_naming_its_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = switchyard()
        .args([
            "demo",
            "--listen",
            &addr,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let wanted = format!("cannot listen on server.listen {addr}");
    assert_eq!(stderr.matches(&wanted).count(), 1, "{stderr}");
    assert!(!stderr.contains("server.tls.listen"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_asks_the_admin_listener_for_container_health_checks() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // A concrete admin port (the command reads it from the file).
    let port = free_addr().port();
    let config = canary(&a, &b, 100, 0, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"0.0.0.0:{port}\"\ntoken = \"t\""),
    );
    let mut sy = Switchyard::start(&config);
    let path = sy.path.clone();
    let ready = move || {
        switchyard()
            .args(["ready", "--config"])
            .arg(&path)
            .output()
            .expect("runs")
    };
    let run = ready.clone();
    let out = tokio::task::spawn_blocking(run).await.expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sy.shutdown().await;
    let out = tokio::task::spawn_blocking(ready).await.expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `switchyard run` on `toml`, expected to give up: its exit code and stderr.
fn run_to_the_end(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), toml);
    let mut child = switchyard()
        .args(["run", "--workers", "2", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second switchyard on a busy address is still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    (status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_busy_address_exits_1_and_the_first_keeps_every_connection() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let (c, d) = (
        Upstream::start("intruder").await,
        Upstream::start("intruder2").await,
    );
    let admin = free_addr();
    let first = canary(&a, &b, 100, 0, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let first = ProxyProcess::spawn_with(
        &first,
        &ProcessOptions {
            workers: 2,
            ..ProcessOptions::default()
        },
    );
    // Same proxy address, its own admin port and upstreams: a joiner would show in answers.
    let same_listen = canary(&c, &d, 100, 0, "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", first.addr),
        1,
    );
    let (code, stderr) = tokio::task::spawn_blocking(move || run_to_the_end(&same_listen))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "{stderr}");
    let wanted = format!("cannot listen on server.listen {}", first.addr);
    assert!(stderr.contains(&wanted), "{stderr}");
    // Same admin address, its own proxy port.
    let same_admin = canary(&c, &d, 100, 0, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let (code, stderr) = tokio::task::spawn_blocking(move || run_to_the_end(&same_admin))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on admin.listen {admin}")),
        "{stderr}"
    );

    // Every new connection still reaches the first, with its weights (stable 100%).
    for i in 0..40 {
        let answer = raw(
            first.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            answer.contains("x-upstream: v1"),
            "connection {i}: {answer}"
        );
    }
    assert_eq!(
        c.hits() + d.hits(),
        0,
        "the second switchyard took connections"
    );
    assert!(first.alive());
    let r = get(&client(), &format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_busy_tls_address_exits_1() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let certs = tempfile::tempdir().expect("tempdir");
    support::pki::Pki::new().write_leaf(certs.path(), "a", &["a.example.test"]);
    let tls = |listen: &str| {
        canary(&a, &b, 100, 0, "").replacen(
            "[admin]",
            &format!(
                "[server.tls]\nlisten = \"{listen}\"\ncerts = [ {{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }} ]\n[admin]",
                d = certs.path().display()
            ),
            1,
        )
    };
    let first = Switchyard::start(&tls("127.0.0.1:0"));
    let busy = first.tls.expect("TLS listener");
    let second = tls(&busy.to_string());
    let (code, stderr) = tokio::task::spawn_blocking(move || run_to_the_end(&second))
        .await
        .expect("join");
    assert_eq!(code, Some(1), "{stderr}");
    let wanted = format!("cannot listen on server.tls.listen {busy}");
    assert!(stderr.contains(&wanted), "{stderr}");
}
