//! Raw → model: applies the documented defaults, checks every rule and reference, collects every problem.

mod pool;
mod sections;
mod service;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;

use super::diagnostic::{ConfigErrors, Diagnostic, KeyPath};
use super::duration::parse_duration;
use super::locate::Source;
use super::model::{Admin, CertPair, Config, HostMatch, Route, Secret, Server, Tls};
use super::raw::{RawAdmin, RawConfig, RawRoute, RawServer, RawServerTls};

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
const DEFAULT_POOL_HEADER: &str = "x-switchyard-pool";
const DEFAULT_MAX_HEADER_BYTES: i64 = 65536;
/// hyper refuses a read buffer smaller than this (`max_buf_size` asserts on it).
const MIN_HEADER_BYTES: i64 = 8192;
/// Beyond 1 MiB a request head is abuse, not a use case; it also bounds per-connection memory.
const MAX_HEADER_BYTES: i64 = 1 << 20;

/// The longest path a Unix socket can be bound at (Linux's `sun_path`, less its NUL).
const MAX_UNIX_PATH: usize = 107;

/// Checks `raw` and builds the model; `Err` holds every problem found, in file order of checking.
pub(crate) fn validate(
    raw: RawConfig,
    file: &Path,
    source: &Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut ck = Checker {
        file,
        source,
        diagnostics: Vec::new(),
        warnings: Vec::new(),
    };
    let dir = file.parent().unwrap_or(Path::new(""));
    let server = ck.server(raw.server.unwrap_or_default(), file);
    let admin = ck.admin(raw.admin.unwrap_or_default(), env);
    let routes = ck.routes(&raw.routes, &raw.services);
    let cluster = raw
        .cluster
        .map(|c| sections::cluster(&mut ck, &KeyPath::root().key("cluster"), c, env, dir));
    let mut services = IndexMap::with_capacity(raw.services.len());
    for (name, raw_service) in raw.services {
        if let Some(built) = service::service(&mut ck, &name, raw_service, dir) {
            services.insert(name, built);
        }
    }
    if !ck.diagnostics.is_empty() {
        return Err(ConfigErrors(ck.diagnostics));
    }
    Ok(Config {
        path: file.to_path_buf(),
        server,
        admin,
        routes,
        services,
        warnings: ck.warnings,
        cluster: cluster.flatten(),
    })
}

/// Collects diagnostics while the model is built. Checks that fail still return a placeholder
/// value so that checking goes on; the placeholder is never used, because any diagnostic
/// turns the result into `Err`.
pub(crate) struct Checker<'a> {
    file: &'a Path,
    source: &'a Source<'a>,
    diagnostics: Vec<Diagnostic>,
    pub(crate) warnings: Vec<String>,
}

