//! One `[services.NAME.pools.POOL]`: endpoints, drains, balance, protocol and upstream TLS.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use super::Checker;
use super::sections::{check_ca, pem_file};
use super::service::check_name;
use crate::config::diagnostic::KeyPath;
use crate::config::model::{Balance, CaBundle, Pool, Protocol};
use crate::config::raw::{RawBalance, RawPool, RawProtocol};

pub(super) fn pool(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    name: &str,
    raw: RawPool,
    dir: &Path,
) -> Pool {
    check_name(ck, p, "pool", name);
    let ep = p.key("endpoints");
    let mut endpoints: Vec<String> = Vec::new();
    match ck.required(&ep, raw.endpoints) {
        Some(list) if list.is_empty() => ck.error(&ep, "at least one endpoint is required"),
        Some(list) => {
            for (i, endpoint) in list.into_iter().enumerate() {
                if let Err(problem) = check_endpoint(&endpoint) {
                    ck.error(
                        &ep.index(i),
                        format!("invalid endpoint {endpoint:?}: {problem}"),
                    );
                } else if let Some(first) = endpoints.iter().position(|e| *e == endpoint) {
                    ck.error(
                        &ep.index(i),
                        format!("duplicate endpoint {endpoint:?} (also endpoints[{first}])"),
                    );
                }
                // Kept even when invalid, so later indices in messages stay right.
                endpoints.push(endpoint);
            }
        }
        None => {}
    }
    let drained = drained(
        ck,
        &p.key("drained"),
        raw.drained.unwrap_or_default(),
        &endpoints,
    );

    let count = i64::try_from(endpoints.len()).unwrap_or(i64::MAX);
    let min_available = match raw.min_available {
        // The default guard of 1 cannot apply to an empty pool; that pool is an error anyway.
        None => count.min(1),
        Some(n) if n < 0 => {
            ck.error(
                &p.key("min_available"),
                format!("must be at least 0, not {n}"),
            );
            0
        }
        Some(n) if n > count => {
            ck.error(
                &p.key("min_available"),
                format!("min_available {n} is more than the pool's {count} endpoint(s)"),
            );
            0
        }
        Some(n) => n,
    };

    let protocol = match raw.protocol.unwrap_or(RawProtocol::Http1) {
        RawProtocol::Http1 => Protocol::Http1,
        RawProtocol::H2c => Protocol::H2c,
        RawProtocol::H2 => Protocol::H2,
    };
    let tls = match (protocol, raw.tls) {
        (Protocol::H2, Some(false)) => {
            ck.error(
                &p.key("tls"),
                "protocol \"h2\" is HTTP/2 over TLS; \
                 remove tls = false (or use protocol = \"h2c\")",
            );
            false
        }
        (Protocol::H2, _) => true,
        (Protocol::H2c, Some(true)) => {
            ck.error(
                &p.key("protocol"),
                "\"h2c\" is cleartext HTTP/2 and cannot use tls = true; use protocol = \"h2\"",
            );
            true
        }
        (_, tls) => tls.unwrap_or(false),
    };
    let ca = match raw.ca {
        Some(_) if !tls => {
            ck.error(&p.key("ca"), "ca needs tls = true (or protocol = \"h2\")");
            None
        }
        Some(ca) => {
            let path = ck.file_path(&p.key("ca"), Some(ca), dir);
            ca_bundle(ck, &p.key("ca"), path)
        }
        None => None,
    };
    let sni = match raw.sni {
        Some(_) if !tls => {
            ck.error(&p.key("sni"), "sni needs tls = true (or protocol = \"h2\")");
            None
        }
        Some(sni) if sni.is_empty() => {
            ck.error(&p.key("sni"), "must not be empty");
            None
        }
        sni => sni,
    };

    Pool {
        name: name.to_owned(),
        endpoints,
        drained,
        balance: match raw.balance.unwrap_or(RawBalance::RoundRobin) {
            RawBalance::RoundRobin => Balance::RoundRobin,
            RawBalance::LeastRequests => Balance::LeastRequests,
        },
        min_available: usize::try_from(min_available).unwrap_or(0),
        protocol,
        tls,
        ca,
        sni,
    }
}

/// Reads and checks the pool's CA bundle now, at load: a routing table is built from the
/// config without opening files, and a missing or bad bundle points at its `ca` line.
fn ca_bundle(ck: &mut Checker<'_>, key: &KeyPath, path: Option<PathBuf>) -> Option<CaBundle> {
    let path = path?;
    let pem = pem_file(ck, key, &path).filter(|pem| check_ca(ck, key, pem))?;
    Some(CaBundle {
        path,
        pem: pem.into_bytes().into(),
    })
}

/// `drained`: each entry names one of this pool's `endpoints`, once. A drain only ever refers
/// to an endpoint by its written address, so no normalisation is done.
fn drained(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    raw: Vec<String>,
    endpoints: &[String],
) -> Vec<String> {
    let mut drained: Vec<String> = Vec::with_capacity(raw.len());
    for (i, endpoint) in raw.into_iter().enumerate() {
        if !endpoints.contains(&endpoint) {
            ck.error(
                &p.index(i),
                format!(
                    "{endpoint:?} is not an endpoint of this pool (endpoints: {})",
                    endpoints.join(", ")
                ),
            );
        } else if let Some(first) = drained.iter().position(|e| *e == endpoint) {
            ck.error(
                &p.index(i),
                format!("duplicate drained endpoint {endpoint:?} (also drained[{first}])"),
            );
        }
        drained.push(endpoint);
    }
    drained
}

/// `host:port`: a non-empty host (IPv6 in brackets) and a port 1..=65535.
/// Names are not resolved here: DNS at load time would make `check` depend on the network.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    if endpoint.contains("://") {
        return Err("write host:port, without a scheme");
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("expected host:port");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
        Ok(_) => {}
    }
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ip) = inner.strip_suffix(']') else {
            return Err("unclosed '[' in the host");
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err("not an IPv6 address between [ ]");
        }
        return Ok(());
    }
    if host.contains(':') {
        return Err("write an IPv6 address in brackets, e.g. [::1]:8080");
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b"/[]@?#".contains(&b))
    {
        return Err("the host contains a character not allowed in a host name");
    }
    Ok(())
}
