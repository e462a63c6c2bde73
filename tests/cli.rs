//! The command line: `check`, `route`, `demo`, signals, help, completions and the man page,
//! run as the real binary.

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
    // One space between words: no indentation of the source leaks into the message.
    assert!(!stderr.contains("  "), "{stderr:?}");
    assert!(stderr.lines().all(|l| !l.starts_with(' ')), "{stderr:?}");
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
    // A concrete admin port (the command reads it from the file): one found free may be
    // taken by a parallel test before switchyard binds it, so a few are tried.
    let mut tries = 0;
    let mut sy = loop {
        let port = free_addr().port();
        let config = canary(&a, &b, 100, 0, "").replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"0.0.0.0:{port}\"\ntoken = \"t\""),
        );
        match Switchyard::try_start(&config) {
            Ok(sy) => break sy,
            Err(_) if tries < 5 => tries += 1,
            Err(e) => panic!("switchyard starts: {e:#}"),
        }
    };
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

#[test]
fn version_names_the_features_compiled_in() {
    let out = switchyard().arg("--version").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "switchyard {} (features: fleet, tls, ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}

#[test]
fn check_shows_each_pools_share_and_warns_on_an_odd_total() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = |name: &str, weights: &str, pools: &[&str]| {
        let mut text = format!(
            "[[routes]]\npath_prefix = \"/{name}\"\nservice = \"{name}\"\n\
             [services.{name}]\nstrategy = \"canary\"\nweights = {{ {weights} }}\n"
        );
        for (i, pool) in pools.iter().enumerate() {
            text.push_str(&format!(
                "[services.{name}.pools.{pool}]\nendpoints = [\"127.0.0.1:{}\"]\n",
                i + 1
            ));
        }
        text
    };
    let text = [
        server_section(),
        service("pct", "stable = 95, canary = 5", &["stable", "canary"]),
        service("odd", "stable = 90, canary = 5", &["stable", "canary"]),
        service("bp", "stable = 9999, canary = 1", &["stable", "canary"]),
        service("thirds", "a = 1, b = 1, c = 1", &["a", "b", "c"]),
        service("one", "only = 1, spare = 0", &["only", "spare"]),
    ]
    .concat();
    let path = write_config(dir.path(), &text);
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    for want in [
        "pool stable: 127.0.0.1:1  weight 95 (95%, buckets 0..94)",
        "pool canary: 127.0.0.1:2  weight 5 (5%, buckets 95..99)",
        "pool stable: 127.0.0.1:1  weight 90 (94.74%, buckets 0..89)",
        "pool canary: 127.0.0.1:2  weight 5 (5.26%, buckets 90..94)",
        "pool canary: 127.0.0.1:2  weight 1 (0.01%, buckets 9999..9999)",
        "pool a: 127.0.0.1:1  weight 1 (33.33%, buckets 0..0)",
        "pool spare: 127.0.0.1:2  weight 0 (0%)",
        "warning: services.odd.weights add up to 95, not 100 or 10000: each pool gets its \
         weight's part of 95 (stable 94.74%, canary 5.26%)",
        "warning: services.thirds.weights add up to 3, not 100 or 10000",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    // 100, 10000, and all the weight on one pool: nothing to warn about.
    for quiet in ["services.pct.", "services.bp.", "services.one."] {
        assert!(!stdout.contains(quiet), "{quiet:?} in:\n{stdout}");
    }
}

/// Every command, nested ones included, with its path of names.
fn commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands() {
        let name = format!("{path} {}", sub.get_name());
        commands(sub, name.clone(), out);
        out.push((name, sub.clone()));
    }
}

