//! Fleet mode end to end: three real switchyards sharing their live state through a real
//! etcd. Seeding, a change on one replica reaching the others (with the propagation time
//! measured), `If-Match` across replicas, and etcd down: mutations refused with 503, traffic
//! unaffected.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::time::Duration;

use etcd::{Etcd, EtcdCluster, etcd_binary};
use serde_json::json;
use support::*;
use switchyard::fleet::Store;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);

fn replica_config(etcd: &Etcd, prefix: &str, name: &str, up: &Upstream, canary: u32) -> String {
    config_for(&[etcd.endpoint()], prefix, name, up, canary)
}

fn config_for(etcd: &[String], prefix: &str, name: &str, up: &Upstream, canary: u32) -> String {
    let etcd: Vec<String> = etcd.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{}\n[cluster]\netcd = [{}]\nprefix = \"{prefix}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n\
         [[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\n\
         weights = {{ stable = {}, canary = {canary} }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{}\"]\n",
        server_section(),
        etcd.join(", "),
        100 - canary,
        up.addr,
        up.addr
    )
}

async fn weights(sy: &Switchyard) -> serde_json::Value {
    service_state(sy, "shop").await["weights"].clone()
}

async fn put_weights(
    sy: &Switchyard,
    canary: u32,
    if_match: Option<u64>,
) -> (u16, serde_json::Value) {
    let body = json!({"stable": 100 - canary, "canary": canary}).to_string();
    let tag = if_match.map(|g| format!("\"{g}\""));
    let headers: Vec<(&str, &str)> = tag.iter().map(|t| ("if-match", t.as_str())).collect();
    let url = sy.admin_url("/admin/services/shop/weights");
    admin(&client(), "PUT", &url, &body, &headers).await
}

