//! A real `prometheus` for tests: a child process on a loopback port scraping a switchyard,
//! storing in a temp dir, killed on drop. Needs Debian's `prometheus` (CI installs it).

// Each test binary uses only some of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::support::{client, free_addr};

/// `prometheus` as a child process on a loopback port, storing in a temp dir; killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn binary() -> Option<&'static str> {
        ["prometheus", "/usr/bin/prometheus"].into_iter().find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    /// Starts `bin` scraping `target`'s `/metrics` every second.
    pub fn start(bin: &str, target: SocketAddr) -> Prometheus {
        Prometheus::start_at(bin, target, free_addr())
    }

    /// Starts `bin` on `addr` scraping `target`'s `/metrics` every second.
    pub fn start_at(bin: &str, target: SocketAddr, addr: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        // scrape_timeout may not exceed scrape_interval (its default, 10 s, would).
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: switchyard\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs");
        Prometheus { addr, child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits for `/-/ready`; fails early, with the log, when the process has exited.
    pub async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if try_get(&url).await.is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>` → the answer's `data`, or the whole answer as the error.
    pub async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let url = format!("http://{}/api/v1/{path_and_query}", self.addr);
        let (status, body) = try_get(&url)
            .await
            .ok_or_else(|| format!("no answer from {url}"))?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json["data"].clone())
    }

    /// An instant query's samples as (labels, value).
    pub async fn query(
        &self,
        promql: &str,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> {
        let data = self.api(&format!("query?query={}", encode(promql))).await?;
        let result = data["result"]
            .as_array()
            .ok_or_else(|| format!("not a vector: {data}"))?;
        Ok(result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// Grafana's `label_values(selector, label)` (or `label_values(label)`) through the
    /// label-values API, which is what Grafana itself calls.
    pub async fn label_values(&self, call: &str) -> Result<Vec<String>, String> {
        let args = call
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("not a label_values() call: {call}"))?;
        let (selector, label) = match args.rsplit_once(',') {
            Some((s, l)) => (Some(s.trim()), l.trim()),
            None => (None, args.trim()),
        };
        let mut path = format!("label/{label}/values");
        if let Some(s) = selector {
            path.push_str(&format!("?match[]={}", encode(s)));
        }
        let data = self.api(&path).await?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET that reports a refused connection instead of panicking (Prometheus starting up).
pub async fn try_get(url: &str) -> Option<(u16, String)> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes a query-string value (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// The binary, or `None` when it is absent and not required: the caller says what was
    /// not checked and passes. Panics when `SWITCHYARD_REQUIRE_PROMETHEUS` is set.
    pub fn required_binary() -> Option<&'static str> {
        let bin = Prometheus::binary();
        assert!(
            bin.is_some() || std::env::var_os("SWITCHYARD_REQUIRE_PROMETHEUS").is_none(),
            "prometheus is required (SWITCHYARD_REQUIRE_PROMETHEUS is set; Debian: apt-get install prometheus)"
        );
        bin
    }

    /// Stops it at once (a Prometheus that goes away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
