//! A fleet under faults, checked against what it answered. Three switchyard processes share
//! their live state through a real three-member etcd cluster. Clients send random admin
//! calls (weights with and without `If-Match`, drain and undrain, swap, rollback, rollout
//! start/pause/resume/promote/abort) to random replicas, each on a connection of its own so
//! that its audit entries can be told apart by the caller's address, while a nemesis pauses
//! (SIGSTOP) and kills (SIGKILL) etcd members and replicas, deletes the shared state and writes
//! garbage into it, and traffic flows through every replica. Every call and answer is
//! recorded, and at the end the history is checked:
//!
//! - a change answered 503 or 4xx never appears in any replica's audit;
//! - a change answered 200 appears at most once per replica, at the generation it answered,
//!   and on the replica that answered (when that replica's audit was read after the answer);
//! - a change whose outcome was unknown (504, or no answer) appears at most once per replica;
//! - each replica's audit has one entry per generation, in generation order;
//! - after the faults heal, one change reaches every replica within 1 s and they all serve
//!   the same state;
//! - no request through a replica that was not being faulted failed.
//!
//! `CHAOS_SECS` sets how long the faults go on (default 60).

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd::{EtcdCluster, etcd_binary};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use serde_json::{Value, json};
use support::*;
use tokio::sync::RwLock;
use tokio::time::Instant;

const REPLICAS: usize = 3;
const PREFIX: &str = "/chaos";
/// How long an admin call may take before it counts as unanswered: longer than a commit's
/// own limit (`lease_ttl`).
const CALL_LIMIT: Duration = Duration::from_secs(5);

fn config(etcd: &[String], name: &str, admin: SocketAddr, a: &Upstream, b: &Upstream) -> String {
    let etcd: Vec<String> = etcd.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\
         [admin]\nlisten = \"{admin}\"\npersist = false\n\
         [cluster]\netcd = [{}]\nprefix = \"{PREFIX}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n\
         [[routes]]\npath_prefix = \"/web\"\nservice = \"web\"\n\
         [[routes]]\nservice = \"shop\"\n\
         [services.shop]\nstrategy = \"canary\"\nweights = {{ stable = 90, canary = 10 }}\n\
         [services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 50]\n\
         interval = \"1h\"\nmin_requests = 1000000\n\
         [services.shop.pools.stable]\nendpoints = [\"{a}\", \"{b}\"]\n\
         [services.shop.pools.canary]\nendpoints = [\"{b}\"]\n\
         [services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\n\
         [services.web.pools.blue]\nendpoints = [\"{a}\"]\n\
         [services.web.pools.green]\nendpoints = [\"{b}\"]\n",
        etcd.join(", "),
        a = a.addr,
        b = b.addr,
    )
}

/// One replica: its process (none while killed), where its admin API is, and the audit
/// entries read from each of its earlier lives just before they were killed.
struct Replica {
    name: String,
    admin: SocketAddr,
    toml: String,
    proc: Option<ProxyProcess>,
    /// The proxy address of the current life.
    addr: Option<SocketAddr>,
    /// Each life's audit, as last read, and when it was asked for: an answer received before
    /// then was recorded before the audit was read.
    /// `None` when it could not be read: that life's entries are not checked.
    lives: Vec<(Instant, Option<Vec<Value>>)>,
    /// When each life's process was started.
    started: Vec<Instant>,
}

/// One admin call as the client saw it.
#[derive(Debug, Clone)]
struct Call {
    replica: usize,
    /// Read only through `Debug`, in the anomaly reports.
    #[allow(dead_code)]
    what: String,
    /// The client's address: what the audit names as `caller`.
    caller: String,
    /// `None`: no answer within the limit.
    status: Option<u16>,
    generation: Option<u64>,
    sent_at: Instant,
    answered_at: Instant,
}

/// When a replica was being faulted (paused or dead): its failed requests are expected.
#[derive(Default)]
struct Faults {
    windows: Vec<(usize, Instant, Option<Instant>)>,
}

impl Faults {
    fn overlaps(&self, replica: usize, from: Instant, to: Instant) -> bool {
        self.windows
            .iter()
            .any(|(r, start, end)| *r == replica && *start <= to && end.is_none_or(|e| e >= from))
    }
}

