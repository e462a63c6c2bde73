//! A service's optional sections: `health`, `outlier`, `rollout` and `mirror`.

use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Checker;
use super::service::Names;
use crate::config::diagnostic::KeyPath;
use crate::config::model::{
    Check, Cluster, EtcdAuth, EtcdTls, Health, HookFormat, HookMoment, Mirror, Outlier, Prometheus,
    Rollout, Secret, Webhook,
};
use crate::config::raw::{
    RawCheck, RawCluster, RawHealth, RawMirror, RawOutlier, RawRollout, RawWebhook,
};

const DEFAULT_STEPS: [u32; 5] = [5, 10, 25, 50, 100];
const DEFAULT_CONFIDENCE: f64 = 0.99;
const MAX_CONFIDENCE: f64 = 0.9999;

pub(super) fn health(ck: &mut Checker<'_>, p: &KeyPath, raw: RawHealth) -> Health {
    let path = ck.url_path(&p.key("path"), raw.path.as_deref().unwrap_or("/health"));
    let interval = ck.duration(
        &p.key("interval"),
        raw.interval.as_deref(),
        Duration::from_secs(5),
        true,
    );
    let timeout = ck.duration(
        &p.key("timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(1),
        true,
    );
    // A timeout longer than the interval is fine (as in Envoy, HAProxy and Kubernetes):
    // an endpoint's next probe starts an interval after the previous one ended, so probes
    // never overlap.
    let unhealthy = ck.int(
        &p.key("unhealthy_threshold"),
        raw.unhealthy_threshold,
        3,
        1..=i64::from(u32::MAX),
    );
    let healthy = ck.int(
        &p.key("healthy_threshold"),
        raw.healthy_threshold,
        1,
        1..=i64::from(u32::MAX),
    );
    Health {
        path,
        interval,
        timeout,
        unhealthy_threshold: u32::try_from(unhealthy).unwrap_or(3),
        healthy_threshold: u32::try_from(healthy).unwrap_or(1),
    }
}

pub(super) fn outlier(ck: &mut Checker<'_>, p: &KeyPath, raw: RawOutlier) -> Outlier {
    let failures = ck.int(
        &p.key("consecutive_failures"),
        raw.consecutive_failures,
        5,
        1..=i64::from(u32::MAX),
    );
    Outlier {
        consecutive_failures: u32::try_from(failures).unwrap_or(5),
        ejection: ck.duration(
            &p.key("ejection"),
            raw.ejection.as_deref(),
            Duration::from_secs(30),
            false,
        ),
    }
}

pub(super) fn rollout(
    ck: &mut Checker<'_>,
    service: &KeyPath,
    raw: RawRollout,
    names: &Names<'_>,
    weights: &IndexMap<String, u32>,
) -> Option<Rollout> {
    let p = service.key("rollout");
    let baseline = ck
        .required(&p.key("baseline"), raw.baseline)
        .and_then(|b| names.check(ck, &p.key("baseline"), b));
    let canary = ck
        .required(&p.key("canary"), raw.canary)
        .and_then(|c| names.check(ck, &p.key("canary"), c));
    if let (Some(b), Some(c)) = (&baseline, &canary) {
        if b == c {
            ck.error(
                &p.key("canary"),
                format!("must differ from baseline (both {c:?})"),
            );
        }
        // A rollout moves weight only between these two, so another live pool would skew it.
        let others = weights
            .iter()
            .filter(|(pool, _)| *pool != b && *pool != c && b != c);
        for (pool, weight) in others {
            if *weight > 0 {
                ck.error(
                    &service.key("weights").key(pool),
                    format!(
                        "pool {pool:?} has weight {weight}, but a rollout weights only \
                         baseline {b:?} and canary {c:?}; set it to 0"
                    ),
                );
            }
        }
    }

    let steps = match raw.steps {
        None => DEFAULT_STEPS.to_vec(),
        Some(list) if list.is_empty() => {
            ck.error(&p.key("steps"), "at least one step is required");
            Vec::new()
        }
        Some(list) => {
            let mut steps = Vec::with_capacity(list.len());
            let mut previous = 0;
            for (i, step) in list.into_iter().enumerate() {
                let sp = p.key("steps").index(i);
                if !(1..=100).contains(&step) {
                    ck.error(
                        &sp,
                        format!("a step is a percentage from 1 to 100, not {step}"),
                    );
                } else if step <= previous {
                    ck.error(
                        &sp,
                        format!("steps must increase strictly ({step} after {previous})"),
                    );
                }
                previous = previous.max(step);
                steps.push(u32::try_from(step).unwrap_or(0));
            }
            steps
        }
    };
    let interval = ck.duration(
        &p.key("interval"),
        raw.interval.as_deref(),
        Duration::from_secs(60),
        true,
    );
    let min_requests = ck.int(&p.key("min_requests"), raw.min_requests, 50, 0..=i64::MAX);
    let mut ratio = |key: &str, value: Option<f64>| {
        let value = value?;
        if !(0.0..=1.0).contains(&value) {
            ck.error(
                &p.key(key),
                format!("a ratio from 0.0 to 1.0 (0.05 = 5%), not {value}"),
            );
        }
        Some(value)
    };
    let max_error_rate = ratio("max_error_rate", raw.max_error_rate);
    let max_error_rate_increase = ratio("max_error_rate_increase", raw.max_error_rate_increase);
    let max_p99_increase = raw
        .max_p99_increase
        .as_deref()
        .map(|d| ck.duration(&p.key("max_p99_increase"), Some(d), Duration::ZERO, false));
    let max_p99 = raw
        .max_p99
        .as_deref()
        .map(|d| ck.duration(&p.key("max_p99"), Some(d), Duration::ZERO, true));
    let mut pause_at = Vec::new();
    for (i, at) in raw.pause_at.unwrap_or_default().into_iter().enumerate() {
        let listed = u32::try_from(at).ok().filter(|at| steps.contains(at));
        match listed {
            Some(at) if !pause_at.contains(&at) => pause_at.push(at),
            Some(at) => ck.error(&p.key("pause_at").index(i), format!("{at} is listed twice")),
            None => ck.error(
                &p.key("pause_at").index(i),
                format!("{at} is not one of the steps {steps:?}"),
            ),
        }
    }
    let webhooks = raw
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, hook)| webhook(ck, &p.key("webhooks").index(i), hook))
        .collect::<Vec<_>>();
    for (i, hook) in webhooks.iter().enumerate() {
        if webhooks[..i].iter().any(|h| h.name == hook.name) {
            ck.error(
                &p.key("webhooks").index(i).key("name"),
                format!("webhook name {:?} is used twice", hook.name),
            );
        }
    }
    let (prometheus, checks) = checks(ck, &p, raw.prometheus, raw.checks.unwrap_or_default());
    let confidence = match raw.confidence {
        None => DEFAULT_CONFIDENCE,
        // 1.0 would never abort; below 0.5 an abort is likelier chance than not.
        Some(c) if (0.5..=MAX_CONFIDENCE).contains(&c) => c,
        Some(c) => {
            ck.error(
                &p.key("confidence"),
                format!("a confidence from 0.5 to {MAX_CONFIDENCE} (0.99 = 99%), not {c}"),
            );
            DEFAULT_CONFIDENCE
        }
    };
    Some(Rollout {
        baseline: baseline?,
        canary: canary?,
        steps,
        interval,
        min_requests: u64::try_from(min_requests).unwrap_or(50),
        max_error_rate,
        max_error_rate_increase,
        max_p99_increase,
        max_p99,
        pause_at,
        webhooks,
        prometheus,
        checks,
        confidence,
        auto_start: raw.auto_start.unwrap_or(false),
    })
}

