//! The command line: `run`, `check`, `route`, `ready`, `demo`, `ctl` (its verbs are in
//! [`crate::ctl`]), and `completions` and `manpage`, generated from the same types.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{self, Config};
use crate::router::{RequestView, RoutingTable, decide};

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
}

/// The flags of the commands that serve traffic (`run`, `demo`): the others neither start
/// workers nor write logs worth a format.
#[derive(Debug, Args)]
pub struct Serving {
    /// Worker threads, each with its own runtime and listener (default: one per core).
    #[arg(long, env = "SWITCHYARD_WORKERS")]
    pub workers: Option<usize>,
    /// Log format on stderr (logs and the access log).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
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
        /// The config file.
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
        #[command(flatten)]
        serving: Serving,
        /// Take the listening sockets and the live state (weights, active pools, drains,
        /// rollout progress) over from the instance running on `server.takeover_socket`
        /// (default: the config file's path + `.takeover.sock`), which then stops accepting,
        /// finishes its requests and exits 0. Without one, start normally.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate the config and print the routing table; exit 1 on any error.
    ///
    /// The table gives each pool's weight, its share in percent and its buckets, and warns when
    /// a service's weights do not add up to 100 or 10000.
    Check {
        /// The config file.
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
    },
    /// Explain the routing decision for a request.
    Route {
        /// The config file.
        #[arg(
            long,
            env = "SWITCHYARD_CONFIG",
            default_value = "config/switchyard.toml"
        )]
        config: PathBuf,
        /// The request's Host (without it, only routes without `host` match).
        #[arg(long)]
        host: Option<String>,
        /// The request's path.
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
        /// The config file.
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
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        #[command(flatten)]
        serving: Serving,
    },
    /// Read and change a running switchyard through its admin API; exit 0 done, 1 refused,
    /// 2 admin unreachable.
    Ctl(crate::ctl::CtlArgs),
    /// Print the shell completion script for SHELL.
    ///
    /// bash: `switchyard completions bash > /etc/bash_completion.d/switchyard`; zsh: into a
    /// directory of `$fpath` as `_switchyard`; fish: `switchyard completions fish >
    /// ~/.config/fish/completions/switchyard.fish`.
    Completions {
        /// The shell the script is for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one per command with --dir.
    ///
    /// `switchyard manpage > switchyard.1 && man ./switchyard.1`; `switchyard manpage --dir
    /// /usr/local/share/man/man1` installs a page for every command.
    Manpage {
        /// Write `switchyard.1` and a page per command (`switchyard-run.1`, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

// === impl Command ===

impl Command {
    /// `--workers` and `--log-format`, for the commands that have them; defaults otherwise.
    pub fn serving(&self) -> (Option<usize>, LogFormat) {
        match self {
            Command::Run { serving, .. } | Command::Demo { serving, .. } => {
                (serving.workers, serving.log_format)
            }
            _ => (None, LogFormat::Text),
        }
    }
}

/// `switchyard completions SHELL`: the script for that shell.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "switchyard", &mut out);
    out
}

/// `switchyard manpage`: the page of `switchyard` itself, in roff.
pub fn manpage() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

/// `switchyard manpage --dir DIR`: a page for `switchyard` and one for each command
/// (`switchyard-run.1`, `switchyard-ctl-status.1`, ...), written into `dir`.
pub fn write_manpages(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
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
            "{}: cannot read config file: no such file\n\
             hint: name the file with --config PATH or the SWITCHYARD_CONFIG environment \
             variable (the default is config/switchyard.toml, relative to the current \
             directory); `switchyard demo` needs no file\n",
            path.display()
        ));
    }
    let config = config::load(path).map_err(|e| e.to_string())?;
    // The loader reads the file and the pools' CA bundles, not the listener's certificates;
    // `check` and `run` also prove those load, so a broken pair is reported before traffic
    // depends on it. Building the table (no I/O) checks the pools' TLS setup.
    RoutingTable::validate(&config).map_err(|e| format!("{}: {e}\n", path.display()))?;
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
    let mut warnings = Vec::new();
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
                    let _ = write!(
                        out,
                        "  weight {w} ({}, buckets {start}..{})",
                        share(w, total),
                        start + w - 1
                    );
                } else {
                    let _ = write!(out, "  weight 0 (0%)");
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
        if let Some(w) = odd_total(name, svc) {
            warnings.push(w);
        }
    }
    for w in config.warnings.iter().chain(&warnings) {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// A warning for weights that do not add up to 100 or 10000, the totals that read as percent
/// or basis points: `stable = 90, canary = 5` gives the canary 5.26%, not 5%. Not for a
/// service whose weight is all on one pool, where the total changes nothing.
fn odd_total(name: &str, svc: &config::Service) -> Option<String> {
    let total = svc.weight_total();
    let weighted = svc.weights.values().filter(|w| **w > 0).count();
    if weighted < 2 || total == 100 || total == 10_000 {
        return None;
    }
    let shares: Vec<String> = svc
        .weights
        .iter()
        .map(|(pool, w)| format!("{pool} {}", share(u64::from(*w), total)))
        .collect();
    Some(format!(
        "services.{name}.weights add up to {total}, not 100 or 10000: each pool gets its weight's \
         part of {total} ({})",
        shares.join(", ")
    ))
}

/// `part` of `total` in percent, with at most two decimals: `95%`, `5.26%`, `33.33%`; a share
/// too small to show is `<0.01%`, never `0%`.
fn share(part: u64, total: u64) -> String {
    if total == 0 {
        return "0%".to_string();
    }
    let hundredths = (u128::from(part) * 10_000 + u128::from(total) / 2) / u128::from(total);
    if hundredths == 0 && part > 0 {
        return "<0.01%".to_string();
    }
    let (whole, frac) = (hundredths / 100, hundredths % 100);
    match frac {
        0 => format!("{whole}%"),
        f if f % 10 == 0 => format!("{whole}.{}%", f / 10),
        f => format!("{whole}.{f:02}%"),
    }
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
    let table = RoutingTable::offline(config)?;
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
