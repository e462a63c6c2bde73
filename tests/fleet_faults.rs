//! Fleet mode under faults, against a real etcd: what a replica answers, applies and audits
//! when the store pauses mid-commit, when the shared state is wiped, corrupted or written
//! with values the admin API refuses, when a leader key has no live lease behind it, when two
//! replicas claim one name, and when a replica's file disagrees with the fleet's state.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::time::Duration;

use etcd::{Etcd, etcd_binary};
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);
/// The replicas' `lease_ttl`: what the spec's "within lease_ttl + 1 s" counts from.
const LEASE: Duration = Duration::from_secs(2);

/// A replica of service `shop` with pools `pools` (the first gets 100 - canary, the last
/// `canary`, any between 0).
fn replica(
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    up: &Upstream,
    pools: &[&str],
    canary: u32,
) -> String {
    let mut weights = Vec::new();
    let mut sections = String::new();
    for (i, p) in pools.iter().enumerate() {
        let w = if i == 0 {
            100 - canary
        } else if i == pools.len() - 1 {
            canary
        } else {
            0
        };
        weights.push(format!("{p} = {w}"));
        sections.push_str(&format!(
            "[services.shop.pools.{p}]\nendpoints = [\"{}\"]\n",
            up.addr
        ));
    }
    format!(
        "{}\n[cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n\
         [[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\n\
         weights = {{ {} }}\n{sections}",
        server_section(),
        etcd.endpoint(),
        weights.join(", "),
    )
}

fn two_pools(etcd: &Etcd, prefix: &str, name: &str, up: &Upstream, canary: u32) -> String {
    replica(etcd, prefix, name, up, &["stable", "canary"], canary)
}

/// Where a replica's admin API is: an in-process one, or one in a process of its own (whose
/// metrics are its own: in-process replicas share this test's recorder).
trait Replica {
    fn admin_url(&self, path: &str) -> String;
}

impl Replica for Switchyard {
    fn admin_url(&self, path: &str) -> String {
        Switchyard::admin_url(self, path)
    }
}

/// A replica in a process of its own, with its admin API on `admin`.
struct Process {
    _proc: ProxyProcess,
    admin: std::net::SocketAddr,
}

impl Replica for Process {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Process {
    async fn spawn(toml: &str) -> Process {
        let admin = free_addr();
        let toml = toml.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
        );
        let p = Process {
            _proc: ProxyProcess::spawn(&toml),
            admin,
        };
        wait_for(T, "the admin API", || async {
            admin_get(&p, "/healthz").await.0 == 200
        })
        .await;
        p
    }
}

async fn admin_get(sy: &impl Replica, path: &str) -> (u16, Value) {
    admin(&client(), "GET", &sy.admin_url(path), "", &[]).await
}

async fn put_weights(sy: &impl Replica, canary: u32) -> (u16, Value) {
    let body = json!({"stable": 100 - canary, "canary": canary}).to_string();
    let url = sy.admin_url("/admin/services/shop/weights");
    admin(&client(), "PUT", &url, &body, &[]).await
}

async fn put_until_joined(sy: &impl Replica, canary: u32) {
    wait_for(T, "the replica to join the fleet", || async {
        put_weights(sy, canary).await.0 == 200
    })
    .await;
}

async fn shop(sy: &impl Replica) -> Value {
    admin_get(sy, "/admin/services/shop").await.1
}

async fn canary_weight(sy: &impl Replica) -> Value {
    shop(sy).await["weights"]["canary"].clone()
}

async fn cluster(sy: &impl Replica) -> Value {
    admin_get(sy, "/admin/cluster").await.1
}

async fn audit(sy: &impl Replica) -> Vec<Value> {
    let (_, v) = admin_get(sy, "/admin/audit?limit=1000").await;
    v.as_array().cloned().unwrap_or_default()
}