/// One admin call on a fresh connection; the caller's address, the status (`None` when no
/// answer came in time) and the JSON body.
async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: String,
    if_match: Option<u64>,
) -> (String, Option<u16>, Value) {
    // Each call from an address of its own in 127.0.0.0/8: ports are reused within seconds,
    // addresses are not, so the audit's `caller` names exactly one call.
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let source = std::net::Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::from((source, 0))).ok()?;
        let stream = socket.connect(admin).await.ok()?;
        let caller = stream.local_addr().ok()?.to_string();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", admin.to_string());
        if let Some(g) = if_match {
            req = req.header("if-match", g.to_string());
        }
        let req = req.body(Full::new(Bytes::from(body))).ok()?;
        let caller2 = caller.clone();
        let answer = tokio::time::timeout(CALL_LIMIT, async move {
            let resp = send.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            Some((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        })
        .await
        .ok()
        .flatten();
        Some(match answer {
            Some((status, v)) => (caller2, Some(status), v),
            None => (caller2, None, Value::Null),
        })
    };
    attempt
        .await
        .unwrap_or_else(|| ("-".to_string(), None, Value::Null))
}

async fn audit_of(admin: SocketAddr) -> Option<Vec<Value>> {
    let (_, status, v) = call(admin, "GET", "/admin/audit?limit=1000", String::new(), None).await;
    (status == Some(200)).then(|| v.as_array().cloned().unwrap_or_default())
}