/// One `[[…rollout.webhooks]]`: a name, an http(s) url, a moment, a timeout, a format.
fn webhook(ck: &mut Checker<'_>, p: &KeyPath, raw: RawWebhook) -> Option<Webhook> {
    let name = ck.required(&p.key("name"), raw.name);
    if name.as_deref().is_some_and(str::is_empty) {
        ck.error(&p.key("name"), "must not be empty");
    }
    let url = ck.required(&p.key("url"), raw.url);
    let parts = url.as_deref().and_then(|url| {
        let split = split_url(url);
        if split.is_none() {
            ck.error(
                &p.key("url"),
                format!("{url:?} is not an http:// or https:// url with a host"),
            );
        }
        split
    });
    let on = ck.required(&p.key("on"), raw.on).and_then(|on| {
        let moment = HookMoment::ALL
            .iter()
            .find(|(n, _)| *n == on)
            .map(|(_, m)| *m);
        if moment.is_none() {
            let names: Vec<&str> = HookMoment::ALL.iter().map(|(n, _)| *n).collect();
            ck.error(
                &p.key("on"),
                format!("{on:?} is not one of {}", names.join(", ")),
            );
        }
        moment
    });
    let timeout = ck.duration(
        &p.key("timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(5),
        true,
    );
    let format = match raw.format.as_deref() {
        None | Some("json") => HookFormat::Json,
        Some("slack") => HookFormat::Slack,
        Some(other) => {
            ck.error(
                &p.key("format"),
                format!("{other:?} is not \"json\" or \"slack\""),
            );
            HookFormat::Json
        }
    };
    let (tls, authority, path) = parts?;
    Some(Webhook {
        name: name?,
        url: url?,
        authority,
        path,
        tls,
        on: on?,
        timeout,
        format,
    })
}

/// The rollout's `prometheus` and its `[[…rollout.checks]]`: checks need a Prometheus, and a
/// Prometheus without checks is never asked.
fn checks(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    url: Option<String>,
    raw: Vec<RawCheck>,
) -> (Option<Prometheus>, Vec<Check>) {
    let given = url.is_some();
    let prometheus = url.and_then(|url| match split_url(&url) {
        Some((tls, authority, path)) if !path.contains('?') => Some(Prometheus {
            base_path: path.trim_end_matches('/').to_string(),
            url,
            authority,
            tls,
        }),
        _ => {
            ck.error(
                &p.key("prometheus"),
                format!("{url:?} is not an http:// or https:// url with a host (and no query)"),
            );
            None
        }
    });
    let checks: Vec<Check> = raw
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| check(ck, &p.key("checks").index(i), c))
        .collect();
    for (i, c) in checks.iter().enumerate() {
        if checks[..i].iter().any(|o| o.name == c.name) {
            ck.error(
                &p.key("checks").index(i).key("name"),
                format!("check name {:?} is used twice", c.name),
            );
        }
    }
    // A bad url has its own diagnostic already.
    if !checks.is_empty() && !given {
        ck.error(
            &p.key("checks").index(0),
            "checks need `prometheus` (the url of its HTTP API) in the rollout section",
        );
    }
    (prometheus, checks)
}