/// Retries until the replica has joined the fleet (a change answers 200, not 503).
async fn put_until_joined(sy: &Switchyard, canary: u32) {
    let deadline = Instant::now() + T;
    loop {
        let (status, v) = put_weights(sy, canary, None).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never joined: {status} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_weights(sy: &Switchyard, canary: u32) -> Duration {
    let started = Instant::now();
    let want = json!({"stable": 100 - canary, "canary": canary});
    loop {
        if weights(sy).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < T,
            "weights never became {want}: {}",
            weights(sy).await
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_replica_seeds_the_fleet_and_later_ones_follow_it() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&replica_config(&etcd, "/t/seed", "a", &up, 10));
    wait_for(T, "the first replica to seed", || async {
        put_weights(&a, 10, None).await.0 == 200
    })
    .await;
    // The second file says 30%: the fleet's 10% wins.
    let b = Switchyard::start(&replica_config(&etcd, "/t/seed", "b", &up, 30));
    wait_weights(&b, 10).await;
    let (va, vb) = (
        service_state(&a, "shop").await,
        service_state(&b, "shop").await,
    );
    assert_eq!(va["generation"], vb["generation"], "{va}\n{vb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_one_replica_reaches_every_replica_within_a_second() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let fleet: Vec<Switchyard> = ["a", "b", "c"]
        .iter()
        .map(|n| Switchyard::start(&replica_config(&etcd, "/t/prop", n, &up, 10)))
        .collect();
    for sy in &fleet {
        put_until_joined(sy, 10).await;
    }
    // From the answer of the replica that took the change to the moment each other replica
    // serves it, both watched at once.
    let mut times = Vec::new();
    for i in 0..60 {
        let canary = 15 + (i % 8) * 10;
        let from = &fleet[i as usize % 3];
        let (status, v) = put_weights(from, canary, None).await;
        assert_eq!(status, 200, "{v}");
        let others: Vec<&Switchyard> = fleet
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i as usize % 3)
            .map(|(_, sy)| sy)
            .collect();
        let (t0, t1) = tokio::join!(
            wait_weights(others[0], canary),
            wait_weights(others[1], canary)
        );
        times.extend([t0, t1]);
        let generations: Vec<_> = futures_generations(&fleet).await;
        assert!(
            generations.windows(2).all(|w| w[0] == w[1]),
            "{generations:?}"
        );
    }
    times.sort();
    let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    eprintln!(
        "propagation to the 2 other replicas over {} samples: p50 {p50:?}, p99 {p99:?}",
        times.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
}

async fn futures_generations(fleet: &[Switchyard]) -> Vec<u64> {
    let mut out = Vec::new();
    for sy in fleet {
        out.push(
            service_state(sy, "shop").await["generation"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_operators_on_two_replicas_with_if_match_exactly_one_wins() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let (a, b) = (
        Switchyard::start(&replica_config(&etcd, "/t/ifm", "a", &up, 10)),
        Switchyard::start(&replica_config(&etcd, "/t/ifm", "b", &up, 10)),
    );
    put_until_joined(&a, 20).await;
    put_until_joined(&b, 20).await;
    wait_weights(&a, 20).await;
    let generation = service_state(&a, "shop").await["generation"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        service_state(&b, "shop").await["generation"].as_u64(),
        Some(generation)
    );
    let (ra, rb) = tokio::join!(
        put_weights(&a, 40, Some(generation)),
        put_weights(&b, 60, Some(generation))
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{ra:?} {rb:?}");
    let winner = if ra.0 == 200 { 40 } else { 60 };
    wait_weights(&a, winner).await;
    wait_weights(&b, winner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_edit_every_replica_sees_is_applied_once() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let (a, b) = (
        Switchyard::start(&replica_config(&etcd, "/t/edit", "a", &up, 10)),
        Switchyard::start(&replica_config(&etcd, "/t/edit", "b", &up, 10)),
    );
    put_until_joined(&a, 10).await;
    put_until_joined(&b, 10).await;
    let generation = service_state(&a, "shop").await["generation"]
        .as_u64()
        .unwrap_or(0);
    // A ConfigMap update: every replica's file changes the same way.
    for (sy, name) in [(&a, "a"), (&b, "b")] {
        std::fs::write(&sy.path, replica_config(&etcd, "/t/edit", name, &up, 40))
            .expect("edit config");
    }
    // Each replica reloads the edit (an explicit reload answers once the edit, and any commit
    // it makes, is done; a watcher reload of the same text is a no-op): after both, every
    // commit the edit causes has happened.
    for sy in [&a, &b] {
        let (status, v) = admin(&client(), "POST", &sy.admin_url("/admin/reload"), "", &[]).await;
        assert_eq!(status, 200, "{v}");
    }
    // One commit fleet-wide: etcd holds the edit at one generation more…
    let mut store = Store::connect(&[etcd.endpoint()], "/t/edit", T)
        .await
        .expect("store");
    let fleet = store.read().await.expect("read").expect("state");
    assert_eq!(fleet.state.generation, generation + 1, "{fleet:?}");
    // …and both replicas serve it.
    for sy in [&a, &b] {
        wait_weights(sy, 40).await;
        let deadline = Instant::now() + T;
        while generation_of(sy).await != generation + 1 {
            assert!(
                Instant::now() < deadline,
                "{}",
                service_state(sy, "shop").await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn generation_of(sy: &Switchyard) -> u64 {
    service_state(sy, "shop").await["generation"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_down_changes_are_refused_and_traffic_flows() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&replica_config(&etcd, "/t/down", "a", &up, 10));
    put_until_joined(&a, 30).await;
    let cluster = |sy: &Switchyard| {
        let url = sy.admin_url("/admin/status");
        async move { admin(&client(), "GET", &url, "", &[]).await.1["cluster"].clone() }
    };
    let before = cluster(&a).await;
    assert_eq!(
        (
            &before["name"],
            &before["store"]["up"],
            &before["store"]["error"]
        ),
        (&json!("a"), &json!(true), &json!(null)),
        "{before}"
    );
    assert_eq!(
        before["applied_generation"],
        service_state(&a, "shop").await["generation"]
    );
    etcd.kill();
    let (status, v) = put_weights(&a, 50, None).await;
    assert_eq!(status, 503, "{v}");
    let error = v["error"].as_str().unwrap_or("");
    assert!(error.starts_with("cluster store unavailable"), "{error}");
    let after = cluster(&a).await;
    assert_eq!(after["store"]["up"], false, "{after}");
    assert!(
        after["store"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{after}"
    );
    // Nothing changed here either, and requests are served as before.
    assert_eq!(weights(&a).await, json!({"stable": 70, "canary": 30}));
    let c = client();
    for _ in 0..20 {
        let answer = get(&c, &a.url("/"), &[]).await;
        assert_eq!(answer.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_etcd_comes_back_changes_flow_again_to_every_replica() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let (a, b) = (
        Switchyard::start(&replica_config(&etcd, "/t/back", "a", &up, 10)),
        Switchyard::start(&replica_config(&etcd, "/t/back", "b", &up, 10)),
    );
    put_until_joined(&a, 20).await;
    put_until_joined(&b, 20).await;
    let load = [
        Load::start(a.url("/"), 4, vec![]),
        Load::start(b.url("/"), 4, vec![]),
    ];
    etcd.kill();
    assert_eq!(put_weights(&a, 50, None).await.0, 503);
    wait_for(T, "b to see the store down", || async {
        cluster_view(&b).await["store"]["up"] == false
    })
    .await;
    etcd.restart().await;
    // b's watch is re-established from a full read, which says the store is back before
    // anything changes.
    wait_for(T, "b to see the store back", || async {
        cluster_view(&b).await["store"]["up"] == true
    })
    .await;
    // The commit path reconnects.
    put_until_joined(&a, 60).await;
    wait_weights(&b, 60).await;
    assert_eq!(generation_of(&a).await, generation_of(&b).await);
    // The store going away and back never reached a client request.
    for l in load {
        let samples = l.finish().await;
        assert!(samples.len() > 100, "{}", samples.len());
        assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
    }
}

async fn cluster_view(sy: &Switchyard) -> serde_json::Value {
    admin(&client(), "GET", &sy.admin_url("/admin/cluster"), "", &[])
        .await
        .1
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_lists_its_replicas_and_a_new_leader_takes_over() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let mut fleet: Vec<Option<Switchyard>> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            Some(Switchyard::start(&replica_config(
                &etcd, "/t/lead", n, &up, 10,
            )))
        })
        .collect();
    // Every replica sees all three, and the same leader.
    let deadline = Instant::now() + T;
    let leader = loop {
        let mut views = Vec::new();
        for sy in fleet.iter().flatten() {
            views.push(cluster_view(sy).await);
        }
        let leaders: Vec<_> = views.iter().map(|v| v["leader"].clone()).collect();
        if views.iter().all(|v| names(v) == ["a", "b", "c"])
            && leaders.iter().all(|l| l.is_string() && *l == leaders[0])
        {
            assert!(views.iter().all(|v| v["store"]["up"] == true), "{views:?}");
            break leaders[0].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "{views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The leader goes away: the others see it gone and elect another within lease_ttl + 1 s.
    let index = ["a", "b", "c"]
        .iter()
        .position(|n| *n == leader)
        .unwrap_or(0);
    drop(fleet[index].take());
    let gone = Instant::now();
    let rest: Vec<&Switchyard> = fleet.iter().flatten().collect();
    let new_leader = loop {
        let (v0, v1) = (cluster_view(rest[0]).await, cluster_view(rest[1]).await);
        if v0["leader"].is_string()
            && v0["leader"] != leader.as_str()
            && v0["leader"] == v1["leader"]
            && names(&v0).len() == 2
            && names(&v1).len() == 2
        {
            break v0["leader"].as_str().unwrap_or_default().to_owned();
        }
        assert!(gone.elapsed() < Duration::from_secs(8), "{v0}\n{v1}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = gone.elapsed();
    eprintln!("leader {leader} gone: {new_leader} leads after {took:?} (lease_ttl 2s)");
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_etcd_member_of_three_down_the_fleet_goes_on() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = EtcdCluster::start(bin).await;
    let up = Upstream::start("v1").await;
    let endpoints = etcd.endpoints();
    let (a, b) = (
        Switchyard::start(&config_for(&endpoints, "/t/quorum", "a", &up, 10)),
        Switchyard::start(&config_for(&endpoints, "/t/quorum", "b", &up, 10)),
    );
    put_until_joined(&a, 20).await;
    put_until_joined(&b, 20).await;
    let load = Load::start(a.url("/"), 4, vec![]);
    etcd.members[0].kill();
    // Quorum is kept: a change still commits (after a retry, if it went to the dead member
    // first) and reaches the other replica.
    put_until_joined(&a, 70).await;
    wait_weights(&b, 70).await;
    let samples = load.finish().await;
    assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_on_another_replica_undoes_the_fleets_last_change() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let (a, b) = (
        Switchyard::start(&replica_config(&etcd, "/t/rollback", "a", &up, 10)),
        Switchyard::start(&replica_config(&etcd, "/t/rollback", "b", &up, 10)),
    );
    put_until_joined(&a, 30).await;
    wait_weights(&b, 30).await;
    put_until_joined(&a, 60).await;
    wait_weights(&b, 60).await;
    // b made neither change: it steps back through the fleet's history all the same.
    let url = b.admin_url("/admin/services/shop/rollback");
    let (status, v) = admin(&client(), "POST", &url, "", &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["weights"], json!({"stable": 70, "canary": 30}), "{v}");
    wait_weights(&a, 30).await;
    let (status, v) = admin(
        &client(),
        "POST",
        &a.admin_url("/admin/services/shop/rollback"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    wait_weights(&b, 10).await;
    // Nothing earlier: refused on either replica.
    let (status, v) = admin(&client(), "POST", &url, "", &[]).await;
    assert_eq!(status, 409, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_user_lands_in_the_same_pool_on_every_replica() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let config = |name: &str| {
        format!(
            "{}\n[cluster]\netcd = [\"{}\"]\nprefix = \"/t/ab\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n\
             [[routes]]\nservice = \"ab\"\n[services.ab]\nstrategy = \"ab\"\n\
             weights = {{ a = 50, b = 50 }}\nhash_key = {{ header = \"x-user-id\" }}\n\
             [services.ab.pools.a]\nendpoints = [\"{}\"]\n[services.ab.pools.b]\nendpoints = [\"{}\"]\n",
            server_section(),
            etcd.endpoint(),
            v1.addr,
            v2.addr
        )
    };
    let fleet: Vec<Switchyard> = ["a", "b", "c"]
        .iter()
        .map(|n| Switchyard::start(&config(n)))
        .collect();
    // A new split made on one replica…
    let url = fleet[0].admin_url("/admin/services/ab/weights");
    wait_for(T, "the fleet to take a change", || async {
        admin(&client(), "PUT", &url, r#"{"a":30,"b":70}"#, &[])
            .await
            .0
            == 200
    })
    .await;
    for sy in &fleet {
        wait_for(T, "every replica at 30/70", || async {
            service_state(sy, "ab").await["weights"] == json!({"a": 30, "b": 70})
        })
        .await;
    }
    // …puts each user in one pool whichever replica answers.
    let c = client();
    let mut pools = std::collections::BTreeMap::new();
    for user in 0..60 {
        let id = format!("user-{user}");
        let mut seen = Vec::new();
        for sy in &fleet {
            let answer = get(&c, &sy.url("/"), &[("x-user-id", id.as_str())]).await;
            seen.push(answer.body);
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{id}: {seen:?}");
        *pools.entry(seen[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(pools.len(), 2, "both pools serve some users: {pools:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_cluster_section_asks_for_a_restart_and_changes_nothing() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&replica_config(&etcd, "/t/cl", "a", &up, 10));
    put_until_joined(&a, 20).await;
    let before = generation_of(&a).await;
    let text = replica_config(&etcd, "/t/cl", "renamed", &up, 10);
    std::fs::write(&a.path, text).expect("write");
    let (status, v) = admin(&client(), "POST", &a.admin_url("/admin/reload"), "", &[]).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("[cluster]")),
        "{v}"
    );
    let status = admin(&client(), "GET", &a.admin_url("/admin/status"), "", &[])
        .await
        .1;
    assert!(status["restart_required"].is_string(), "{status}");
    assert_eq!(cluster_view(&a).await["name"], "a");
    assert_eq!(generation_of(&a).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_edit_the_store_does_not_take_is_never_live_anywhere() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin).await;
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let endpoint = etcd.endpoint();
    // stable → v1, canary → v2.
    let text = |canary: u32| {
        config_for(std::slice::from_ref(&endpoint), "/t/unsaid", "a", &v1, 0)
            .replace(
                &format!(
                    "[services.shop.pools.canary]\nendpoints = [\"{}\"]",
                    v1.addr
                ),
                &format!(
                    "[services.shop.pools.canary]\nendpoints = [\"{}\"]",
                    v2.addr
                ),
            )
            .replace(
                "weights = { stable = 100, canary = 0 }",
                &format!(
                    "weights = {{ stable = {}, canary = {canary} }}",
                    100 - canary
                ),
            )
    };
    let a = Switchyard::start(&text(0));
    put_until_joined(&a, 0).await;
    // A hung store: the commit of the edit waits up to lease_ttl (2 s) for an answer.
    etcd.freeze(true);
    // The file now sends everything to the canary; the store does not take it. While the
    // replica waits, its traffic stays on the fleet's split.
    std::fs::write(&a.path, text(100)).expect("write");
    let url = a.admin_url("/admin/reload");
    let reload = tokio::spawn(async move { admin(&client(), "POST", &url, "", &[]).await });
    let c = client();
    let mut sent = 0;
    // For as long as the reload waits on the store (it answers once the commit gave up).
    while !reload.is_finished() {
        let answer = get(&c, &a.url("/"), &[]).await;
        assert_eq!(
            answer.body, "v1",
            "the file's split went live before the fleet took it"
        );
        sent += 1;
    }
    assert!(sent > 10, "{sent}");
    let (status, v) = reload.await.expect("reload");
    assert_eq!(status, 200, "{v}");
    assert_eq!(weights(&a).await, json!({"stable": 100, "canary": 0}));
    assert_eq!(v2.hits(), 0);
    etcd.freeze(false);
    etcd.kill();
}

/// docs/fleet.md's "Try it on one machine", run as written: its `sh` block is a user's shell
/// session, given free ports through the variables it reads and this build's binary on the
/// `PATH`. Its replicas and etcd are background jobs of that shell, killed by its last line,
/// and with the whole process group should the block fail or hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_it_on_one_machine_works_as_written() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet.md"))
        .expect("docs/fleet.md");
    let block = doc
        .split("\n## Try it on one machine\n")
        .nth(1)
        .and_then(|section| section.split("\n```sh\n").nth(1))
        .and_then(|rest| rest.split("\n```\n").next())
        .expect("docs/fleet.md: a sh block under \"Try it on one machine\"");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_switchyard"));
    let path = [
        bin.parent().expect("bin dir").to_path_buf(),
        std::path::Path::new(etcd_bin)
            .parent()
            .expect("etcd dir")
            .to_path_buf(),
    ]
    .into_iter()
    .chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ))
    .collect::<Vec<_>>();
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let port = free_addr().port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(block)
        .current_dir(dir.path())
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        // mktemp -d: under the test's directory, removed with it.
        .env("TMPDIR", dir.path())
        .env("ETCD_PORT", ports[0].to_string())
        .env("PEER_PORT", ports[1].to_string())
        .env("A_ADMIN", ports[2].to_string())
        .env("B_ADMIN", ports[3].to_string())
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let group = ProcessGroup(child.id().expect("pid"));
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    drop(group);
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    let status = status
        .unwrap_or_else(|_| panic!("the block ended within 60 s\nstdout:\n{out}\nstderr:\n{err}"))
        .expect("wait");
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    for want in [
        "2 member(s), store up",
        "shop: weights stable=50 canary=50, generation 2",
        "stable=50 canary=50  -",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}\nstderr:\n{err}");
    }
}

/// Sends SIGTERM to a process group when dropped (what the block started in the background).
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
