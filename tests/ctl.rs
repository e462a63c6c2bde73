//! `switchyard ctl`: the real binary as a process against a real switchyard and real
//! upstreams; every effect is checked through the admin API itself.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);

/// A finished `ctl` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `switchyard ctl [--admin URL] ARGS...` with a clean environment (no admin URL or token
/// leaking in from the one running the tests) plus `env`.
async fn ctl(admin: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.arg("ctl");
    if let Some(url) = admin {
        c.args(["--admin", url]);
    }
    c.args(args)
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .unwrap_or_else(|_| panic!("ctl {args:?} ended within 60 s"))
        .expect("ctl runs");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ctl` against `sy`'s admin API.
async fn ctl_on(sy: &Switchyard, args: &[&str]) -> Run {
    ctl(Some(&sy.admin_url("")), args, &[]).await
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

/// A canary service `name` at `/{name}` with a rollout section; baseline → a, canary → b.
fn rollout_service(name: &str, a: &Upstream, b: &Upstream, rollout: &str) -> String {
    format!(
        "\n[[routes]]\nservice = \"{name}\"\npath_prefix = \"/{name}\"\n[services.{name}]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n\
         [services.{name}.pools.stable]\nendpoints = [\"{}\"]\n[services.{name}.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.{name}.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n{rollout}\n",
        a.addr, b.addr
    )
}

/// A switchyard with rollout `rollout` on service `shop` (canary failing if `failing`), under
/// load, its rollout started with `ctl`.
async fn started_under_load(rollout: &str, failing: bool) -> (Switchyard, Load, [Upstream; 2]) {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    b.set_failing(failing);
    let sy = Switchyard::start(&format!(
        "{}{}",
        server_section(),
        rollout_service("shop", &a, &b, rollout)
    ));
    let load = Load::start(sy.url("/shop"), 4, vec![]);
    wait_until(T, "load to flow", || a.hits() > 50).await;
    let r = ctl_on(&sy, &["rollout", "shop", "start"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    (sy, load, [a, b])
}

async fn rollout_state(sy: &Switchyard, name: &str) -> String {
    service_state(sy, name).await["rollout"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_sets_the_split_and_says_so() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));

    let r = ctl_on(&sy, &["weights", "svc", "stable=50", "canary=50"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "svc: weights stable=50 canary=50, generation 2\n");
    let v = service_state(&sy, "svc").await;
    assert_eq!(v["weights"], json!({"stable": 50, "canary": 50}), "{v}");

    // --json: the server's answer, warnings included; --if-match with the live generation.
    let r = ctl_on(
        &sy,
        &["--json", "--if-match", "2", "weights", "svc", "canary=20"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let answer = json_of(&r);
    assert_eq!(answer["generation"], 3);
    assert_eq!(answer["weights"], json!({"stable": 50, "canary": 20}));
    assert!(
        answer["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("weight total changed")),
        "{answer}"
    );
    assert_eq!(service_state(&sy, "svc").await["generation"], 3);

    // A dry run says so and changes nothing; the human summary shows the warning.
    let r = ctl_on(&sy, &["weights", "svc", "canary=0", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.lines().next(),
        Some("dry run, nothing changed: svc: weights stable=50 canary=0, generation 4")
    );
    assert!(
        r.stdout.contains("\nwarning: weight total changed"),
        "{r:?}"
    );
    let v = service_state(&sy, "svc").await;
    assert_eq!(
        (v["generation"].as_u64(), &v["weights"]),
        (Some(3), &json!({"stable": 50, "canary": 20}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_exit_1_with_the_servers_message() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));

    let r = ctl_on(&sy, &["weights", "svc", "stable=50", "nope=50"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("400"), "{r:?}");
    assert!(r.stderr.contains("unknown pool \"nope\""), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");

    // Someone else changes the split: a change still sending generation 1 is refused (412).
    let r = ctl_on(&sy, &["weights", "svc", "canary=20", "stable=80"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = ctl_on(&sy, &["--if-match", "1", "weights", "svc", "canary=50"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("generation is 2, not 1: the state changed since you read it"),
        "{r:?}"
    );
    // With --json the refusal's JSON body is printed too, for scripts.
    let r = ctl_on(&sy, &["--json", "--if-match", "1", "rollback", "svc"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        json_of(&r)["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("generation is 2")),
        "{r:?}"
    );
    let v = service_state(&sy, "svc").await;
    assert_eq!(v["weights"], json!({"stable": 80, "canary": 20}), "{v}");
    assert_eq!(v["generation"], 2);

    let r = ctl_on(&sy, &["weights", "nosuch", "stable=1"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("404"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_is_refused_by_its_checks_forced_and_rolled_back() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let sy = Switchyard::start(&blue_green(
        &blue,
        &green,
        "prepromotion_checks = [\"/status/503\"]",
    ));

    let r = ctl_on(&sy, &["swap", "web"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("409"), "{r:?}");
    assert!(r.stderr.contains("prepromotion check failed"), "{r:?}");
    assert_eq!(service_state(&sy, "web").await["active"], "blue");

    let r = ctl_on(&sy, &["swap", "web", "--force"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "web: swapped, active=green standby=blue, generation 2\n"
    );
    assert_eq!(service_state(&sy, "web").await["active"], "green");
    assert_eq!(get(&client(), &sy.url("/"), &[]).await.body, "green");

    let r = ctl_on(&sy, &["rollback", "web"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "web: rolled back to active=blue standby=green, generation 3\n"
    );
    assert_eq!(service_state(&sy, "web").await["active"], "blue");

    let r = ctl_on(&sy, &["rollback", "web"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no earlier split"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_show_in_the_state_and_the_status() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sy = Switchyard::start(&one_pool(&[a.addr, b.addr], "", ""));
    let addr = a.addr.to_string();
    let draining = |v: &Value| {
        v["pools"]["stable"]["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["address"] == addr.as_str()))
            .map(|e| e["draining"].clone())
    };

    let r = ctl_on(&sy, &["drain", "svc", "stable", &addr]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("svc: {addr} in pool stable: draining, 0 in flight, generation 2\n")
    );
    assert_eq!(
        draining(&service_state(&sy, "svc").await),
        Some(json!(true))
    );
    let r = ctl_on(&sy, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let row = |addr: &str| {
        r.stdout
            .lines()
            .find(|l| l.contains(addr))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        row(&addr),
        Some(vec!["svc", "stable", addr.as_str(), "yes", "yes", "0"]),
        "{}",
        r.stdout
    );
    let other = b.addr.to_string();
    assert_eq!(
        row(&other),
        Some(vec!["svc", "stable", other.as_str(), "yes", "no", "0"]),
        "{}",
        r.stdout
    );

    // min_available = 1: the last endpoint in rotation cannot go.
    let r = ctl_on(&sy, &["drain", "svc", "stable", &other]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("below min_available"), "{r:?}");

    let r = ctl_on(&sy, &["undrain", "svc", "stable", &addr]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("svc: {addr} in pool stable: in rotation, 0 in flight, generation 3\n")
    );
    assert_eq!(
        draining(&service_state(&sy, "svc").await),
        Some(json!(false))
    );
}

/// The column starts of a table's header: where each word begins.
fn column_starts(header: &str) -> Vec<usize> {
    let b = header.as_bytes();
    (0..b.len())
        .filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' '))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_aligned_tables_and_json() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = format!(
        "{}{}\n[[routes]]\nservice = \"web\"\n[services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\n\
         [services.web.pools.blue]\nendpoints = [\"{}\"]\n[services.web.pools.green]\nendpoints = [\"{}\"]\n",
        server_section(),
        rollout_service("shop", &a, &b, "steps = [10, 100]\ninterval = \"1h\""),
        a.addr,
        b.addr
    );
    let sy = Switchyard::start(&toml);
    let r = ctl_on(&sy, &["rollout", "shop", "start"]).await;
    assert_eq!(r.code, 0, "{r:?}");

    let r = ctl_on(&sy, &["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let tables: Vec<Vec<&str>> = r
        .stdout
        .split("\n\n")
        .filter(|block| block.starts_with("SERVICE"))
        .map(|block| block.lines().collect())
        .collect();
    assert_eq!(tables.len(), 2, "{}", r.stdout);
    let (services, endpoints) = (&tables[0], &tables[1]);
    assert_eq!(
        services[0].split_whitespace().collect::<Vec<_>>(),
        ["SERVICE", "STRATEGY", "SPLIT", "ROLLOUT"]
    );
    assert!(
        services[1].starts_with("shop ")
            && services[1].contains(" canary ")
            && services[1].contains(" stable=90 canary=10 ")
            && services[1].ends_with(" progressing, step 1 of 2 (canary 10%)"),
        "{}",
        r.stdout
    );
    assert!(
        services[2].starts_with("web ")
            && services[2].contains(" blue-green ")
            && services[2].contains(" active=blue standby=green ")
            && services[2].ends_with(" -"),
        "{}",
        r.stdout
    );
    assert_eq!(
        endpoints.len(),
        5,
        "a header and four endpoints: {}",
        r.stdout
    );
    // Aligned: every cell of every row starts where its column's header starts.
    for table in [services, endpoints] {
        let starts = column_starts(table[0]);
        for line in &table[1..] {
            let bytes = line.as_bytes();
            for &s in &starts {
                let cell_starts_here =
                    bytes.get(s).is_some_and(|&c| c != b' ') && (s == 0 || bytes[s - 1] == b' ');
                assert!(
                    cell_starts_here,
                    "column at {s} not aligned in {line:?}:\n{}",
                    r.stdout
                );
            }
        }
    }
    assert!(
        r.stdout.starts_with(&format!(
            "admin {}  generation 2  config ",
            sy.admin_url("")
        )),
        "{}",
        r.stdout
    );

    let r = ctl_on(&sy, &["--json", "status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_of(&r);
    assert_eq!(v["status"]["generation"], 2, "{v}");
    assert_eq!(v["services"]["shop"]["rollout"]["state"], "progressing");
    assert_eq!(v["services"]["web"]["active"], "blue");
    assert_eq!(
        v["services"]["web"]["pools"]["green"]["endpoints"][0]["address"],
        b.addr.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_verbs_drive_the_rollout() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // An hour per step: the rollout only moves when told.
    let sy = Switchyard::start(&format!(
        "{}{}",
        server_section(),
        rollout_service("shop", &a, &b, "steps = [10, 50, 100]\ninterval = \"1h\"")
    ));

    let r = ctl_on(&sy, &["rollout", "shop", "start"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "shop: rollout progressing, step 1 of 3 (canary 10%), weights stable=90 canary=10, generation 2\n"
    );
    assert_eq!(rollout_state(&sy, "shop").await, "progressing");

    let r = ctl_on(&sy, &["rollout", "shop", "pause"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(rollout_state(&sy, "shop").await, "paused");
    let r = ctl_on(&sy, &["rollout", "shop", "resume"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(rollout_state(&sy, "shop").await, "progressing");

    let r = ctl_on(&sy, &["rollout", "shop", "abort"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(aborted by admin)"), "{r:?}");
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "aborted");
    assert_eq!(v["weights"], json!({"stable": 100, "canary": 0}));

    let r = ctl_on(&sy, &["rollout", "shop", "abort"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("rollout is already aborted"), "{r:?}");

    let r = ctl_on(&sy, &["--json", "rollout", "shop", "promote"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json_of(&r)["rollout"]["state"], "promoted");
    let v = service_state(&sy, "shop").await;
    assert_eq!(v["rollout"]["state"], "promoted");
    assert_eq!(v["weights"], json!({"stable": 0, "canary": 100}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_exits_0_once_the_rollout_is_promoted() {
    let (sy, load, _upstreams) = started_under_load(
        "steps = [10, 50, 100]\ninterval = \"500ms\"\nmin_requests = 10",
        false,
    )
    .await;
    let r = ctl_on(&sy, &["rollout", "shop", "watch", "--every", "50ms"]).await;
    load.finish().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(rollout_state(&sy, "shop").await, "promoted");
    // Not a terminal: one plain line per change, the last one the promotion.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.len() >= 2, "{r:?}");
    assert!(
        !r.stdout.contains('\x1b'),
        "no escape codes in a pipe: {r:?}"
    );
    let last = lines.last().copied().unwrap_or("");
    assert!(
        last.contains("shop: promoted (canary 100%) [##############################] 100%"),
        "{r:?}"
    );
    assert!(last.contains("; last verdict: step "), "{r:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("progressing, step 2 of 3 (canary 50%)")),
        "the middle step was seen: {r:?}"
    );

    // --json: one JSON state per change; a promoted rollout ends the watch at once.
    let r = ctl_on(&sy, &["--json", "rollout", "shop", "watch"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON line");
    assert_eq!(v["rollout"]["state"], "promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_exits_1_once_the_rollout_aborts() {
    let (sy, load, _upstreams) = started_under_load(
        "steps = [20, 50, 100]\ninterval = \"5s\"\nmin_requests = 20\nmax_error_rate = 0.05",
        true,
    )
    .await;
    let r = ctl_on(&sy, &["rollout", "shop", "watch", "--every", "50ms"]).await;
    load.finish().await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(rollout_state(&sy, "shop").await, "aborted");
    assert!(
        r.stderr
            .contains("rollout of shop aborted: canary 5xx 100.0%"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .lines()
            .last()
            .is_some_and(|l| l.contains("shop: aborted at step 1 of 3 (canary 0%)")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_1_when_no_rollout_runs() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&format!(
        "{}{}\n[[routes]]\nservice = \"plain\"\npath_prefix = \"/plain\"\n[services.plain]\nstrategy = \"canary\"\nweights = {{ stable = 1 }}\n[services.plain.pools.stable]\nendpoints = [\"{}\"]\n",
        server_section(),
        rollout_service("shop", &a, &b, "steps = [10, 100]"),
        a.addr
    ));

    let r = ctl_on(&sy, &["rollout", "shop", "watch"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("no rollout of shop is running (state idle)"),
        "{r:?}"
    );
    let r = ctl_on(&sy, &["rollout", "plain", "watch"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("plain has no rollout section"), "{r:?}");
    let r = ctl_on(&sy, &["rollout", "nosuch", "watch"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("404"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_admin_exits_2() {
    let url = format!("http://{}", free_addr());
    for args in [
        &["status"][..],
        &["weights", "svc", "stable=1"],
        &["swap", "web"],
        &["rollout", "shop", "watch"],
    ] {
        let r = ctl(Some(&url), args, &[]).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("admin unreachable: ") && r.stderr.contains("cannot connect"),
            "{r:?}"
        );
    }
    // The URL from the environment.
    let r = ctl(None, &["status"], &[("SWITCHYARD_ADMIN", &url)]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("GET {url}/admin/status")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_the_environment() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(
        &canary(&a, &b, 90, 10, "")
            .replace("persist = false\n", "persist = false\ntoken = \"s3cret\"\n"),
    );
    let url = sy.admin_url("");

    let r = ctl(
        None,
        &["weights", "svc", "canary=20"],
        &[("SWITCHYARD_ADMIN", &url)],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("401") && r.stderr.contains("missing or wrong bearer token"),
        "{r:?}"
    );
    assert!(r.stderr.contains("hint: "), "{r:?}");
    let r = ctl(
        Some(&url),
        &["weights", "svc", "canary=20"],
        &[("SWITCHYARD_ADMIN_TOKEN", "wrong")],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!r.stderr.contains("hint: "), "a token was given: {r:?}");
    assert_eq!(
        service_state(&sy, "svc").await["weights"],
        json!({"stable": 90, "canary": 10})
    );

    let r = ctl(
        None,
        &["weights", "svc", "canary=20"],
        &[
            ("SWITCHYARD_ADMIN", &url),
            ("SWITCHYARD_ADMIN_TOKEN", "s3cret"),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        service_state(&sy, "svc").await["weights"],
        json!({"stable": 90, "canary": 20})
    );
    // Reads need no token.
    let r = ctl(Some(&url), &["status"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_1_so_2_always_means_unreachable() {
    let url = format!("http://{}", free_addr());
    for args in [
        &["weights", "svc", "stable=x"][..],
        &["weights", "svc"],
        &["weights", "svc", "a=1", "a=2"],
        &["rollout", "shop", "jump"],
        &["--if-match", "3", "status"],
        &["nosuchverb"],
    ] {
        let r = ctl(Some(&url), args, &[]).await;
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
    }
    let r = ctl(Some("https://127.0.0.1:9901"), &["status"], &[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("https is not supported"), "{r:?}");
    let r = ctl(None, &["--help"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("rollout"), "{r:?}");
}

/// A stand-in admin API on a loopback port: each request's path (query included) gets the
/// canned `(status line, body)` of the first entry it starts with, JSON unless the body is
/// not; anything else a 404 text.
async fn fake_admin(answers: Vec<(&'static str, &'static str, String)>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("");
                let (status, body) = answers
                    .iter()
                    .find(|(p, _, _)| path.starts_with(p))
                    .map_or(("404 Not Found", "not here".to_string()), |(_, s, b)| {
                        (*s, b.clone())
                    });
                let kind = if body.starts_with('{') {
                    "application/json"
                } else {
                    "text/plain"
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_the_admin_api_s_exits_2() {
    // A server that answers 502 with a text body, as a proxy in front of a dead admin would.
    let up = Upstream::start("bad gateway").await;
    up.set_failing(true);
    let url = format!("http://{}", up.addr);
    for args in [
        &["status"][..],
        &["weights", "svc", "stable=1"],
        &["rollout", "shop", "watch"],
    ] {
        let r = ctl(Some(&url), args, &[]).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("admin unreachable: ")
                && r.stderr.contains("502 Bad Gateway: bad gateway"),
            "{r:?}"
        );
    }
    let url = fake_admin(vec![(
        "/",
        "504 Gateway Timeout",
        "upstream timed out".into(),
    )])
    .await;
    let r = ctl(Some(&url), &["status"], &[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("504 Gateway Timeout"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_the_admin_api_exits_2_and_other_refusals_1() {
    let store_down = json!({"error": "cluster store unavailable: no member answered"}).to_string();
    let url = fake_admin(vec![
        (
            "/admin/services/svc/weights",
            "503 Service Unavailable",
            store_down,
        ),
        (
            "/admin/services/web/swap",
            "409 Conflict",
            json!({"error": "no"}).to_string(),
        ),
    ])
    .await;
    let r = ctl(Some(&url), &["weights", "svc", "stable=1"], &[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .starts_with("unavailable (503 Service Unavailable): cluster store unavailable"),
        "{r:?}"
    );
    let r = ctl(Some(&url), &["--json", "weights", "svc", "stable=1"], &[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(json_of(&r)["error"].is_string(), "{r:?}");
    let r = ctl(Some(&url), &["swap", "web"], &[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.starts_with("refused (409 Conflict): no"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_skips_a_service_removed_between_its_calls() {
    // The status still lists `gone`, which a reload removed before its own call.
    let summary = json!({"strategy": "canary", "weights": {"stable": 100}, "active": null});
    let status = json!({
        "generation": 3, "config_path": "/etc/switchyard.toml", "persisted": true,
        "last_reload": {"ok": true, "at": "2026-12-06T09:00:00Z", "error": null},
        "restart_required": null,
        "services": {"kept": summary, "gone": summary},
    });
    let kept = json!({"name": "kept", "strategy": "canary", "generation": 3,
        "persisted": true, "weights": {"stable": 100}, "active": null, "standby": null,
        "pools": {}, "rollout": null});
    let url = fake_admin(vec![
        ("/admin/status", "200 OK", status.to_string()),
        ("/admin/services/kept", "200 OK", kept.to_string()),
        (
            "/admin/services/gone",
            "404 Not Found",
            json!({"error": "no service \"gone\""}).to_string(),
        ),
    ])
    .await;
    let r = ctl(Some(&url), &["--json", "status"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let services = json_of(&r)["services"].clone();
    assert_eq!(
        services
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["kept".to_string()]),
        "{r:?}"
    );
    let r = ctl(Some(&url), &["status"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("kept") && !r.stdout.contains("gone"),
        "{r:?}"
    );
}