/// One `[[…rollout.checks]]`: a name, a query, at least one of `min`/`max`, `failures`.
fn check(ck: &mut Checker<'_>, p: &KeyPath, raw: RawCheck) -> Option<Check> {
    let name = ck.required(&p.key("name"), raw.name);
    if name.as_deref().is_some_and(str::is_empty) {
        ck.error(&p.key("name"), "must not be empty");
    }
    let query = ck.required(&p.key("query"), raw.query);
    if query.as_deref().is_some_and(|q| q.trim().is_empty()) {
        ck.error(&p.key("query"), "must not be empty");
    }
    for (key, value) in [("min", raw.min), ("max", raw.max)] {
        if value.is_some_and(|v| !v.is_finite()) {
            ck.error(&p.key(key), "must be a finite number");
        }
    }
    match (raw.min, raw.max) {
        (None, None) => ck.error(p, "a check needs `min`, `max` or both"),
        (Some(min), Some(max)) if min > max => ck.error(
            &p.key("min"),
            format!("min {min} is above max {max}: no value could pass"),
        ),
        _ => {}
    }
    let failures = ck.int(&p.key("failures"), raw.failures, 3, 1..=1000);
    Some(Check {
        name: name?,
        query: query?,
        min: raw.min,
        max: raw.max,
        failures: u32::try_from(failures).unwrap_or(3),
    })
}

/// `http(s)://host[:port][/path]` → (tls, `host:port`, path); `None` for anything else.
fn split_url(url: &str) -> Option<(bool, String, String)> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return None,
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains(['@', ' ', '#']) {
        return None;
    }
    // A port after the host (an IPv6 host is in brackets, with colons of its own).
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !host.ends_with(':')
            && port.parse::<u16>().is_ok()
            && !port.is_empty()
            && (!host.contains(':') || host.ends_with(']'))
    });
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Some((tls, authority, path))
}

