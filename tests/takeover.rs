//! `run --takeover`: a new process takes the listeners and the live state over from the
//! running one under load, without a failed request or a refused connection.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use etcd::{Etcd, etcd_binary};
use serde_json::Value;
use support::pki;
use support::*;

const T: Duration = Duration::from_secs(20);

/// `switchyard run` on `config` as a child process, with `--takeover` when asked.
struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// The TLS listener's, when there is one.
    tls: Option<SocketAddr>,
    /// Every stderr line, as it comes.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(config: &Path, takeover: bool) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["run", "--workers", "2", "--config"]).arg(config);
        if takeover {
            cmd.arg("--takeover");
        }
        let mut child = cmd
            .env("RUST_LOG", "info,switchyard::access=off")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("switchyard runs");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + T;
        let running = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("switchyard never said it runs: {lines:#?}"));
            if line.contains("switchyard running") {
                break line;
            }
            lines.push(line);
        };
        let field = |name: &str| -> SocketAddr {
            running
                .split(&format!("{name}="))
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {running}"))
        };
        let tls = lines
            .iter()
            .find_map(|l| l.split("tls=Some(").nth(1))
            .and_then(|r| r.split(')').next())
            .and_then(|a| a.parse().ok());
        Proc {
            child,
            addr: field("addr"),
            admin: field("admin"),
            tls,
            lines: rx,
        }
    }

    /// Waits for the process to exit; its status code.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + T;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            while self.lines.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("switchyard {} did not exit", self.child.id());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn state(p: &Proc, service: &str) -> Value {
    admin(
        &client(),
        "GET",
        &p.admin_url(&format!("/admin/services/{service}")),
        "",
        &[],
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_takeovers_under_load_fail_no_request_and_keep_the_live_state() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &canary(&a, &b, 100, 0, ""));
    let mut current = Proc::spawn(&path, true);
    // Weights changed live and not written (persist = false): only the takeover carries them.
    let (status, v) = admin(
        &client(),
        "PUT",
        &current.admin_url("/admin/services/svc/weights"),
        r#"{"stable": 70, "canary": 30}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let generation = v["generation"].clone();

    let keep_alive = Load::start(current.url("/"), 4, vec![]);
    let fresh = Load::start(
        current.url("/"),
        2,
        vec![("connection".into(), "close".into())],
    );
    wait_until(T, "load to flow", || a.hits() > 50).await;
    let mut pids = vec![current.child.id()];
    for round in 0..10 {
        let before = a.hits() + b.hits();
        let mut next = Proc::spawn(&path, true);
        assert_eq!(next.addr, current.addr, "round {round}: the same listener");
        assert_eq!(next.admin, current.admin, "round {round}");
        assert_eq!(
            tokio::task::block_in_place(|| current.exit_code()),
            Some(0),
            "round {round}: the predecessor exits 0"
        );
        pids.push(next.child.id());
        let v = state(&next, "svc").await;
        assert_eq!(
            v["weights"],
            serde_json::json!({"stable": 70, "canary": 30}),
            "round {round}: {v}"
        );
        assert_eq!(v["generation"], generation, "round {round}: {v}");
        assert_eq!(v["persisted"], false, "round {round}: {v}");
        wait_until(T, "the successor to serve", || {
            a.hits() + b.hits() > before + 20
        })
        .await;
        std::mem::swap(&mut current, &mut next);
        drop(next);
    }
    let mut samples = keep_alive.finish().await;
    let kept_failed = failures(&samples).len();
    samples.extend(fresh.finish().await);
    eprintln!("keep-alive failures {kept_failed}");
    let failed = failures(&samples);
    eprintln!(
        "{} requests across 10 takeovers, {} failed",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        failed.first().map(|s| (s.status, &s.body))
    );
    assert!(b.hits() > 0, "the live weights are served");
    // Every round handed over to a new process.
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_running_instance_takeover_starts_normally() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &canary(&a, &b, 100, 0, ""));
    let p = Proc::spawn(&path, true);
    let r = get(&client(), &p.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    // A second instance without --takeover on the same takeover socket is refused, and
    // says why (polled with a deadline: one that wrongly started would run on).
    let mut second = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Ok(Some(status)) = second.try_wait() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = second.kill();
            panic!("a second instance on a takeover socket in use did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = second.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a running switchyard listens there"),
        "{stderr}"
    );
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_during_a_rollout_continues_the_same_step() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &canary(
            &a,
            &b,
            100,
            0,
            "[services.svc.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [5, 50, 100]\ninterval = \"1h\"\nmin_requests = 10\n",
        ),
    );
    let mut old = Proc::spawn(&path, false);
    let (status, v) = admin(
        &client(),
        "POST",
        &old.admin_url("/admin/services/svc/rollout/start"),
        "",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let before = state(&old, "svc").await["rollout"].clone();
    assert_eq!(before["state"], "progressing", "{before}");
    assert!(before["since"].is_string(), "{before}");
    let new = Proc::spawn(&path, true);
    assert_eq!(tokio::task::block_in_place(|| old.exit_code()), Some(0));
    let after = state(&new, "svc").await;
    assert_eq!(after["rollout"]["state"], "progressing", "{after}");
    assert_eq!(after["rollout"]["step"], before["step"], "{after}");
    assert_eq!(after["rollout"]["since"], before["since"], "{after}");
    assert_eq!(
        after["weights"],
        serde_json::json!({"stable": 95, "canary": 5})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_fleet_the_successor_takes_the_replica_name_over() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "{}\n[cluster]\netcd = [\"{}\"]\nprefix = \"/t/name\"\nname = \"r1\"\nlease_ttl = \"5s\"\n",
        canary(&a, &b, 100, 0, ""),
        etcd.endpoint()
    );
    let path = write_config(dir.path(), &toml);
    let mut old = Proc::spawn(&path, true);
    let members = |p: &Proc| {
        let url = p.admin_url("/admin/cluster");
        async move {
            let v = admin(&client(), "GET", &url, "", &[]).await.1;
            v["members"].clone()
        }
    };
    wait_for(T, "the replica to join", || async {
        members(&old).await[0]["name"] == "r1"
    })
    .await;
    wait_for(T, "the fleet to take a change", || async {
        admin(
            &client(),
            "PUT",
            &old.admin_url("/admin/services/svc/weights"),
            r#"{"stable": 60, "canary": 40}"#,
            &[],
        )
        .await
        .0 == 200
    })
    .await;
    let started = std::time::Instant::now();
    // A start under a name a live replica holds waits lease_ttl + 1 s and is refused; a
    // successor takes the name over with the sockets.
    let new = Proc::spawn(&path, true);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(tokio::task::block_in_place(|| old.exit_code()), Some(0));
    wait_for(T, "the successor to be the fleet's r1", || async {
        let m = members(&new).await;
        m.as_array().map(Vec::len) == Some(1) && m[0]["name"] == "r1"
    })
    .await;
    let v = state(&new, "svc").await;
    assert_eq!(
        v["weights"],
        serde_json::json!({"stable": 60, "canary": 40}),
        "{v}"
    );
    assert_eq!(
        admin(
            &client(),
            "PUT",
            &new.admin_url("/admin/services/svc/weights"),
            r#"{"stable": 50, "canary": 50}"#,
            &[],
        )
        .await
        .0,
        200
    );
}

