//! A rollout in fleet mode, end to end against a real etcd: one leader judges each step on
//! the whole fleet's figures, every replica follows the same split, the leader's death hands
//! the step to another replica, and a restart of the whole fleet resumes the rollout.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use etcd::{Etcd, etcd_binary};
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);

/// A replica of service `shop` (stable → `a`, canary → `b`) with a rollout section.
fn replica(
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    a: &Upstream,
    b: &Upstream,
    rollout: &str,
) -> String {
    replica_at("127.0.0.1:0", etcd, prefix, name, a, b, rollout)
}

fn replica_at(
    admin: &str,
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    a: &Upstream,
    b: &Upstream,
    rollout: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"{admin}\"\npersist = false\n\
         [cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n\
         [[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\n\
         weights = {{ stable = 100, canary = 0 }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{}\"]\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\n{rollout}\n",
        etcd.endpoint(),
        a.addr,
        b.addr
    )
}

/// Replicas named `names` under `prefix`, and their admin addresses.
fn start_fleet(
    etcd: &Etcd,
    prefix: &str,
    names: &[&str],
    a: &Upstream,
    b: &Upstream,
    rollout: &str,
) -> (Vec<Switchyard>, Vec<SocketAddr>) {
    let fleet: Vec<Switchyard> = names
        .iter()
        .map(|n| Switchyard::start(&replica(etcd, prefix, n, a, b, rollout)))
        .collect();
    let admins = fleet.iter().map(|s| s.admin).collect();
    (fleet, admins)
}

/// A real etcd (none, with a message, when it is not installed) and the stable (v1) and
/// canary (v2) upstreams.
async fn rig() -> Option<(Etcd, Upstream, Upstream)> {
    let etcd = Etcd::start(etcd_binary()?).await;
    Some((
        etcd,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    ))
}

async fn get_json(admin_addr: SocketAddr, path: &str) -> Value {
    let url = format!("http://{admin_addr}{path}");
    admin(&client(), "GET", &url, "", &[]).await.1
}

async fn rollout_of(admin_addr: SocketAddr) -> Value {
    get_json(admin_addr, "/admin/services/shop").await
}