pub(super) fn mirror(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    raw: RawMirror,
    names: &Names<'_>,
) -> Option<Mirror> {
    let pool = ck
        .required(&p.key("pool"), raw.pool)
        .and_then(|pool| names.check(ck, &p.key("pool"), pool));
    let percent = ck.int(&p.key("percent"), raw.percent, 10, 0..=100);
    let max_body_bytes = ck.int(
        &p.key("max_body_bytes"),
        raw.max_body_bytes,
        65536,
        0..=i64::MAX,
    );
    Some(Mirror {
        pool: pool?,
        percent: u32::try_from(percent).unwrap_or(10),
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
    })
}

/// `[cluster]`: etcd endpoints, the fleet's prefix, this replica's name and the lease, and
/// how to reach etcd (TLS, credentials).
pub(super) fn cluster(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    raw: RawCluster,
    env: &dyn Fn(&str) -> Option<String>,
    dir: &Path,
) -> Option<Cluster> {
    let etcd = ck.required(&p.key("etcd"), raw.etcd);
    if let Some(list) = &etcd {
        if list.is_empty() {
            ck.error(&p.key("etcd"), "at least one etcd endpoint is required");
        }
        for (i, url) in list.iter().enumerate() {
            let ok = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/') && rest.contains(':'));
            if !ok {
                ck.error(
                    &p.key("etcd").index(i),
                    format!(
                        "invalid etcd endpoint {url:?}: expected http://host:port or https://host:port"
                    ),
                );
            }
        }
        // etcd-client sends one set of TLS options to every endpoint and refuses them for an
        // http:// one, so a mixed list could never connect.
        let https = |url: &String| url.starts_with("https://");
        if let Some(first) = list.first()
            && let Some(i) = list.iter().position(|url| https(url) != https(first))
        {
            ck.error(
                &p.key("etcd").index(i),
                "mixes http:// and https:// endpoints: use one scheme for all",
            );
        }
    }
    let tls_wanted = etcd
        .as_ref()
        .and_then(|list| list.first())
        .is_some_and(|url| url.starts_with("https://"));
    let auth = etcd_auth(ck, p, raw.username, raw.password_env, env);
    let tls = etcd_tls(ck, p, tls_wanted, (raw.ca, raw.cert, raw.key), dir);
    let prefix = ck.required(&p.key("prefix"), raw.prefix);
    if let Some(prefix) = &prefix
        && (!prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        ck.error(
            &p.key("prefix"),
            format!("invalid prefix {prefix:?}: a path like \"/switchyard/prod\" (no trailing /)"),
        );
    }
    let name = raw
        .name
        .or_else(|| env("HOSTNAME"))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !valid_name(&name) {
        ck.error(
            &p.key("name"),
            format!("invalid replica name {name:?}: use letters, digits, '-', '_' and '.'"),
        );
    }
    let lease_ttl = ck.duration(
        &p.key("lease_ttl"),
        raw.lease_ttl.as_deref(),
        Duration::from_secs(5),
        true,
    );
    if lease_ttl < Duration::from_secs(2) {
        ck.error(
            &p.key("lease_ttl"),
            "must be at least 2s (etcd keeps leases for at least that long)",
        );
    } else if lease_ttl > Duration::from_secs(60) {
        // It bounds every call to etcd too: a longer one would let a hung store hold admin
        // changes (and a replica's departure) that long.
        ck.error(
            &p.key("lease_ttl"),
            "must be at most 60s (it bounds every call to etcd, and how long a dead replica or leader lingers)",
        );
    }
    Some(Cluster {
        etcd: etcd?,
        prefix: prefix?,
        name,
        lease_ttl,
        auth: auth?,
        tls: tls?,
    })
}

