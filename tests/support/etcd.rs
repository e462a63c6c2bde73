//! Real etcd members on loopback ports for the fleet tests (Debian's `etcd-server`, which
//! `.ci/run` installs). Each member has its own data directory and is killed on drop. A
//! single member may serve its clients over TLS ([`Etcd::start_tls`]).
// Included by several test binaries, each using a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::free_addr;

/// The etcd binary, or `None` when it is not installed and not required (outside CI).
pub fn etcd_binary() -> Option<&'static str> {
    let path = "/usr/bin/etcd";
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("SWITCHYARD_REQUIRE_ETCD").is_none(),
        "etcd is required (CI installs Debian's etcd-server)"
    );
    // Once per test binary, and past the test harness's capture of `eprintln!` (which hides
    // a passing test's output): a skipped suite must not look like a passed one.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n*** {path} not found: fleet tests SKIPPED. Install Debian's etcd-server (CI \
             does), or set SWITCHYARD_REQUIRE_ETCD=1 to make them fail instead. ***\n"
        );
    });
    None
}

pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    /// Plain-HTTP `/health` (and `/metrics`) of a TLS member, whose client port speaks TLS.
    health: SocketAddr,
    tls: Option<EtcdTls>,
    binary: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// TLS on a member's client port: its certificate and key (PEM files) and, with `client_ca`,
/// client certificates signed by that CA required (`--client-cert-auth`).
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl EtcdTls {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--cert-file".to_owned(),
            self.cert.to_string_lossy().into_owned(),
            "--key-file".to_owned(),
            self.key.to_string_lossy().into_owned(),
        ];
        if let Some(ca) = &self.client_ca {
            args.extend([
                "--trusted-ca-file".to_owned(),
                ca.to_string_lossy().into_owned(),
                "--client-cert-auth".to_owned(),
            ]);
        }
        args
    }
}

impl Etcd {
    /// A one-member cluster, answering once this returns. The ports are picked free and
    /// then bound by etcd, so another process may take one in between: a member that exits
    /// at start is tried again on new ports.
    pub async fn start(binary: &str) -> Etcd {
        Self::start_with(binary, None).await
    }

    /// Like [`Etcd::start`], its clients served over TLS (`https://`).
    pub async fn start_tls(binary: &str, tls: EtcdTls) -> Etcd {
        Self::start_with(binary, Some(tls)).await
    }

    async fn start_with(binary: &str, tls: Option<EtcdTls>) -> Etcd {
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("etcd data dir");
            let (client, peer) = (free_addr(), free_addr());
            // Health is asked over plain HTTP; a TLS member answers it on a port of its own.
            let health = if tls.is_some() { free_addr() } else { client };
            let child = spawn_single(binary, dir.path(), client, peer, health, tls.as_ref());
            let mut etcd = Etcd {
                client,
                peer,
                health,
                tls: tls.clone(),
                binary: binary.to_owned(),
                child,
                _dir: dir,
            };
            let url = format!("http://{health}/health");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if health_ok(&url) {
                    return etcd;
                }
                if matches!(etcd.child.try_wait(), Ok(Some(_)))
                    || tokio::time::Instant::now() > deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last_log =
                std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
            etcd.kill();
        }
        panic!("etcd did not start:\n{last_log}");
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Starts the killed member again on its ports and data: the same store, back.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_single(
            &self.binary,
            self._dir.path(),
            self.client,
            self.peer,
            self.health,
            self.tls.as_ref(),
        );
        let url = format!("http://{}/health", self.health);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !health_ok(&url) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the member: a store that holds connections open
    /// and answers nothing, as a hung or partitioned etcd does.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-member etcd cluster: one member down keeps quorum.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

pub struct Member {
    pub client: SocketAddr,
    name: String,
    peer: SocketAddr,
    initial: String,
    data: std::path::PathBuf,
    binary: String,
    child: Option<Child>,
}

impl EtcdCluster {
    pub async fn start(binary: &str) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("etcd cluster dir");
        let ports: Vec<(SocketAddr, SocketAddr)> =
            (0..3).map(|_| (free_addr(), free_addr())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .into_iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                client,
                name: format!("m{}", i + 1),
                peer,
                initial: initial.clone(),
                data: dir.path().join(format!("m{}", i + 1)),
                binary: binary.to_owned(),
                child: None,
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let cluster = EtcdCluster { members, _dir: dir };
        for m in &cluster.members {
            m.wait_healthy().await;
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }
}

impl Member {
    fn spawn(&mut self) {
        let log = self.data.with_extension("log");
        let child = spawn(
            &self.binary,
            &self.name,
            &self.data,
            &log,
            self.client,
            self.peer,
            &self.initial,
            &[],
        );
        self.child = Some(child);
    }

    async fn wait_healthy(&self) {
        let url = format!("http://{}/health", self.client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !health_ok(&url) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd member {} never healthy",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again on its data; returns once it answers.
    pub async fn restart(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
        self.wait_healthy().await;
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the member.
    pub fn freeze(&self, frozen: bool) {
        let Some(child) = &self.child else { return };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let _ = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One etcd member: its data under `data`, its log appended to `log`; `initial` lists the
/// cluster's members as `name=http://peer,...`. `extra` arguments come last and win.
#[allow(clippy::too_many_arguments)]
fn spawn(
    binary: &str,
    name: &str,
    data: &std::path::Path,
    log: &std::path::Path,
    client: SocketAddr,
    peer: SocketAddr,
    initial: &str,
    extra: &[String],
) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("etcd log");
    Command::new(binary)
        .args([
            "--name",
            name,
            "--data-dir",
            &data.to_string_lossy(),
            "--listen-client-urls",
            &format!("http://{client}"),
            "--advertise-client-urls",
            &format!("http://{client}"),
            "--listen-peer-urls",
            &format!("http://{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--log-level",
            "error",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start etcd")
}

/// A single member's process, in `dir`; with `tls`, its client port speaks TLS and its
/// health is on `health`.
fn spawn_single(
    binary: &str,
    dir: &std::path::Path,
    client: SocketAddr,
    peer: SocketAddr,
    health: SocketAddr,
    tls: Option<&EtcdTls>,
) -> Child {
    let initial = format!("m1=http://{peer}");
    let extra = match tls {
        None => Vec::new(),
        Some(tls) => {
            let mut args = vec![
                "--listen-client-urls".to_owned(),
                format!("https://{client}"),
                "--advertise-client-urls".to_owned(),
                format!("https://{client}"),
                "--listen-metrics-urls".to_owned(),
                format!("http://{health}"),
            ];
            args.extend(tls.args());
            args
        }
    };
    spawn(
        binary,
        "m1",
        &dir.join("data"),
        &dir.join("etcd.log"),
        client,
        peer,
        &initial,
        &extra,
    )
}

/// `GET /health` answers `{"health":"true"}`.
fn health_ok(url: &str) -> bool {
    let Some(addr) = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
    else {
        return false;
    };
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}