/// Starts the rollout on a replica, retrying while it has not joined the fleet (503).
async fn start(admin_addr: SocketAddr) -> Value {
    let url = format!("http://{admin_addr}/admin/services/shop/rollout/start");
    let deadline = Instant::now() + T;
    loop {
        let (status, v) = admin(&client(), "POST", &url, "", &[]).await;
        if status == 200 {
            return v;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "start: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds for the service state on every replica; returns their states.
async fn wait_all(admins: &[SocketAddr], what: &str, check: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + T;
    loop {
        let mut views = Vec::new();
        for a in admins {
            views.push(rollout_of(*a).await);
        }
        if views.iter().all(&check) {
            return views;
        }
        assert!(Instant::now() < deadline, "{what}: {views:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The step of every passed verdict in a rollout's history, in order.
fn passed_steps(view: &Value) -> Vec<u64> {
    view["rollout"]["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|v| v["outcome"] == "passed")
                .filter_map(|v| v["step"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

async fn leader_of(admin_addr: SocketAddr) -> Option<String> {
    get_json(admin_addr, "/admin/cluster").await["leader"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_started_on_one_replica_moves_every_replica_step_by_step() {
    let Some((etcd, a, b)) = rig().await else {
        return;
    };
    let rollout = "steps = [10, 50]\ninterval = \"1s\"\nmin_requests = 20";
    let (fleet, admins) = start_fleet(&etcd, "/t/roll", &["a", "b", "c"], &a, &b, rollout);
    // Started on one replica, the first step is every replica's split at once.
    let v = start(admins[1]).await;
    assert_eq!(v["rollout"]["state"], "progressing", "{v}");
    let views = wait_all(&admins, "every replica at the first step", |v| {
        v["rollout"]["state"] == "progressing"
            && v["rollout"]["step"] == 0
            && v["weights"] == json!({"stable": 90, "canary": 10})
    })
    .await;
    let generations: Vec<&Value> = views.iter().map(|v| &v["generation"]).collect();
    assert!(
        generations.iter().all(|g| *g == generations[0]),
        "{views:#?}"
    );
    // Traffic on every replica; the leader judges the sum and promotes.
    let loads: Vec<Load> = fleet
        .iter()
        .map(|s| Load::start(s.url("/"), 2, vec![]))
        .collect();
    let views = wait_all(&admins, "every replica promoted", |v| {
        v["rollout"]["state"] == "promoted" && v["weights"] == json!({"stable": 0, "canary": 100})
    })
    .await;
    for v in &views {
        assert_eq!(passed_steps(v), [0, 1], "each step judged once: {v}");
    }
    for load in loads {
        let samples = load.finish().await;
        assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_across_the_fleet_aborts_though_no_replica_saw_enough_alone() {
    let Some((etcd, a, b)) = rig().await else {
        return;
    };
    b.set_failing(true);
    // 28 requests a replica: fewer than min_requests reach the canary on any one of them.
    let rollout = "steps = [90]\ninterval = \"60s\"\nmin_requests = 30\nmax_error_rate = 0.05";
    let (fleet, admins) = start_fleet(&etcd, "/t/abort", &["a", "b", "c"], &a, &b, rollout);
    start(admins[0]).await;
    wait_all(&admins, "every replica at 90%", |v| {
        v["weights"] == json!({"stable": 10, "canary": 90})
    })
    .await;
    let c = client();
    for sy in &fleet {
        for _ in 0..28 {
            get(&c, &sy.url("/"), &[]).await;
        }
    }
    let views = wait_all(&admins, "every replica aborted", |v| {
        v["rollout"]["state"] == "aborted" && v["weights"] == json!({"stable": 100, "canary": 0})
    })
    .await;
    let reason = views[0]["rollout"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("5xx"), "{reason}");
    // The verdict counted the fleet's canary requests: more than any replica sent.
    let judged = views[0]["rollout"]["last_verdict"]["canary_requests"]
        .as_u64()
        .unwrap_or_default();
    assert!((30..=84).contains(&judged), "{}", views[0]);
    assert!(
        judged > 28,
        "judged on one replica's figures only: {}",
        views[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leader_dies_another_replica_goes_on_with_the_same_step() {
    let Some((etcd, a, b)) = rig().await else {
        return;
    };
    let rollout = "steps = [10, 20, 30, 40]\ninterval = \"3s\"\nmin_requests = 10";
    // Real processes: the leader is killed (SIGKILL), not shut down.
    let mut fleet: Vec<Option<(SocketAddr, ProxyProcess)>> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let admin = free_addr();
            let toml = replica_at(&admin.to_string(), &etcd, "/t/kill", n, &a, &b, rollout);
            let options = ProcessOptions {
                echo_warnings: true,
                ..ProcessOptions::default()
            };
            Some((admin, ProxyProcess::spawn_with(&toml, &options)))
        })
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().flatten().map(|(a, _)| *a).collect();
    let names = ["a", "b", "c"];
    start(admins[0]).await;
    let loads: Vec<Load> = fleet
        .iter()
        .flatten()
        .map(|(_, p)| Load::start(format!("http://{}/", p.addr), 2, vec![]))
        .collect();
    wait_all(&admins, "the second step", |v| v["rollout"]["step"] == 1).await;
    let leader = leader_of(admins[0]).await.unwrap_or_default();
    let index = names.iter().position(|n| *n == leader).unwrap_or(0);
    let before = rollout_of(admins[index]).await;
    let rest: Vec<SocketAddr> = admins
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, a)| *a)
        .collect();
    if let Some((_, mut p)) = fleet[index].take() {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let killed = Instant::now();
    // Another replica leads within lease_ttl + 1 s.
    loop {
        let l = leader_of(rest[0]).await;
        if l.as_deref().is_some_and(|l| l != leader) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "no new leader: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!(
        "leader {leader} killed at step {}: another leads after {took:?}",
        before["rollout"]["step"]
    );
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(500),
        "{took:?}"
    );
    let views = wait_all(&rest, "the rollout promoted by the new leader", |v| {
        v["rollout"]["state"] == "promoted"
    })
    .await;
    for v in &views {
        assert_eq!(
            passed_steps(v),
            [0, 1, 2, 3],
            "no step repeated or skipped: {v}"
        );
    }
    // The loads on the surviving replicas never failed a request.
    for (i, load) in loads.into_iter().enumerate() {
        let samples = load.finish().await;
        if i != index {
            assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_of_the_whole_fleet_resumes_the_rollout_where_it_was() {
    let Some((etcd, a, b)) = rig().await else {
        return;
    };
    // Enough canary requests a step that, with the load stopped, the step cannot pass.
    let rollout = "steps = [10, 30, 60]\ninterval = \"1s\"\nmin_requests = 200";
    let (fleet, admins) = start_fleet(&etcd, "/t/restart", &["a", "b"], &a, &b, rollout);
    start(admins[0]).await;
    let loads: Vec<Load> = fleet
        .iter()
        .map(|s| Load::start(s.url("/"), 2, vec![]))
        .collect();
    wait_all(&admins, "the second step", |v| v["rollout"]["step"] == 1).await;
    for load in loads {
        load.finish().await;
    }
    let before = rollout_of(admins[0]).await["rollout"].clone();
    assert_eq!(before["step"], 1, "{before}");
    let mut dirs = Vec::new();
    for sy in fleet {
        dirs.push(sy.stop().await);
    }
    // The whole fleet is gone; it comes back on the same files.
    let fleet: Vec<Switchyard> = dirs
        .into_iter()
        .map(|(dir, path)| Switchyard::start_at(dir, path))
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|s| s.admin).collect();
    let views = wait_all(&admins, "the rollout back at its step", |v| {
        v["rollout"]["state"] == "progressing"
            && v["weights"] == json!({"stable": 70, "canary": 30})
    })
    .await;
    for v in &views {
        assert_eq!(v["rollout"]["step"], before["step"], "{v}");
        assert_eq!(
            v["rollout"]["since"], before["since"],
            "the step's dwell goes on: {v}"
        );
    }
    let loads: Vec<Load> = fleet
        .iter()
        .map(|s| Load::start(s.url("/"), 2, vec![]))
        .collect();
    let views = wait_all(&admins, "promoted after the restart", |v| {
        v["rollout"]["state"] == "promoted"
    })
    .await;
    assert_eq!(passed_steps(&views[0]), [0, 1, 2], "{}", views[0]);
    for load in loads {
        let samples = load.finish().await;
        assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_down_a_rollout_makes_no_judgement_and_judges_once_it_is_back() {
    let Some((mut etcd, a, b)) = rig().await else {
        return;
    };
    let rollout = "steps = [50]\ninterval = \"60s\"\nmin_requests = 20\nmax_error_rate = 0.05";
    let (fleet, admins) = start_fleet(&etcd, "/t/down", &["a", "b"], &a, &b, rollout);
    start(admins[0]).await;
    wait_all(&admins, "every replica at 50%", |v| {
        v["weights"] == json!({"stable": 50, "canary": 50})
    })
    .await;
    etcd.kill();
    for a in &admins {
        let deadline = Instant::now() + T;
        while get_json(*a, "/admin/cluster").await["store"]["up"] != false {
            assert!(Instant::now() < deadline, "the store never seen down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A failing canary, with the store away: served on the last state, and not judged.
    b.set_failing(true);
    let c = client();
    for sy in &fleet {
        for _ in 0..60 {
            let answer = get(&c, &sy.url("/"), &[]).await;
            assert!(
                answer.status == 200 || answer.status == 502,
                "{}",
                answer.status
            );
        }
    }
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        for a in &admins {
            let v = rollout_of(*a).await;
            assert_eq!(
                v["rollout"]["state"], "progressing",
                "judged without the store: {v}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The store back: the leader judges the fleet's figures, and every replica aborts.
    etcd.restart().await;
    let views = wait_all(&admins, "every replica aborted", |v| {
        v["rollout"]["state"] == "aborted" && v["weights"] == json!({"stable": 100, "canary": 0})
    })
    .await;
    assert!(
        views[0]["rollout"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("5xx")),
        "{}",
        views[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_edit_of_the_weights_leaves_a_running_rollouts_split_alone() {
    let Some((etcd, a, b)) = rig().await else {
        return;
    };
    let rollout = "steps = [10, 50]\ninterval = \"1h\"";
    let (fleet, admins) = start_fleet(&etcd, "/t/edit", &["a", "b"], &a, &b, rollout);
    start(admins[0]).await;
    let views = wait_all(&admins, "every replica at 10%", |v| {
        v["weights"] == json!({"stable": 90, "canary": 10})
    })
    .await;
    let generation = views[0]["generation"].clone();
    // A ConfigMap update that every replica sees sets other weights for the rollout's pools.
    for (sy, name) in fleet.iter().zip(["a", "b"]) {
        let text = replica(&etcd, "/t/edit", name, &a, &b, rollout).replace(
            "weights = { stable = 100, canary = 0 }",
            "weights = { stable = 70, canary = 30 }",
        );
        std::fs::write(&sy.path, text).expect("write");
        let url = sy.admin_url("/admin/reload");
        let (status, v) = admin(&client(), "POST", &url, "", &[]).await;
        assert_eq!(status, 200, "{v}");
    }
    // The rollout owns its split while it runs: the fleet's state is unchanged.
    for a in &admins {
        let v = rollout_of(*a).await;
        assert_eq!(v["weights"], json!({"stable": 90, "canary": 10}), "{v}");
        assert_eq!(v["generation"], generation, "{v}");
        assert_eq!(v["rollout"]["state"], "progressing", "{v}");
    }
}