/// `username` and `password_env`: both or neither. `Some(None)` is "no authentication";
/// `None` is an error already reported. Messages name the variable, never the password:
/// config errors end up in logs and in /admin/status.
fn etcd_auth(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    username: Option<String>,
    password_env: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Option<EtcdAuth>> {
    match (username, password_env) {
        (None, None) => Some(None),
        (Some(_), None) => {
            ck.error(
                &p.key("username"),
                "username needs password_env (the environment variable holding etcd's password)",
            );
            None
        }
        (None, Some(_)) => {
            ck.error(&p.key("password_env"), "password_env needs username");
            None
        }
        (Some(username), Some(var)) => {
            let username_ok = !username.is_empty() && username.trim() == username;
            if !username_ok {
                ck.error(
                    &p.key("username"),
                    "must not be empty or have leading or trailing whitespace",
                );
            }
            let password = match env(&var) {
                // etcd compares the password byte for byte: a trailing newline from `echo`
                // or a secret file would make every login fail with "authentication failed".
                Some(value) if !value.is_empty() && value.trim() != value => {
                    ck.error(
                        &p.key("password_env"),
                        format!(
                            "environment variable {var:?} has leading or trailing whitespace \
                             (a newline?), which etcd would refuse as a wrong password"
                        ),
                    );
                    None
                }
                Some(value) if !value.is_empty() => Some(Secret(value)),
                _ => {
                    ck.error(
                        &p.key("password_env"),
                        format!("environment variable {var:?} is not set or is empty"),
                    );
                    None
                }
            };
            let password = password?;
            username_ok.then_some(Some(EtcdAuth { username, password }))
        }
    }
}

/// `ca`, `cert` and `key`, read and parsed now. `Some(None)` is plain http:// endpoints;
/// `None` is an error already reported.
fn etcd_tls(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    tls_wanted: bool,
    (ca, cert, key): (Option<String>, Option<String>, Option<String>),
    dir: &Path,
) -> Option<Option<EtcdTls>> {
    if !tls_wanted {
        let mut fine = true;
        for (name, value) in [("ca", &ca), ("cert", &cert), ("key", &key)] {
            if value.is_some() {
                ck.error(
                    &p.key(name),
                    format!("{name} is for TLS to etcd: use https:// endpoints"),
                );
                fine = false;
            }
        }
        return fine.then_some(None);
    }
    let ca = match ca {
        None => Some(None),
        Some(raw) => ck
            .file_path(&p.key("ca"), Some(raw), dir)
            .and_then(|path| pem_file(ck, &p.key("ca"), &path))
            .filter(|pem| check_ca(ck, &p.key("ca"), pem))
            .map(Some),
    };
    let identity = match (cert, key) {
        (None, None) => Some(None),
        (Some(_), None) => {
            ck.error(
                &p.key("cert"),
                "cert needs key (the client certificate's key)",
            );
            None
        }
        (None, Some(_)) => {
            ck.error(&p.key("key"), "key needs cert (the client certificate)");
            None
        }
        (Some(cert), Some(key)) => {
            let cert = ck
                .file_path(&p.key("cert"), Some(cert), dir)
                .and_then(|path| pem_file(ck, &p.key("cert"), &path));
            let key = ck
                .file_path(&p.key("key"), Some(key), dir)
                .and_then(|path| pem_file(ck, &p.key("key"), &path));
            match (cert, key) {
                (Some(cert), Some(key)) if check_identity(ck, p, &cert, &key) => {
                    Some(Some((cert, Secret(key))))
                }
                _ => None,
            }
        }
    };
    Some(Some(EtcdTls {
        ca: ca?,
        identity: identity?,
    }))
}

pub(super) fn pem_file(ck: &mut Checker<'_>, key: &KeyPath, path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            ck.error(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// At least one certificate, each one webpki accepts as a trust anchor.
pub(super) fn check_ca(ck: &mut Checker<'_>, key: &KeyPath, pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let added = cert
            .map_err(|e| e.to_string())
            .and_then(|cert| roots.add(cert).map_err(|e| e.to_string()));
        if let Err(e) = added {
            ck.error(key, format!("not a valid CA certificate (PEM): {e}"));
            return false;
        }
    }
    if roots.is_empty() {
        ck.error(key, "no CERTIFICATE in the file");
        return false;
    }
    true
}

/// A certificate chain and the private key that fits its first certificate.
fn check_identity(ck: &mut Checker<'_>, p: &KeyPath, cert: &str, key: &str) -> bool {
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect();
    let chain = match chain {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => {
            ck.error(&p.key("cert"), "no CERTIFICATE in the file");
            return false;
        }
        Err(e) => {
            ck.error(&p.key("cert"), format!("invalid PEM: {e}"));
            return false;
        }
    };
    let key = match PrivateKeyDer::from_pem_slice(key.as_bytes()) {
        Ok(key) => key,
        Err(e) => {
            ck.error(
                &p.key("key"),
                format!("cannot read a private key (PKCS#8, RSA or EC PEM): {e}"),
            );
            return false;
        }
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        ck.error(
            &p.key("key"),
            format!("does not fit the certificate in cert, or is unsupported: {e}"),
        );
        return false;
    }
    true
}