/// A random admin call: (method, path, body).
fn random_op(rng: &mut impl rand::Rng, upstreams: &[String; 2]) -> (&'static str, String, String) {
    match rng.random_range(0..10) {
        0..=3 => {
            let canary: u32 = rng.random_range(0..=100);
            (
                "PUT",
                "/admin/services/shop/weights".into(),
                json!({"stable": 100 - canary, "canary": canary}).to_string(),
            )
        }
        4 => (
            "POST",
            "/admin/services/web/swap?force=true".into(),
            String::new(),
        ),
        5 => {
            let svc = if rng.random_bool(0.5) { "shop" } else { "web" };
            (
                "POST",
                format!("/admin/services/{svc}/rollback"),
                String::new(),
            )
        }
        6 => {
            let ep = &upstreams[rng.random_range(0..2)];
            let verb = if rng.random_bool(0.5) {
                "drain"
            } else {
                "undrain"
            };
            (
                "POST",
                format!("/admin/services/shop/pools/stable/endpoints/{ep}/{verb}"),
                String::new(),
            )
        }
        _ => {
            let action = ["start", "pause", "resume", "promote", "abort"][rng.random_range(0..5)];
            (
                "POST",
                format!("/admin/services/shop/rollout/{action}"),
                String::new(),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleets_answers_hold_under_faults() {
    let Some(bin) = etcd_binary() else { return };
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut etcd = EtcdCluster::start(bin).await;
    let endpoints = etcd.endpoints();
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let upstreams = [a.addr.to_string(), b.addr.to_string()];
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            let admin = free_addr();
            let name = format!("r{i}");
            let toml = config(&endpoints, &name, admin, &a, &b);
            Replica {
                name,
                admin,
                toml,
                proc: None,
                addr: None,
                lives: Vec::new(),
                started: Vec::new(),
            }
        })
        .collect();
    for r in &mut replicas {
        r.started.push(Instant::now());
        let p = ProxyProcess::spawn(&r.toml);
        r.addr = Some(p.addr);
        r.proc = Some(p);
    }
    // Every replica joined: a change on each answers 200.
    for r in &replicas {
        let admin = r.admin;
        wait_for(
            Duration::from_secs(20),
            "the replica to join",
            || async move {
                call(
                    admin,
                    "PUT",
                    "/admin/services/shop/weights",
                    json!({"stable": 90, "canary": 10}).to_string(),
                    None,
                )
                .await
                .1 == Some(200)
            },
        )
        .await;
    }

    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin).collect();
    let addrs: Arc<RwLock<Vec<Option<SocketAddr>>>> =
        Arc::new(RwLock::new(replicas.iter().map(|r| r.addr).collect()));
    let faults = Arc::new(RwLock::new(Faults::default()));
    let calls: Arc<RwLock<Vec<Call>>> = Arc::new(RwLock::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Clients: random calls on random replicas, half of them with If-Match.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (admins, calls, upstreams) = (admins.clone(), calls.clone(), upstreams.clone());
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let (replica, (method, path, body), with_if_match) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..REPLICAS),
                        random_op(&mut rng, &upstreams),
                        rng.random_bool(0.5),
                    )
                };
                let admin = admins[replica];
                let if_match = if with_if_match {
                    let (_, status, v) =
                        call(admin, "GET", "/admin/services/shop", String::new(), None).await;
                    if status != Some(200) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    v["generation"].as_u64()
                } else {
                    None
                };
                let sent_at = Instant::now();
                let (caller, status, v) = call(admin, method, &path, body, if_match).await;
                calls.write().await.push(Call {
                    replica,
                    what: format!(
                        "{method} {path}{}",
                        if_match.map_or(String::new(), |g| format!(" if-match {g}"))
                    ),
                    caller,
                    status,
                    generation: v["generation"].as_u64(),
                    sent_at,
                    answered_at: Instant::now(),
                });
                let pause = rand::rng().random_range(20..120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }

    // Traffic through every replica that runs.
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(Vec::new()));
    let mut loads = Vec::new();
    for i in 0..REPLICAS {
        let (addrs, faults, served, failed, failures) = (
            addrs.clone(),
            faults.clone(),
            served.clone(),
            failed.clone(),
            failures.clone(),
        );
        loads.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let Some(addr) = addrs.read().await[i] else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                n += 1;
                let path = if n.is_multiple_of(2) { "/" } else { "/web" };
                let started = Instant::now();
                let req = http::Request::get(format!("http://{addr}{path}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let outcome = tokio::time::timeout(Duration::from_secs(3), c.request(req)).await;
                let ok = matches!(&outcome, Ok(Ok(r)) if r.status().is_success());
                if ok {
                    served.fetch_add(1, Ordering::Relaxed);
                } else if !faults.read().await.overlaps(i, started, Instant::now()) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let why = match outcome {
                        Ok(Ok(r)) => format!("status {}", r.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer in 3 s".into(),
                    };
                    failures.write().await.push(format!("r{i} {path}: {why}"));
                }
            }
        }));
    }

    // The nemesis: one fault at a time, each healed before the next.
    let mut injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut etcd_client = etcd_client::Client::connect(endpoints.clone(), None)
        .await
        .expect("etcd client");
    while Instant::now() < deadline {
        let (kind, target, hold) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..6),
                rng.random_range(0..3),
                Duration::from_millis(rng.random_range(500..2000)),
            )
        };
        let name = match kind {
            0 => {
                etcd.members[target].freeze(true);
                tokio::time::sleep(hold).await;
                etcd.members[target].freeze(false);
                "etcd member paused"
            }
            1 => {
                etcd.members[target].kill();
                tokio::time::sleep(hold).await;
                etcd.members[target].restart().await;
                "etcd member killed and restarted"
            }
            2 => {
                let r = &mut replicas[target];
                let admin = r.admin;
                // Asked after every answer counted as before it (see `lives`).
                let asked = Instant::now();
                r.lives.push((asked, audit_of(admin).await));
                faults
                    .write()
                    .await
                    .windows
                    .push((target, Instant::now(), None));
                addrs.write().await[target] = None;
                drop(r.proc.take());
                tokio::time::sleep(hold).await;
                r.started.push(Instant::now());
                let p = ProxyProcess::spawn(&r.toml);
                r.addr = Some(p.addr);
                r.proc = Some(p);
                addrs.write().await[target] = r.addr;
                // Counted as faulted until it has joined again.
                let back = async {
                    loop {
                        let (_, status, v) =
                            call(admin, "GET", "/admin/cluster", String::new(), None).await;
                        if status == Some(200) && v["store"]["up"] == true {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), back).await;
                close_window(&faults, target).await;
                "replica killed and restarted"
            }
            3 => {
                let pid = replicas[target].proc.as_ref().map(ProxyProcess::pid);
                if let Some(pid) = pid {
                    faults
                        .write()
                        .await
                        .windows
                        .push((target, Instant::now(), None));
                    signal(pid, "-STOP");
                    tokio::time::sleep(hold).await;
                    signal(pid, "-CONT");
                    close_window(&faults, target).await;
                }
                "replica paused"
            }
            4 => {
                let _ = etcd_client.delete(format!("{PREFIX}/state"), None).await;
                tokio::time::sleep(hold).await;
                "shared state deleted"
            }
            _ => {
                let _ = etcd_client
                    .put(format!("{PREFIX}/state"), "{garbage", None)
                    .await;
                tokio::time::sleep(hold).await;
                "shared state corrupted"
            }
        };
        *injected.entry(name).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in clients {
        c.await.expect("client");
    }
    for l in loads {
        l.await.expect("load");
    }

    // Healed: every etcd member and replica runs. One change then reaches every replica
    // within a second, and they all serve one state.
    for m in &mut etcd.members {
        m.freeze(false);
        if !m.running() {
            m.restart().await;
        }
    }
    let settle = loop {
        let (_, status, v) = call(
            replicas[0].admin,
            "PUT",
            "/admin/services/shop/weights",
            json!({"stable": 77, "canary": 23}).to_string(),
            None,
        )
        .await;
        if status == Some(200) {
            break (Instant::now(), v["generation"].as_u64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut converged = Duration::ZERO;
    for r in &replicas {
        let admin = r.admin;
        wait_for(
            Duration::from_secs(5),
            "the settling change everywhere",
            || async move {
                let (_, status, v) =
                    call(admin, "GET", "/admin/services/shop", String::new(), None).await;
                status == Some(200) && v["generation"].as_u64() == settle.1
            },
        )
        .await;
        converged = converged.max(settle.0.elapsed());
    }
    let mut states = Vec::new();
    for r in &replicas {
        let mut both = Vec::new();
        for svc in ["shop", "web"] {
            let (_, _, v) = call(
                r.admin,
                "GET",
                &format!("/admin/services/{svc}"),
                String::new(),
                None,
            )
            .await;
            both.push(json!({
                "generation": v["generation"], "weights": v["weights"], "active": v["active"],
                "drained": v["pools"].as_object().map(|pools| pools.iter().flat_map(|(p, pool)| {
                    pool["endpoints"].as_array().cloned().unwrap_or_default().into_iter()
                        .filter(|e| e["draining"] == true)
                        .map(move |e| format!("{p}/{}", e["address"].as_str().unwrap_or("")))
                }).collect::<Vec<_>>()),
                "rollout": [&v["rollout"]["state"], &v["rollout"]["step"]],
            }));
        }
        states.push(both);
    }
    for r in &mut replicas {
        let asked = Instant::now();
        r.lives.push((asked, audit_of(r.admin).await));
    }

    // === the check ===
    let calls = calls.read().await.clone();
    let mut anomalies: Vec<String> = Vec::new();
    for (i, s) in states.iter().enumerate().skip(1) {
        if *s != states[0] {
            anomalies.push(format!("r{i} serves {s:?}, r0 serves {:?}", states[0]));
        }
    }
    if converged > Duration::from_secs(1) {
        anomalies.push(format!(
            "the settling change took {converged:?} to reach every replica"
        ));
    }
    // Per life: one entry per generation, in generation order; entries by caller.
    let mut by_caller: HashMap<String, Vec<(usize, usize, Value)>> = HashMap::new();
    for (ri, r) in replicas.iter().enumerate() {
        for (li, (_, entries)) in r.lives.iter().enumerate() {
            let Some(entries) = entries else { continue };
            let mut in_order = entries.clone();
            in_order.reverse();
            let gens: Vec<u64> = in_order
                .iter()
                .filter_map(|e| e["generation"].as_u64())
                .collect();
            if let Some(i) = gens.windows(2).position(|w| w[1] <= w[0]) {
                anomalies.push(format!(
                    "{} life {li}: generation {} recorded after {}: {} then {}",
                    r.name,
                    gens[i + 1],
                    gens[i],
                    in_order[i],
                    in_order[i + 1]
                ));
            }
            for e in entries {
                if let Some(c) = e["caller"].as_str() {
                    by_caller
                        .entry(c.to_string())
                        .or_default()
                        .push((ri, li, e.clone()));
                }
            }
        }
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        let status = c.status.map_or("no answer".to_string(), |s| s.to_string());
        *by_status.entry(status).or_default() += 1;
        let seen = by_caller.get(&c.caller).cloned().unwrap_or_default();
        // Per life of each replica, at most one entry.
        let mut per_life: HashMap<(usize, usize), usize> = HashMap::new();
        for (ri, li, _) in &seen {
            *per_life.entry((*ri, *li)).or_default() += 1;
        }
        if let Some(((ri, li), n)) = per_life.iter().find(|(_, n)| **n > 1) {
            anomalies.push(format!("{c:?} recorded {n} times on r{ri} life {li}"));
        }
        match c.status {
            Some(200) => {
                if let Some((ri, _, e)) = seen
                    .iter()
                    .find(|(_, _, e)| e["generation"].as_u64() != c.generation)
                {
                    anomalies.push(format!(
                        "{c:?} answered generation {:?}, r{ri} recorded {e}",
                        c.generation
                    ));
                }
                // The replica that answered recorded it: the life that answered is the last
                // one started before the call was sent (unless another started while it was
                // under way), and its audit tells when it was read after the answer.
                let r = &replicas[c.replica];
                let answered_by = r.started.iter().filter(|t| **t <= c.sent_at).count();
                let restarted_meanwhile = r
                    .started
                    .iter()
                    .any(|t| *t > c.sent_at && *t <= c.answered_at);
                let life = answered_by.checked_sub(1).filter(|li| {
                    !restarted_meanwhile
                        && r.lives
                            .get(*li)
                            .is_some_and(|(asked, _)| *asked > c.answered_at)
                });
                // (A long run's oldest entries may have left the audit's 1000.)
                let kept = |li: usize| {
                    let Some(entries) = &replicas[c.replica].lives[li].1 else {
                        return false;
                    };
                    let oldest = entries.last().and_then(|e| e["generation"].as_u64());
                    entries.len() < 1000 || oldest.zip(c.generation).is_some_and(|(o, g)| g >= o)
                };
                if let (Some(li), false) = (life, seen.is_empty())
                    && kept(li)
                    && !seen.iter().any(|(ri, l, _)| *ri == c.replica && *l == li)
                {
                    let there: Vec<&Value> = replicas[c.replica].lives[li]
                        .1
                        .iter()
                        .flatten()
                        .filter(|e| e["generation"].as_u64() == c.generation)
                        .collect();
                    anomalies.push(format!(
                        "{c:?} was applied elsewhere ({seen:?}) but not recorded where it was answered (life {li}, which recorded {there:?} at that generation)"
                    ));
                }
            }
            Some(503) | Some(400..=499) if !seen.is_empty() => {
                anomalies.push(format!("{c:?} was refused but applied: {seen:?}"));
            }
            _ => {}
        }
    }
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    if failed > 0 {
        let shown: Vec<String> = failures.read().await.iter().take(5).cloned().collect();
        anomalies.push(format!("{failed} proxied requests failed: {shown:?}"));
    }
    let applied: usize = by_caller.len();
    eprintln!(
        "chaos: {secs} s, {} admin calls {by_status:?}, {applied} of them applied; faults injected: {} {injected:?}; \
         {served} proxied requests, {failed} failed; the settling change reached every replica in {converged:?}; anomalies: {}",
        calls.len(),
        injected.values().sum::<usize>(),
        anomalies.len()
    );
    assert!(anomalies.is_empty(), "anomalies:\n{}", anomalies.join("\n"));
    assert!(
        calls.iter().any(|c| c.status == Some(200)),
        "no call succeeded"
    );
}

async fn close_window(faults: &RwLock<Faults>, replica: usize) {
    let now = Instant::now();
    for w in faults.write().await.windows.iter_mut() {
        if w.0 == replica && w.2.is_none() {
            w.2 = Some(now);
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}
