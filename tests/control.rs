//! The control plane (issue "The control plane"): admin API, hot reload and persistence,
//! with real traffic flowing while the split changes.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(10);

fn pools_of(v: &Value) -> Vec<String> {
    v["pools"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_change_under_load_without_a_failed_request() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || a.hits() > 200).await;

    let sent_at = tokio::time::Instant::now();
    let (status, v) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":50,"canary":50}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["weights"], json!({"stable": 50, "canary": 50}));
    assert_eq!(v["generation"], 2);
    let changed_at = tokio::time::Instant::now();
    wait_until(T, "load after the change", || b.hits() > 300).await;
    let samples = load.finish().await;
    assert!(
        failures(&samples).is_empty(),
        "failed requests: {:?}",
        failures(&samples).first()
    );
    // Answered before the change was sent (a request started just before it may reach the
    // proxy after it: the client's clock is not the proxy's).
    let before: Vec<_> = samples.iter().filter(|s| s.finished < sent_at).collect();
    let after: Vec<_> = samples.iter().filter(|s| s.started >= changed_at).collect();
    assert!(
        before.iter().all(|s| s.body == "v1"),
        "no canary traffic at weight 0"
    );
    let v2 = after.iter().filter(|s| s.body == "v2").count();
    let share = v2 as f64 / after.len() as f64;
    assert!(
        (0.4..0.6).contains(&share),
        "canary share after 50/50: {share} of {}",
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_swap_under_load_is_atomic_then_rolls_back() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let toml = blue_green(&blue, &green, "prepromotion_checks = [\"/status/200\"]");
    let sy = Switchyard::start(&toml);
    let c = client();
    let load = Load::start(sy.url("/"), 8, vec![]);
    wait_until(T, "load to flow", || blue.hits() > 200).await;

    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/web/swap"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["active"].as_str(), v["standby"].as_str()),
        (Some("green"), Some("blue"))
    );
    let swapped_at = tokio::time::Instant::now();
    let green_hits = green.hits();
    wait_until(T, "traffic on green", || green.hits() > green_hits + 300).await;

    let rollback_sent_at = tokio::time::Instant::now();
    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/web/rollback"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["active"], "blue");
    let rolled_back_at = tokio::time::Instant::now();
    let blue_hits = blue.hits();
    wait_until(T, "traffic back on blue", || blue.hits() > blue_hits + 300).await;

    let samples = load.finish().await;
    assert!(
        failures(&samples).is_empty(),
        "failed: {:?}",
        failures(&samples).first()
    );
    for s in &samples {
        // Sent after the swap answer and answered before the rollback was asked for.
        if s.started >= swapped_at && s.finished < rollback_sent_at {
            // Only the checks' own request (GET /status/200) touched green before the swap.
            assert_eq!(
                s.body,
                "green",
                "a request sent {:?} after the swap answer went elsewhere",
                s.started - swapped_at
            );
        }
        if s.started >= rolled_back_at {
            assert_eq!(
                s.body, "blue",
                "a request sent after the rollback answer went elsewhere"
            );
        }
    }
    // Nothing left to roll back to after stepping back once more.
    let (status, _) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/web/rollback"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_is_refused_when_prepromotion_checks_fail_unless_forced() {
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let toml = blue_green(
        &blue,
        &green,
        "prepromotion_checks = [\"/status/200\", \"/status/503\"]",
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/web/swap"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("/status/503"),
        "{v}"
    );
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "blue");
    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/web/swap?force=true"),
        "",
        &[],
    )
    .await;
    assert_eq!((status, v["active"].as_str()), (200, Some("green")));
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_dry_run_and_bad_calls_leave_the_split_unchanged() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = canary(&a, &b, 100, 0, "")
        .replace("persist = false\n", "persist = false\ntoken = \"s3cret\"\n");
    let sy = Switchyard::start(&toml);
    let c = client();
    let auth = ("authorization", "Bearer s3cret");
    let url = sy.admin_url("/admin/services/svc/weights");

    // 401 before anything else, even for an unknown service.
    for (path, hdrs) in [
        ("/admin/services/svc/weights", vec![]),
        (
            "/admin/services/nope/weights",
            vec![("authorization", "Bearer wrong")],
        ),
    ] {
        let (status, v) = admin(&c, "PUT", &sy.admin_url(path), r#"{"canary":10}"#, &hdrs).await;
        assert_eq!(status, 401, "{path}: {v}");
    }
    // 404 before 412 before 400.
    let (status, _) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/nope/weights"),
        "not json",
        &[auth, ("if-match", "99")],
    )
    .await;
    assert_eq!(status, 404);
    let (status, v) = admin(&c, "PUT", &url, "not json", &[auth, ("if-match", "99")]).await;
    assert_eq!(status, 412, "{v}");
    for bad in [
        "not json",
        r#"{"canry":5}"#,
        r#"{"canary":-1}"#,
        r#"{"canary":1.5}"#,
        r#"{"stable":0}"#,
        r#"[1]"#,
        "{}",
    ] {
        let (status, v) = admin(&c, "PUT", &url, bad, &[auth]).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url("/admin/services/svc/pools/stable/endpoints/10.9.9.9:1/drain"),
        "",
        &[auth],
    )
    .await;
    assert_eq!(status, 404, "{v}");

    // Dry run: the answer shows the result; nothing changes.
    let (status, v) = admin(
        &c,
        "PUT",
        &format!("{url}?dry_run=true"),
        r#"{"stable":0,"canary":100}"#,
        &[auth, ("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["dry_run"].as_bool(), v["weights"]["canary"].as_u64()),
        (Some(true), Some(100))
    );
    let (_, v) = admin(&c, "GET", &sy.admin_url("/admin/services/svc"), "", &[]).await;
    assert_eq!(
        (v["generation"].as_u64(), v["weights"]["canary"].as_u64()),
        (Some(1), Some(0))
    );
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    }

    // With the right generation the change applies; the old generation is now stale.
    let (status, v) = admin(
        &c,
        "PUT",
        &url,
        r#"{"stable":0,"canary":100}"#,
        &[auth, ("if-match", "1")],
    )
    .await;
    assert_eq!((status, v["generation"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v2");
    let (status, _) = admin(
        &c,
        "PUT",
        &url,
        r#"{"stable":100,"canary":0}"#,
        &[auth, ("if-match", "1")],
    )
    .await;
    assert_eq!(status, 412);
    // GETs stay open without the token.
    let (status, v) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!((status, v["generation"].as_u64()), (200, Some(2)));
    assert_eq!(
        pools_of(
            &admin(&c, "GET", &sy.admin_url("/admin/services/svc"), "", &[])
                .await
                .1
        ),
        vec!["stable", "canary"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_honours_min_available_and_stops_new_requests() {
    let (a1, a2, b) = (
        Upstream::start("a1").await,
        Upstream::start("a2").await,
        Upstream::start("b").await,
    );
    let toml = format!(
        "{}\n[[routes]]\nservice = \"svc\"\n[services.svc]\nstrategy = \"canary\"\nweights = {{ stable = 100, canary = 0 }}\n[services.svc.pools.stable]\nendpoints = [\"{}\", \"{}\"]\nmin_available = 1\n[services.svc.pools.canary]\nendpoints = [\"{}\"]\n",
        server_section(),
        a1.addr,
        a2.addr,
        b.addr
    );
    let sy = Switchyard::start(&toml);
    let c = client();
    let drain = |addr: std::net::SocketAddr, action: &str| {
        sy.admin_url(&format!(
            "/admin/services/svc/pools/stable/endpoints/{addr}/{action}"
        ))
    };
    let (status, v) = admin(&c, "POST", &drain(a1.addr, "drain"), "", &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pools"]["stable"]["endpoints"][0]["draining"], true);
    let a1_hits = a1.hits();
    for _ in 0..30 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "a2");
    }
    assert_eq!(
        a1.hits(),
        a1_hits,
        "a drained endpoint gets no new requests"
    );
    // Draining the last available endpoint would break min_available = 1.
    let (status, v) = admin(&c, "POST", &drain(a2.addr, "drain"), "", &[]).await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = admin(&c, "POST", &drain(a1.addr, "undrain"), "", &[]).await;
    assert_eq!(status, 200);
    wait_for(T, "a1 back in rotation", || async {
        get(&client(), &sy.url("/"), &[]).await.body == "a1"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_in_place_by_rename_and_by_symlink_swap_are_picked_up() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Kubernetes ConfigMap layout: switchyard.toml -> ..data/switchyard.toml, ..data -> ..v1
    let dir = tempfile::tempdir().expect("tempdir");
    let v1dir = dir.path().join("..v1");
    std::fs::create_dir(&v1dir).expect("mkdir");
    let text = |s, c| canary(&a, &b, s, c, "");
    std::fs::write(v1dir.join("switchyard.toml"), text(100, 0)).expect("write");
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/switchyard.toml", dir.path().join("switchyard.toml"))
        .expect("link");
    let path = dir.path().join("switchyard.toml");
    let sy = Switchyard::start_at(dir, path.clone());
    let c = client();
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v1");
    let only = |want: &'static str| {
        let url = sy.url("/");
        move || {
            let url = url.clone();
            async move { get(&client(), &url, &[]).await.body == want }
        }
    };

    // 1. The ConfigMap way: a new directory, then an atomic rename of the ..data link.
    let v2dir = sy.dir.path().join("..v2");
    std::fs::create_dir(&v2dir).expect("mkdir");
    std::fs::write(v2dir.join("switchyard.toml"), text(0, 100)).expect("write");
    std::os::unix::fs::symlink("..v2", sy.dir.path().join("..data_tmp")).expect("link");
    std::fs::rename(
        sy.dir.path().join("..data_tmp"),
        sy.dir.path().join("..data"),
    )
    .expect("swap");
    wait_for(Duration::from_secs(2), "symlink swap to apply", only("v2")).await;

    // 2. An editor's write-and-rename (replaces the link with a plain file).
    let tmp = sy.dir.path().join(".switchyard.toml.swp");
    std::fs::write(&tmp, text(100, 0)).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    wait_for(Duration::from_secs(2), "rename to apply", only("v1")).await;

    // 3. In place.
    std::fs::write(&path, text(0, 100)).expect("write");
    wait_for(Duration::from_secs(2), "in-place edit to apply", only("v2")).await;
    let (_, v) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
    assert_eq!(v["generation"], 4, "one generation per change: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_table_and_shows_the_error() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    let good = std::fs::read_to_string(&sy.path).expect("read");
    std::fs::write(&sy.path, good.replace("canary = 0 }", "canry = 0 }")).expect("write");
    let status_url = sy.admin_url("/admin/status");
    wait_for(Duration::from_secs(2), "the failed reload to show", || {
        let url = status_url.clone();
        async move { admin(&client(), "GET", &url, "", &[]).await.1["last_reload"]["ok"] == false }
    })
    .await;
    let (_, v) = admin(&c, "GET", &status_url, "", &[]).await;
    let err = v["last_reload"]["error"].as_str().unwrap_or("");
    assert!(
        err.contains("switchyard.toml:")
            && err.contains("services.svc.weights")
            && err.contains("canry"),
        "{err}"
    );
    assert_eq!(v["generation"], 1);
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.status, 200);
    }
    // An explicit reload says why, with 422.
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 422, "{v}");
    // A listen change is refused as needing a restart.
    std::fs::write(
        &sy.path,
        good.replace(
            "listen = \"127.0.0.1:0\"\nshutdown_grace",
            "listen = \"127.0.0.1:1\"\nshutdown_grace",
        ),
    )
    .expect("write");
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("restart"), "{v}");
    // Fixing the file recovers.
    std::fs::write(
        &sy.path,
        good.replace("stable = 100, canary = 0", "stable = 0, canary = 100"),
    )
    .expect("write");
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(
        (status, v["last_reload"]["ok"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_weights_survive_a_restart_with_comments_kept() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let toml = canary(&a, &b, 100, 0, "# the canary ramps through the admin API\n")
        .replace("persist = false\n", "persist = true\n")
        .replace(
            "[services.svc.pools.canary]",
            "# canary pool: the new version\n[services.svc.pools.canary]",
        );
    let sy = Switchyard::start(&toml);
    let c = client();
    let (status, v) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":75,"canary":25}"#,
        &[],
    )
    .await;
    assert_eq!((status, v["persisted"].as_bool()), (200, Some(true)), "{v}");
    let (status, v) = admin(
        &c,
        "POST",
        &sy.admin_url(&format!(
            "/admin/services/svc/pools/canary/endpoints/{}/drain?",
            b.addr
        )),
        "",
        &[],
    )
    .await;
    assert_eq!(
        status, 409,
        "min_available = 1 keeps the only canary endpoint: {v}"
    );
    // Our own write is not a reload: the generation stays where the change put it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, v) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(v["generation"], 2, "{v}");

    let written = std::fs::read_to_string(&sy.path).expect("read");
    assert!(
        written.contains("weights = { stable = 75, canary = 25 }"),
        "{written}"
    );
    assert!(
        written.contains("# the canary ramps through the admin API"),
        "{written}"
    );
    assert!(
        written.contains("# canary pool: the new version"),
        "{written}"
    );

    let (dir, path) = sy.stop().await;
    let sy = Switchyard::start_at(dir, path);
    let (_, v) = admin(&c, "GET", &sy.admin_url("/admin/services/svc"), "", &[]).await;
    assert_eq!(v["weights"], json!({"stable": 75, "canary": 25}), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_file_keeps_the_change_live_and_says_so() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(
        &canary(&a, &b, 100, 0, "").replace("persist = false\n", "persist = true\n"),
    );
    // Replace the file by a read-only ConfigMap-like layout: the path's target cannot be
    // replaced because a directory stands where the temp file must go.
    let name = sy
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    std::fs::create_dir(
        sy.dir
            .path()
            .join(format!(".{name}.tmp-{}", std::process::id())),
    )
    .expect("mkdir");
    let c = client();
    let (status, v) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":0,"canary":100}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status, v["persisted"].as_bool()),
        (200, Some(false)),
        "{v}"
    );
    assert_eq!(
        get(&c, &sy.url("/"), &[]).await.body,
        "v2",
        "the change is live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_changes_and_if_match_order() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 90, 10, ""));
    let c = client();
    let url = sy.admin_url("/admin/services/svc/weights");
    // Asking for the live split again is not a change.
    let (status, v) = admin(&c, "PUT", &url, r#"{"stable":90,"canary":10}"#, &[]).await;
    assert_eq!((status, v["generation"].as_u64()), (200, Some(1)), "{v}");
    // Malformed If-Match: 404 first for an unknown service, else 400.
    let (status, _) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/nope/weights"),
        "{}",
        &[("if-match", "abc")],
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin(&c, "PUT", &url, r#"{"canary":20}"#, &[("if-match", "abc")]).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_back_clears_the_failure() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(
        &canary(&a, &b, 100, 0, "").replace("persist = false\n", "persist = true\n"),
    );
    let c = client();
    let good = std::fs::read_to_string(&sy.path).expect("read");
    std::fs::write(
        &sy.path,
        good.replace("strategy = \"canary\"", "strategy = \"canery\""),
    )
    .expect("write");
    let (status, _) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 422);
    let (_, v) = admin(&c, "GET", &sy.admin_url("/admin/status"), "", &[]).await;
    assert_eq!(
        (v["last_reload"]["ok"].as_bool(), v["persisted"].as_bool()),
        (Some(false), Some(false)),
        "{v}"
    );
    std::fs::write(&sy.path, &good).expect("write");
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["last_reload"]["ok"].as_bool(),
            v["persisted"].as_bool(),
            v["generation"].as_u64()
        ),
        (Some(true), Some(true), Some(1)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_draining() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let mut sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    let c = client();
    assert_eq!(get(&c, &sy.admin_url("/readyz"), &[]).await.status, 200);
    assert_eq!(get(&c, &sy.admin_url("/healthz"), &[]).await.status, 200);
    let url = sy.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&client(), &url, &[]).await });
    wait_until(T, "the slow request upstream", || a.in_handler() == 1).await;
    let ready_url = sy.admin_url("/readyz");
    let stopping = tokio::spawn(async move {
        sy.shutdown().await;
    });
    wait_for(T, "readyz to answer 503", || {
        let url = ready_url.clone();
        async move { get(&client(), &url, &[]).await.status == 503 }
    })
    .await;
    assert_eq!(
        slow.await.expect("join").status,
        200,
        "the in-flight request finished"
    );
    stopping.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_directory_does_not_hold_back_reloads() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&canary(&a, &b, 100, 0, ""));
    // Another file in the same directory changes all the time (an access log, say).
    let noise = sy.dir.path().join("access.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (n, s) = (noise.clone(), stop.clone());
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let _ = std::fs::write(&n, format!("line {i}\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let text = std::fs::read_to_string(&sy.path).expect("read");
    std::fs::write(
        &sy.path,
        text.replace("stable = 100, canary = 0", "stable = 0, canary = 100"),
    )
    .expect("write");
    let url = sy.url("/");
    wait_for(Duration::from_secs(2), "the edit to apply", || {
        let url = url.clone();
        async move { get(&client(), &url, &[]).await.body == "v2" }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_never_swallows_a_pending_hand_edit() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // No watcher: the edit waits for an explicit reload, so the order is certain.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &canary(&a, &b, 100, 0, "").replace("persist = false\n", "persist = true\n"),
    );
    let options = switchyard::app::Options {
        workers: 2,
        watch: false,
        sighup: false,
    };
    let sy = Switchyard::start_with(dir, path, &options);
    let c = client();
    let text = std::fs::read_to_string(&sy.path).expect("read");
    let edited = text.replace("stable = 100, canary = 0", "stable = 0, canary = 100");
    std::fs::write(&sy.path, &edited).expect("write");
    // The admin change is live, but the file (holding an edit not yet loaded) is left alone.
    let (status, v) = admin(
        &c,
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":50,"canary":50}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status, v["persisted"].as_bool()),
        (200, Some(false)),
        "{v}"
    );
    assert_eq!(std::fs::read_to_string(&sy.path).expect("read"), edited);
    // The reload applies the hand edit: the later word.
    let (status, v) = admin(&c, "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!((status, v["persisted"].as_bool()), (200, Some(true)), "{v}");
    for _ in 0..20 {
        assert_eq!(get(&c, &sy.url("/"), &[]).await.body, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_comes_back_when_the_config_directory_is_made_again() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).expect("mkdir");
    let path = cfg.join("switchyard.toml");
    let text = |s, c| canary(&a, &b, s, c, "");
    std::fs::write(&path, text(100, 0)).expect("write");
    let sy = Switchyard::start_at(dir, path.clone());
    let status_url = sy.admin_url("/admin/status");
    let watching = |want: bool| {
        let url = status_url.clone();
        move || {
            let url = url.clone();
            async move {
                admin(&client(), "GET", &url, "", &[]).await.1["config_watcher"]["watching"] == want
            }
        }
    };
    wait_for(
        Duration::from_secs(3),
        "the watcher to start",
        watching(true),
    )
    .await;
    // `rm -rf cfg`: the status says the file is not watched.
    std::fs::remove_dir_all(&cfg).expect("rm -rf");
    wait_for(
        Duration::from_secs(3),
        "the status to say so",
        watching(false),
    )
    .await;
    // `mkdir cfg; cp new.toml cfg/`: picked up without a signal or an admin call.
    std::fs::create_dir(&cfg).expect("mkdir");
    std::fs::write(&path, text(0, 100)).expect("write");
    let url = sy.url("/");
    wait_for(Duration::from_secs(5), "the new file to apply", || {
        let url = url.clone();
        async move { get(&client(), &url, &[]).await.body == "v2" }
    })
    .await;
    wait_for(
        Duration::from_secs(3),
        "the watcher to be back",
        watching(true),
    )
    .await;
    // Later edits apply too.
    std::fs::write(&path, text(100, 0)).expect("write");
    let url = sy.url("/");
    wait_for(Duration::from_secs(3), "a later edit to apply", || {
        let url = url.clone();
        async move { get(&client(), &url, &[]).await.body == "v1" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_directory_made_again_at_once_is_watched_again() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).expect("mkdir");
    let path = cfg.join("switchyard.toml");
    let text = |s, c| canary(&a, &b, s, c, "");
    std::fs::write(&path, text(100, 0)).expect("write");
    let sy = Switchyard::start_at(dir, path.clone());
    let stable = |want: u64| {
        let url = sy.admin_url("/admin/services/svc");
        move || {
            let url = url.clone();
            async move { admin(&client(), "GET", &url, "", &[]).await.1["weights"]["stable"] == want }
        }
    };
    // `rm -rf cfg; mkdir cfg; cp new.toml cfg/` in one go: the new directory may even get
    // the old one's inode, so only the removal event tells the watch is dead.
    std::fs::remove_dir_all(&cfg).expect("rm -rf");
    std::fs::create_dir(&cfg).expect("mkdir");
    std::fs::write(&path, text(50, 50)).expect("write");
    wait_for(Duration::from_secs(5), "the new file to apply", stable(50)).await;
    // An edit in place, seen by the new watch.
    std::fs::write(&path, text(0, 100)).expect("write");
    wait_for(
        Duration::from_secs(3),
        "an in-place edit to apply",
        stable(0),
    )
    .await;
    let url = sy.url("/");
    wait_for(Duration::from_secs(3), "the answers to follow", || {
        let url = url.clone();
        async move { get(&client(), &url, &[]).await.body == "v2" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_config_reloads_when_its_target_is_edited() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    // /etc/switchyard/switchyard.toml -> /srv/config/live.toml, say.
    let (etc, srv) = (dir.path().join("etc"), dir.path().join("srv"));
    std::fs::create_dir(&etc).expect("mkdir");
    std::fs::create_dir(&srv).expect("mkdir");
    let target = srv.join("live.toml");
    let text = |s, c| canary(&a, &b, s, c, "");
    std::fs::write(&target, text(100, 0)).expect("write");
    let path = etc.join("switchyard.toml");
    std::os::unix::fs::symlink(&target, &path).expect("link");
    let sy = Switchyard::start_at(dir, path.clone());
    let only = |want: &'static str| {
        let url = sy.url("/");
        move || {
            let url = url.clone();
            async move { get(&client(), &url, &[]).await.body == want }
        }
    };
    assert!(only("v1")().await);
    // Edited where it lives, in place.
    std::fs::write(&target, text(0, 100)).expect("write");
    wait_for(
        Duration::from_secs(3),
        "the target's edit to apply",
        only("v2"),
    )
    .await;
    // The link pointed at another file: that one is watched from then on.
    let other = srv.join("next.toml");
    std::fs::write(&other, text(100, 0)).expect("write");
    let tmp = etc.join("switchyard.toml.new");
    std::os::unix::fs::symlink(&other, &tmp).expect("link");
    std::fs::rename(&tmp, &path).expect("swap the link");
    wait_for(Duration::from_secs(3), "the new link to apply", only("v1")).await;
    // The swap was seen, so the new target is watched: an edit to it applies.
    std::fs::write(&other, text(0, 100)).expect("write");
    wait_for(
        Duration::from_secs(5),
        "the new target's edit to apply",
        only("v2"),
    )
    .await;
}