impl Checker<'_> {
    pub(crate) fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        let location = self.source.locate(path);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: location.map(|(line, _)| line),
            col: location.map(|(_, col)| col),
            key_path: path.to_string(),
            message: message.into(),
        });
    }

    /// `value`, or a "missing" diagnostic (pointing at the enclosing table) and `None`.
    pub(crate) fn required<T>(&mut self, path: &KeyPath, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.error(path, "required key is missing");
        }
        value
    }

    /// Parses a duration, or `default` when absent. `positive`: 0 is an error.
    pub(crate) fn duration(
        &mut self,
        path: &KeyPath,
        raw: Option<&str>,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(raw) = raw else {
            return default;
        };
        match parse_duration(raw) {
            Ok(d) if positive && d.is_zero() => {
                self.error(path, "must be greater than 0s");
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    /// An integer key within `range`, or `default` when absent.
    pub(crate) fn int(
        &mut self,
        path: &KeyPath,
        raw: Option<i64>,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> i64 {
        let value = raw.unwrap_or(default);
        if !range.contains(&value) {
            // Upper bounds that only guard the integer type are not worth mentioning.
            let message = if *range.end() >= i64::from(u32::MAX) {
                format!("must be at least {}, not {value}", range.start())
            } else {
                format!(
                    "must be between {} and {}, not {value}",
                    range.start(),
                    range.end()
                )
            };
            self.error(path, message);
            return default;
        }
        value
    }

    pub(crate) fn socket_addr(
        &mut self,
        path: &KeyPath,
        raw: Option<&str>,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(raw) = raw else {
            return default;
        };
        match raw.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.error(
                    path,
                    format!(
                        "invalid listen address {raw:?}: expected ip:port, \
                         e.g. \"0.0.0.0:8080\" or \"[::1]:8080\""
                    ),
                );
                default
            }
        }
    }

    /// A header name, stored lower-case.
    pub(crate) fn header_name(&mut self, path: &KeyPath, raw: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(raw.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error(path, format!("invalid header name {raw:?}"));
                None
            }
        }
    }

    /// A cookie name: one or more RFC 9110 token characters.
    pub(crate) fn cookie_name(&mut self, path: &KeyPath, raw: &str) -> Option<String> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if raw.is_empty() || !raw.bytes().all(token) {
            self.error(
                path,
                format!("invalid cookie name {raw:?}: use letters, digits and !#$%&'*+-.^_`|~"),
            );
            return None;
        }
        Some(raw.to_owned())
    }

    /// A request path that must start with `/` (health checks, prepromotion checks).
    pub(crate) fn url_path(&mut self, path: &KeyPath, raw: &str) -> String {
        if !raw.starts_with('/') {
            self.error(path, format!("path {raw:?} must start with \"/\""));
        }
        raw.to_owned()
    }

    // === server and admin ===

    fn server(&mut self, raw: RawServer, file: &Path) -> Server {
        let dir = file.parent().unwrap_or(Path::new(""));
        let p = KeyPath::root().key("server");
        let listen = self.socket_addr(&p.key("listen"), raw.listen.as_deref(), DEFAULT_LISTEN);
        let timeout = |ck: &mut Self, key: &str, raw: Option<&String>, secs: u64| {
            ck.duration(
                &p.key(key),
                raw.map(String::as_str),
                Duration::from_secs(secs),
                true,
            )
        };
        let request_timeout = timeout(self, "request_timeout", raw.request_timeout.as_ref(), 30);
        let connect_timeout = timeout(self, "connect_timeout", raw.connect_timeout.as_ref(), 2);
        let header_read_timeout = timeout(
            self,
            "header_read_timeout",
            raw.header_read_timeout.as_ref(),
            10,
        );
        let idle_timeout = timeout(self, "idle_timeout", raw.idle_timeout.as_ref(), 60);
        let shutdown_grace = self.duration(
            &p.key("shutdown_grace"),
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(30),
            false,
        );

        let max_header_bytes = raw.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            self.error(
                &p.key("max_header_bytes"),
                format!(
                    "must be between {MIN_HEADER_BYTES} (hyper's smallest read buffer) \
                     and {MAX_HEADER_BYTES} (1 MiB), not {max_header_bytes}"
                ),
            );
        }

        let pool_header = match raw.pool_header.as_deref().unwrap_or(DEFAULT_POOL_HEADER) {
            "" => None,
            name => self.header_name(&p.key("pool_header"), name),
        };

        let max_connections = raw.max_connections.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_connections) {
            self.error(
                &p.key("max_connections"),
                format!("must be between 1 and 1000000, not {max_connections}"),
            );
        }
        let max_concurrent_streams = raw.max_concurrent_streams.unwrap_or(256);
        if !(1..=10_000).contains(&max_concurrent_streams) {
            self.error(
                &p.key("max_concurrent_streams"),
                format!("must be between 1 and 10000, not {max_concurrent_streams}"),
            );
        }

        let takeover_socket =
            self.takeover_socket(&p.key("takeover_socket"), raw.takeover_socket, file);
        let tls = raw.tls.map(|tls| self.server_tls(&p.key("tls"), tls, dir));

        Server {
            listen,
            request_timeout,
            connect_timeout,
            header_read_timeout,
            idle_timeout,
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(0),
            shutdown_grace,
            pool_header,
            max_connections: usize::try_from(max_connections).unwrap_or(1),
            max_concurrent_streams: u32::try_from(max_concurrent_streams).unwrap_or(1),
            takeover_socket,
            tls,
        }
    }

    /// `server.takeover_socket`, resolved against the config file's directory; by default
    /// the config file's path with `.takeover.sock` added, so each config file has its own
    /// and a directory writable for `admin.persist` holds it.
    fn takeover_socket(
        &mut self,
        p: &KeyPath,
        raw: Option<String>,
        file: &Path,
    ) -> std::path::PathBuf {
        let dir = file.parent().unwrap_or(Path::new(""));
        let path = match raw {
            Some(raw) if raw.is_empty() => {
                self.error(p, "must not be empty");
                return std::path::PathBuf::new();
            }
            Some(raw) => dir.join(raw),
            None => {
                let mut name = file.as_os_str().to_os_string();
                name.push(".takeover.sock");
                std::path::PathBuf::from(name)
            }
        };
        // sun_path holds 108 bytes, the last one a NUL.
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            self.error(
                p,
                format!(
                    "the socket path {} is {len} bytes long; a Unix socket path holds at most {MAX_UNIX_PATH} \
                     (set server.takeover_socket to a shorter path)",
                    path.display()
                ),
            );
        }
        path
    }

    fn server_tls(&mut self, p: &KeyPath, raw: RawServerTls, dir: &Path) -> Tls {
        let listen = match self.required(&p.key("listen"), raw.listen.as_deref()) {
            Some(listen) => self.socket_addr(&p.key("listen"), Some(listen), DEFAULT_LISTEN),
            None => DEFAULT_LISTEN,
        };
        let mut certs = Vec::new();
        match raw.certs {
            None => {
                self.required(&p.key("certs"), None::<()>);
            }
            Some(list) if list.is_empty() => {
                self.error(
                    &p.key("certs"),
                    "at least one { cert, key } pair is required",
                );
            }
            Some(list) => {
                for (i, pair) in list.into_iter().enumerate() {
                    let pp = p.key("certs").index(i);
                    let cert = self.file_path(&pp.key("cert"), pair.cert, dir);
                    let key = self.file_path(&pp.key("key"), pair.key, dir);
                    if let (Some(cert), Some(key)) = (cert, key) {
                        certs.push(CertPair { cert, key });
                    }
                }
            }
        }
        let handshake_timeout = self.duration(
            &p.key("handshake_timeout"),
            raw.handshake_timeout.as_deref(),
            Duration::from_secs(10),
            true,
        );
        Tls {
            listen,
            certs,
            handshake_timeout,
        }
    }

    /// A required, non-empty file path, resolved against the config file's directory.
    /// The file is not opened here: TLS setup reads (and reloads) it.
    pub(crate) fn file_path(
        &mut self,
        path: &KeyPath,
        raw: Option<String>,
        dir: &Path,
    ) -> Option<std::path::PathBuf> {
        let raw = self.required(path, raw)?;
        if raw.is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(dir.join(raw))
    }

    fn admin(&mut self, raw: RawAdmin, env: &dyn Fn(&str) -> Option<String>) -> Admin {
        let p = KeyPath::root().key("admin");
        let listen = self.socket_addr(
            &p.key("listen"),
            raw.listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
        );
        let configured = raw.token.is_some() || raw.token_env.is_some();
        // Messages name the variable, never the token: config errors end up in logs and in
        // /admin/status.
        let token = match (raw.token, raw.token_env) {
            (Some(_), Some(_)) => {
                self.error(
                    &p.key("token_env"),
                    "set either token or token_env, not both",
                );
                None
            }
            (Some(token), None) if token.is_empty() => {
                self.error(&p.key("token"), "must not be empty");
                None
            }
            // A token with surrounding whitespace (a trailing newline from `echo` or a file)
            // could never be sent back in a header: it would match nothing.
            (Some(token), None) if token.trim() != token => {
                self.error(
                    &p.key("token"),
                    "has leading or trailing whitespace (a newline?), which no Authorization header can carry",
                );
                None
            }
            (Some(token), None) => Some(Secret(token)),
            (None, Some(var)) => match env(&var) {
                Some(value) if !value.is_empty() && value.trim() != value => {
                    self.error(
                        &p.key("token_env"),
                        format!(
                            "environment variable {var:?} has leading or trailing whitespace \
                             (a newline?), which no Authorization header can carry"
                        ),
                    );
                    None
                }
                Some(value) if !value.is_empty() => Some(Secret(value)),
                _ => {
                    self.error(
                        &p.key("token_env"),
                        format!("environment variable {var:?} is not set or is empty"),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if !configured && !listen.ip().is_loopback() {
            self.error(
                &p.key("listen"),
                format!(
                    "admin API on non-loopback address {listen} needs a token \
                     (set admin.token or admin.token_env)"
                ),
            );
        }
        let allowed_hosts = raw
            .allowed_hosts
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, name)| self.admin_host(&p.key("allowed_hosts").index(i), name))
            .collect();
        Admin {
            listen,
            token,
            persist: raw.persist.unwrap_or(true),
            allowed_hosts,
        }
    }

    /// A name in `admin.allowed_hosts`: a bare DNS name, compared case-insensitively with
    /// the Host of each admin request, whatever its port.
    fn admin_host(&mut self, path: &KeyPath, raw: &str) -> Option<String> {
        let problem = if raw.is_empty() {
            Some("must not be empty".to_string())
        } else if raw.contains("://") || raw.contains('/') {
            Some(format!("{raw:?}: give a host name, not a URL"))
        } else if raw.contains(':') {
            Some(format!(
                "{raw:?}: give a host name without a port (any port is accepted)"
            ))
        } else if raw.contains('*') {
            Some(format!(
                "{raw:?}: wildcards are not supported; list each name"
            ))
        } else if raw.starts_with(['.', '-'])
            || !raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            Some(format!(
                "{raw:?} is not a host name (letters, digits, '-', '_' and '.')"
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(path, message);
                None
            }
            None => Some(raw.trim_end_matches('.').to_ascii_lowercase()),
        }
    }

    // === routes ===

    fn routes<S>(&mut self, raw: &[RawRoute], services: &IndexMap<String, S>) -> Vec<Route> {
        let p = KeyPath::root().key("routes");
        if raw.is_empty() {
            self.error(&p, "at least one [[routes]] entry is required");
        }
        let mut routes = Vec::with_capacity(raw.len());
        for (i, route) in raw.iter().enumerate() {
            let rp = p.index(i);
            let host = route
                .host
                .as_deref()
                .and_then(|host| self.host(&rp.key("host"), host));
            let path_prefix =
                self.path_prefix(&rp.key("path_prefix"), route.path_prefix.as_deref());
            let service = self
                .required(&rp.key("service"), route.service.clone())
                .unwrap_or_default();
            if route.service.is_some() && !services.contains_key(&service) {
                let known = services.keys().map(String::as_str).collect::<Vec<_>>();
                self.error(
                    &rp.key("service"),
                    format!(
                        "unknown service {service:?} (services: {})",
                        known.join(", ")
                    ),
                );
            }
            routes.push(Route {
                host,
                path_prefix,
                service,
            });
        }
        routes
    }

    fn path_prefix(&mut self, path: &KeyPath, raw: Option<&str>) -> String {
        let raw = raw.unwrap_or("/");
        if !raw.starts_with('/') {
            self.error(path, format!("path_prefix {raw:?} must start with \"/\""));
        }
        // Prefixes match whole segments, so "/api/" and "/api" mean the same; keep one spelling.
        let trimmed = raw.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }
    }

    fn host(&mut self, path: &KeyPath, raw: &str) -> Option<HostMatch> {
        let lower = raw.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let problem = if name.contains('*') {
            Some("a wildcard is only allowed as a leading \"*.\", e.g. \"*.example.com\"")
        } else if name.contains(':') {
            Some("a port is not allowed (hosts are compared without the port)")
        } else if name.is_empty() || name.split('.').any(str::is_empty) {
            Some("empty label")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            Some("use letters, digits, '-' and '.' (punycode for non-ASCII names)")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(path, format!("invalid host {raw:?}: {problem}"));
            return None;
        }
        Some(if wildcard {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        })
    }
}