/// One HTTPS request on a new connection: its status line, or the error.
async fn https_get(ca: &pki::Pki, addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("a.example.test").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.example.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1.1 200"))
        .map(str::to_string)
        .ok_or_else(|| format!("answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tls_listener_passes_over_without_a_failed_handshake() {
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = std::sync::Arc::new(pki::Pki::new());
    ca.write_leaf(dir.path(), "a", &["a.example.test"]);
    let toml = canary(&a, &b, 100, 0, "").replacen(
        "[admin]",
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [ {{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }} ]\n[admin]",
            d = dir.path().display()
        ),
        1,
    );
    let path = write_config(dir.path(), &toml);
    let mut current = Proc::spawn(&path, false);
    let tls = current.tls.expect("a TLS listener");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (ca, stop) = (ca.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match https_get(&ca, tls).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for round in 0..3 {
        let before = a.hits();
        let mut next = Proc::spawn(&path, true);
        assert_eq!(next.tls, Some(tls), "round {round}");
        assert_eq!(tokio::task::block_in_place(|| current.exit_code()), Some(0));
        wait_until(T, "HTTPS to flow", || a.hits() > before + 20).await;
        std::mem::swap(&mut current, &mut next);
        drop(next);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.expect("client");
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "{ok} HTTPS requests across 3 takeovers, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
}
