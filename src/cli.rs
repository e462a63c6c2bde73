//! The command line: `run`, `check`, `route`, `ready`, `demo`, and `ctl` (its verbs are in
//! [`crate::ctl`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{self, Config};
use crate::router::{RequestView, RoutingTable, decide};
use crate::upstream::Registry;

/// `--version`: the version and the parts compiled in. Every build has every one (there are
/// no cargo features to choose), so a bug report or a script can read what a binary can do.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (features: fleet, tls, http2, metrics, dashboard)"
);

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version = VERSION,
    about = "L7 reverse proxy with deployment-strategy traffic splitting"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads (default: one per core).
    #[arg(long, global = true, env = "SWITCHYARD_WORKERS")]
    pub workers: Option<usize>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic.
    Run {
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
    },
    /// Validate the config and print the routing table; exit 1 on any error.
    Check {
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
    },
    /// Explain the routing decision for a request.
    Route {
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value = "/")]
        path: String,
        /// `Name: value`; repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// `name=value`; repeatable.
        #[arg(long = "cookie")]
        cookies: Vec<String>,
    },
    /// Ask a running switchyard whether it is ready (`GET /readyz` on its admin listener);
    /// exit 0 when it is. For container health checks, where there is no curl.
    Ready {
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Two built-in demo apps (v1, v2) behind the demo config, with every strategy.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
    /// Read and change a running switchyard through its admin API; exit 0 done, 1 refused,
    /// 2 admin unreachable.
    Ctl(crate::ctl::CtlArgs),
}

/// Whether the command line asks for `ctl`, read leniently from a command line that did not
/// parse: `ctl` keeps exit code 2 for "admin unreachable", so its usage errors exit 1.
pub fn is_ctl<I, T>(args: I) -> bool
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::CommandFactory as _;
    Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .is_ok_and(|m| m.subcommand_name() == Some("ctl"))
}

/// Loads a config or returns its diagnostics as the error text (one line per problem).
pub fn load(path: &std::path::Path) -> Result<Config, String> {
    if !path.exists() {
        // The usual first stumble: running outside the repository with the default path.
        return Err(format!(
            "{}: cannot read config file: no such file
             hint: name the file with --config PATH or the SWITCHYARD_CONFIG environment              variable (the default is config/switchyard.toml, relative to the current              directory); `switchyard demo` needs no file
",
            path.display()
        ));
    }
    let config = config::load(path).map_err(|e| e.to_string())?;
    // The loader does no I/O beyond the file itself; `check` and `run` also prove the
    // certificates load, so a broken pair is reported before traffic depends on it.
    // Building the table opens the pools' CA files: a bad one is reported here too.
    RoutingTable::build(&config, &mut Registry::new(), 0)
        .map_err(|e| format!("{}: {e}\n", path.display()))?;
    if let Some(tls) = &config.server.tls {
        crate::tls::load(&tls.certs).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {e}\n", path.display()))
                .collect::<String>()
        })?;
    }
    Ok(config)
}