async fn metric(sy: &impl Replica, name: &str) -> Option<f64> {
    let c = client();
    let req = http::Request::get(sy.admin_url("/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (_, text) = fetch(&c, req).await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn etcd_client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd client")
}

async fn state_of(etcd: &Etcd, prefix: &str) -> Option<Value> {
    let mut c = etcd_client(etcd).await;
    let got = c.get(format!("{prefix}/state"), None).await.expect("get");
    got.kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_sent_to_a_paused_store_answers_504_and_is_served_and_audited_everywhere_or_nowhere()
 {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/pause", "a", &up, 10));
    let b = Switchyard::start(&two_pools(&etcd, "/f/pause", "b", &up, 10));
    put_until_joined(&a, 10).await;
    put_until_joined(&b, 10).await;
    let before = shop(&a).await["generation"].as_u64();

    etcd.freeze(true);
    let started = Instant::now();
    let url = a.admin_url("/admin/services/shop/weights");
    let put = tokio::spawn(async move {
        let body = json!({"stable": 27, "canary": 73}).to_string();
        let answer = admin(&client(), "PUT", &url, &body, &[]).await;
        (answer, started.elapsed())
    });
    // Reads never wait on the store, even while a commit does: each answers at once, and
    // all of them before the commit gives up.
    for path in [
        "/admin/status",
        "/admin/services/shop",
        "/admin/cluster",
        "/metrics",
        "/healthz",
    ] {
        let asked = Instant::now();
        let req = http::Request::get(a.admin_url(path))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let (status, _) = fetch(&client(), req).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            asked.elapsed() < Duration::from_millis(300),
            "{path}: {:?}",
            asked.elapsed()
        );
    }
    assert!(
        !put.is_finished(),
        "the commit did not wait on the paused store"
    );
    let ((status, answer), waited) = put.await.expect("the PUT");
    etcd.freeze(false);
    // Sent, and no answer: the outcome is unknown, never "unavailable".
    assert_eq!(status, 504, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("outcome unknown:")),
        "{answer}"
    );
    assert_eq!(answer["generation"].as_u64(), before, "{answer}");
    assert!(waited < LEASE + Duration::from_secs(2), "{waited:?}");

    // Whether etcd took the transaction depends on whether it read it before the client's
    // cancellation: both happen. What the store holds decides, and the replicas must agree
    // with it: served and audited exactly once everywhere, or nowhere at all.
    wait_for(T, "the replicas to be in touch again", || async {
        cluster(&a).await["store"]["up"] == true && cluster(&b).await["store"]["up"] == true
    })
    .await;
    let stored = state_of(&etcd, "/f/pause").await.unwrap_or_default();
    let committed = stored["services"]["shop"]["weights"]["canary"] == 73;
    eprintln!("the paused store committed the change: {committed}");
    let next = before.map(|g| g + 1);
    let of = |entries: Vec<Value>| -> Vec<Value> {
        entries
            .into_iter()
            .filter(|e| e["generation"].as_u64() == next)
            .collect()
    };
    if !committed {
        assert_eq!(stored["generation"].as_u64(), before, "{stored}");
        for sy in [&a, &b] {
            assert_eq!(canary_weight(sy).await, 10);
            assert_eq!(of(audit(sy).await), Vec::<Value>::new());
        }
        return;
    }
    for sy in [&a, &b] {
        wait_for(T, "the committed change to be served", || async {
            canary_weight(sy).await == 73
        })
        .await;
    }
    assert_eq!(shop(&a).await["generation"].as_u64(), next);
    // Audited exactly once: as the admin call on the replica that took it, as the fleet's
    // change (naming that replica) on the other.
    let (on_a, on_b) = (of(audit(&a).await), of(audit(&b).await));
    assert_eq!(on_a.len(), 1, "{on_a:#?}");
    assert_eq!(on_b.len(), 1, "{on_b:#?}");
    assert_eq!(on_a[0]["actor"], "admin", "{on_a:#?}");
    assert_eq!(on_a[0]["call"], "PUT /admin/services/shop/weights");
    assert!(
        on_a[0]["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert_eq!(on_b[0]["actor"], "fleet", "{on_b:#?}");
    assert_eq!(on_b[0]["replica"], "a");
    assert_eq!(on_b[0]["call"], "PUT /admin/services/shop/weights");
    for e in [&on_a[0], &on_b[0]] {
        assert_eq!(
            e["after"],
            json!({"weights": {"stable": 27, "canary": 73}}),
            "{e}"
        );
        assert_eq!(
            e["before"],
            json!({"weights": {"stable": 90, "canary": 10}}),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_store_down_a_change_is_503_and_never_applies_later() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/down", "a", &up, 10));
    put_until_joined(&a, 20).await;
    let entries = audit(&a).await.len();
    etcd.kill();
    let (status, answer) = put_weights(&a, 55).await;
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    // One readable line that says what failed, not a transport dump.
    let endpoint = etcd.endpoint();
    let port = endpoint.rsplit(':').next().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "cluster store unavailable: cannot connect to 127.0.0.1:{port} (connection refused)"
        ),
        "{answer}"
    );
    etcd.restart().await;
    wait_for(T, "the replica to be in touch again", || async {
        cluster(&a).await["store"]["up"] == true
    })
    .await;
    assert_eq!(canary_weight(&a).await, 20);
    assert_eq!(audit(&a).await.len(), entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_shared_state_is_not_applied_and_the_next_valid_commit_heals_it() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/invalid", "a", &up, 10));
    let b = Process::spawn(&two_pools(&etcd, "/f/invalid", "b", &up, 10)).await;
    put_until_joined(&a, 30).await;
    put_until_joined(&b, 30).await;
    let mut c = etcd_client(&etcd).await;
    let generation = shop(&a).await["generation"].as_u64().unwrap_or(0);
    for (what, value) in [
        (
            "zero-sum weights",
            json!({"generation": generation + 1, "services": {"shop": {"weights": {"stable": 0, "canary": 0}}}})
                .to_string(),
        ),
        ("garbage", "{not json".to_string()),
    ] {
        c.put("/f/invalid/state", value, None).await.expect("put");
        for sy in [&a as &dyn Replica, &b as &dyn Replica] {
            wait_for(T, &format!("{what}: the replica to report it"), || async {
                cluster(&sy).await["store"]["error"].is_string()
            })
            .await;
            assert_eq!(canary_weight(&sy).await, 30, "{what}: applied");
            let shown = cluster(&sy).await;
            assert_eq!(shown["applied_generation"].as_u64(), Some(generation), "{shown}");
        }
        assert_eq!(
            metric(&b, "switchyard_cluster_state_invalid").await,
            Some(1.0),
            "{what}"
        );
    }
    // The next change overwrites it, and every replica serves it again.
    let (status, answer) = put_weights(&a, 40).await;
    assert_eq!(status, 200, "{answer}");
    for sy in [&a as &dyn Replica, &b as &dyn Replica] {
        wait_for(T, "the healed state to be served", || async {
            canary_weight(&sy).await == 40 && cluster(&sy).await["store"]["error"].is_null()
        })
        .await;
    }
    assert_eq!(
        metric(&b, "switchyard_cluster_state_invalid").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_state_is_seeded_again_above_the_last_generation_and_changes_work() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/wipe", "a", &up, 10));
    let b = Switchyard::start(&two_pools(&etcd, "/f/wipe", "b", &up, 10));
    put_until_joined(&a, 35).await;
    put_until_joined(&b, 35).await;
    let last = shop(&a).await["generation"].as_u64().unwrap_or(0);
    let mut c = etcd_client(&etcd).await;
    c.delete(
        "/f/wipe",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete the prefix");
    let wiped = Instant::now();
    // Seeded again from the live state, above the last generation...
    wait_for(
        LEASE + Duration::from_secs(3),
        "the state to be seeded again",
        || async {
            state_of(&etcd, "/f/wipe")
                .await
                .is_some_and(|s| s["generation"].as_u64() > Some(last))
        },
    )
    .await;
    let took = wiped.elapsed();
    let seeded = state_of(&etcd, "/f/wipe").await.unwrap_or_default();
    assert_eq!(
        seeded["services"]["shop"]["weights"]["canary"], 35,
        "{seeded}"
    );
    // ...and changes work again on every replica.
    let (status, answer) = put_weights(&b, 45).await;
    assert_eq!(status, 200, "{answer}");
    wait_for(T, "the change to reach the other replica", || async {
        canary_weight(&a).await == 45
    })
    .await;
    assert!(cluster(&a).await["store"]["up"] == true);
    eprintln!("re-seeded {took:?} after the wipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_key_no_live_lease_backs_is_taken_over() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/leader", "a", &up, 10));
    put_until_joined(&a, 10).await;
    wait_for(T, "a leader", || async {
        cluster(&a).await["leader"] == "a"
    })
    .await;
    let mut c = etcd_client(&etcd).await;
    // Written by hand, without a lease: nothing would ever take it back.
    c.put("/f/leader/leader", "ghost", None).await.expect("put");
    let written = Instant::now();
    wait_for(T, "the ghost to be seen", || async {
        cluster(&a).await["leader"] != "a"
    })
    .await;
    wait_for(
        LEASE + Duration::from_secs(2),
        "the leadership to be taken back",
        || async { cluster(&a).await["leader"] == "a" },
    )
    .await;
    assert!(written.elapsed() < LEASE + Duration::from_secs(2));
    let got = c.get("/f/leader/leader", None).await.expect("get");
    assert!(got.kvs().first().is_some_and(|kv| kv.lease() != 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_live_replica_with_a_name_in_use_refuses_to_start() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/name", "a", &up, 10));
    put_until_joined(&a, 10).await;
    wait_for(T, "the replica to be listed", || async {
        cluster(&a).await["members"][0]["name"] == "a"
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &two_pools(&etcd, "/f/name", "a", &up, 10));
    let config = switchyard::config::load(&path).expect("config");
    let started = Instant::now();
    let refused = switchyard::app::Instance::start(&config, &switchyard::app::Options::new(1));
    let Err(e) = refused else {
        panic!("a second replica named \"a\" started")
    };
    let text = e.to_string();
    assert!(
        text.contains("\"a\"") && text.contains("\"/f/name\""),
        "{text}"
    );
    // It waited for the name's lease to end, as a restarted replica's would.
    assert!(started.elapsed() >= LEASE, "{:?}", started.elapsed());
    // The first is untouched: still the only member, still leading.
    let shown = cluster(&a).await;
    assert_eq!(
        shown["members"].as_array().map(Vec::len),
        Some(1),
        "{shown}"
    );
    assert_eq!(put_weights(&a, 15).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_file_lacks_a_pool_the_fleet_weights_says_so() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&replica(
        &etcd,
        "/f/conflict",
        "a",
        &up,
        &["stable", "beta", "canary"],
        10,
    ));
    put_until_joined(&a, 10).await;
    let b = Process::spawn(&two_pools(&etcd, "/f/conflict", "b", &up, 10)).await;
    wait_for(T, "the conflict to be reported", || async {
        cluster(&b).await["conflicts"].as_array().is_some_and(|c| {
            c.iter()
                .any(|s| s.as_str().is_some_and(|s| s.contains("\"beta\"")))
        })
    })
    .await;
    assert_eq!(metric(&b, "switchyard_cluster_conflicts").await, Some(1.0));
    assert_eq!(cluster(&a).await["conflicts"], json!([]));
}

impl Replica for &dyn Replica {
    fn admin_url(&self, path: &str) -> String {
        (**self).admin_url(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_of_an_older_generation_is_written_over_never_served() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let up = Upstream::start("v1").await;
    let a = Switchyard::start(&two_pools(&etcd, "/f/older", "a", &up, 10));
    let b = Switchyard::start(&two_pools(&etcd, "/f/older", "b", &up, 10));
    put_until_joined(&a, 20).await;
    put_until_joined(&b, 25).await;
    wait_for(T, "both replicas on the same state", || async {
        canary_weight(&a).await == 25
    })
    .await;
    let served = shop(&a).await["generation"].as_u64().unwrap_or(0);
    // What a replica that was behind, or a restored backup, would write: generation 1.
    let mut c = etcd_client(&etcd).await;
    let older =
        json!({"generation": 1, "services": {"shop": {"weights": {"stable": 50, "canary": 50}}}});
    c.put("/f/older/state", older.to_string(), None)
        .await
        .expect("put");
    // The replicas write their state above it rather than give generation 1 to another state.
    wait_for(T, "the store to hold a newer generation again", || async {
        state_of(&etcd, "/f/older")
            .await
            .is_some_and(|s| s["generation"].as_u64() > Some(served))
    })
    .await;
    for sy in [&a, &b] {
        wait_for(T, "the replicas to serve it", || async {
            shop(sy).await["generation"].as_u64() > Some(served)
        })
        .await;
        assert_eq!(canary_weight(sy).await, 25);
        let gens: Vec<u64> = audit(sy)
            .await
            .iter()
            .rev()
            .filter_map(|e| e["generation"].as_u64())
            .collect();
        assert!(gens.windows(2).all(|w| w[1] > w[0]), "{gens:?}");
    }
}