#[test]
fn help_has_text_for_every_argument_and_serving_flags_only_where_they_apply() {
    use clap::CommandFactory as _;
    let mut all = Vec::new();
    commands(
        &switchyard::cli::Cli::command(),
        "switchyard".into(),
        &mut all,
    );
    assert!(all.len() > 10, "{}", all.len());
    for (name, cmd) in &all {
        assert!(cmd.get_about().is_some(), "{name} has no help text");
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "{name}: {id} has no help text");
        }
        let flags: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| ["workers", "log-format"].contains(l))
            .collect();
        let serves = name == "switchyard run" || name == "switchyard demo";
        let want: &[&str] = if serves {
            &["workers", "log-format"]
        } else {
            &[]
        };
        assert_eq!(flags, want, "{name}");
    }
    // The help says so too.
    let help = |args: &[&str]| {
        let out = switchyard().args(args).output().expect("runs");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(help(&["run", "--help"]).contains("--log-format"));
    assert!(help(&["demo", "--help"]).contains("--workers"));
    for args in [["check", "--help"], ["route", "--help"], ["ctl", "--help"]] {
        let text = help(&args);
        assert!(!text.contains("--workers"), "{args:?}: {text}");
        assert!(!text.contains("--log-format"), "{args:?}: {text}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let script = |shell: &str| {
        let out = switchyard()
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bash = script("bash");
    let zsh = script("zsh");
    let fish = script("fish");
    assert!(zsh.starts_with("#compdef switchyard"), "{zsh}");
    assert!(fish.contains("complete -c switchyard"), "{fish}");
    for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        for word in ["ctl", "rollout", "log-format", "completions", "manpage"] {
            assert!(text.contains(word), "{shell}: no {word:?}");
        }
    }
    // bash loads it and completes the commands.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("switchyard.bash");
    std::fs::write(&file, &bash).expect("write");
    let probe = format!(
        "source {}; COMP_WORDS=(switchyard ch); COMP_CWORD=1; _switchyard switchyard ch switchyard; \
         echo \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash")
        .args(["-c", &probe])
        .output()
        .expect("bash");
    let completed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        completed.trim(),
        "check",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manpage_for_switchyard_and_each_command() {
    let out = switchyard().arg("manpage").output().expect("runs");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH switchyard 1"), "{page}");
    for word in ["run", "check", "ctl", "completions"] {
        assert!(page.contains(word), "{word:?} in:\n{page}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = switchyard()
        .args(["manpage", "--dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let run = read("switchyard-run.1");
    assert!(run.contains(".TH switchyard-run 1"), "{run}");
    assert!(run.contains("\\-\\-workers"), "{run}");
    assert!(!read("switchyard-check.1").contains("workers"));
    assert!(read("switchyard-ctl-weights.1").contains("POOL=W"));
}

#[test]
fn the_reference_configs_cluster_section_names_real_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    let text = std::fs::read_to_string(&path).expect("config/switchyard.toml");
    // Uncomment `# [cluster]` and its `# key = value` lines (its notes are `# # ...`).
    let mut inside = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line == "# [cluster]" {
                inside = true;
                return "[cluster]".to_string();
            }
            if inside && !line.starts_with('#') {
                inside = false;
            }
            match line.strip_prefix("# ") {
                Some(rest) if inside && !rest.starts_with('#') => rest.to_string(),
                _ => line.to_string(),
            }
        })
        .collect();
    assert!(
        lines.iter().any(|l| l == "[cluster]") && lines.iter().any(|l| l.starts_with("etcd = ")),
        "no commented [cluster] section with its keys"
    );
    let uncommented = lines.join("\n");
    let env = |name: &str| (name == "ETCD_PASSWORD").then(|| "secret".to_string());
    let errors = match switchyard::config::parse_with_env(&uncommented, &path, &env) {
        Ok(config) => panic!("the TLS files do not exist: {:?}", config.cluster),
        Err(errors) => errors,
    };
    // The example's TLS files are not there, and ca/cert/key need https:// endpoints; every
    // key is known and every other value valid.
    for d in &errors.0 {
        assert!(
            d.key_path.starts_with("cluster.") || d.key_path == "cluster",
            "{errors}"
        );
        assert!(
            [
                "cluster.ca",
                "cluster.cert",
                "cluster.key",
                "cluster.etcd",
                "cluster"
            ]
            .iter()
            .any(|k| d.key_path.starts_with(k)),
            "{errors}"
        );
        assert!(!d.message.contains("unknown field"), "{errors}");
    }
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