/// `switchyard check`: the routing table as text.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config {} is valid", config.path.display());
    let _ = writeln!(
        out,
        "listen {}  admin {}",
        config.server.listen, config.admin.listen
    );
    let _ = writeln!(out, "routes:");
    for (i, r) in config.routes.iter().enumerate() {
        let host = match &r.host {
            None => "*".to_string(),
            Some(config::HostMatch::Exact(h)) => h.clone(),
            Some(config::HostMatch::Suffix(s)) => format!("*{s}"),
        };
        let _ = writeln!(
            out,
            "  [{i}] host={host} path_prefix={} -> {}",
            r.path_prefix, r.service
        );
    }
    let _ = writeln!(out, "services:");
    for (name, svc) in &config.services {
        let _ = write!(out, "  {name}: strategy={}", svc.strategy.as_str());
        if let Some(active) = &svc.active {
            let _ = write!(out, " active={active}");
        }
        let _ = writeln!(out);
        let total = svc.weight_total();
        let mut start = 0u64;
        for pool_name in svc.pool_order() {
            let Some(pool) = svc.pools.get(pool_name) else {
                continue;
            };
            let _ = write!(out, "    pool {pool_name}: {}", pool.endpoints.join(", "));
            if total > 0 {
                let w = u64::from(svc.weights.get(pool_name).copied().unwrap_or(0));
                if w > 0 {
                    let _ = write!(out, "  weight {w} (buckets {start}..{})", start + w - 1);
                } else {
                    let _ = write!(out, "  weight 0");
                }
                start += w;
            }
            let _ = writeln!(out);
        }
        for (i, o) in svc.overrides.iter().enumerate() {
            let src = match &o.source {
                config::KeySource::Header(h) => format!("header {h}"),
                config::KeySource::Cookie(c) => format!("cookie {c}"),
            };
            let m = match &o.matcher {
                config::ValueMatch::Equals(v) => format!("equals {v:?}"),
                config::ValueMatch::Matches(re) => format!("matches /{}/", re.as_str()),
                config::ValueMatch::Present => "present".to_string(),
            };
            let _ = writeln!(out, "    override[{i}]: {src} {m} -> {}", o.pool);
        }
        if let Some(k) = &svc.hash_key {
            let src = match k {
                config::KeySource::Header(h) => format!("header {h}"),
                config::KeySource::Cookie(c) => format!("cookie {c}"),
            };
            let _ = writeln!(
                out,
                "    buckets: md5({:?} + {src}) % {total}",
                svc.hash_salt
            );
        }
    }
    for w in &config.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// `switchyard route`: the decision for one request, first line
/// `service=<svc> pool=<pool> reason=<reason> [bucket=<n>]`.
pub fn explain(
    config: &Config,
    host: Option<&str>,
    path: &str,
    headers: &[String],
    cookies: &[String],
) -> anyhow::Result<String> {
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header {h:?}: invalid header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("--header {h:?}: invalid header value"))?;
        map.append(name, value);
    }
    if !cookies.is_empty() {
        let joined = cookies.join("; ");
        let value = HeaderValue::from_str(&joined).context("--cookie: invalid cookie value")?;
        map.append(http::header::COOKIE, value);
    }
    let mut registry = Registry::new();
    let table = RoutingTable::build(config, &mut registry, 0)?;
    let view = RequestView {
        host,
        path,
        headers: &map,
    };
    // Offline there is no health information: every pool counts as available.
    let Ok(d) = decide(&table, &view, &mut rand::rng(), |_| true) else {
        anyhow::bail!(
            "no route matches host {host:?} path {path:?} (the proxy answers 404 no_route)"
        );
    };
    let svc = table.service(d.service).context("decided service exists")?;
    let pool = svc.pool(d.pool).context("decided pool exists")?;
    let mut out = format!(
        "service={} pool={} reason={}",
        svc.name,
        pool.name,
        d.reason.as_str()
    );
    if let Some(b) = d.bucket {
        let _ = write!(out, " bucket={b}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "endpoints: {}",
        pool.endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if d.set_affinity.is_some()
        && let Some(aff) = &svc.affinity
    {
        let _ = writeln!(out, "set-cookie: {}={}", aff.cookie, d.bucket.unwrap_or(0));
    }
    Ok(out)
}

/// `switchyard ready`: `GET /readyz` on the admin listener named by the config (an
/// unspecified address such as `0.0.0.0` is asked on loopback). `Ok` when it answers 200.
pub fn ready(config: &Config, timeout: std::time::Duration) -> Result<(), String> {
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let ask = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                _,
                http_body_util::Empty<bytes::Bytes>,
            >(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = http::Request::get("/readyz")
                .header(http::header::HOST, addr.to_string())
                .body(http_body_util::Empty::new())
                .map_err(std::io::Error::other)?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(resp.status())
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(status)) if status == http::StatusCode::OK => Ok(()),
            Ok(Ok(status)) => Err(format!("http://{addr}/readyz answered {status}")),
            Ok(Err(e)) => Err(format!("http://{addr}/readyz: {e}")),
            Err(_) => Err(format!(
                "http://{addr}/readyz: no answer within {timeout:?}"
            )),
        }
    })
}
