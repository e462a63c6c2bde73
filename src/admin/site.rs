//! Who may talk to the admin listener: the `Host` a request was sent to, and for a change
//! whether a browser sent it from another site. Pure checks over headers, so they are
//! tested without sockets.
//!
//! Why both: a page on another site can make a victim's browser send a "simple" POST (say
//! `Content-Type: text/plain`) to `http://127.0.0.1:9901` without a preflight, and a DNS
//! name rebound to 127.0.0.1 makes such a page same-origin with the admin API. The browser
//! says where a request comes from (`Origin`, `Sec-Fetch-Site`) and which name it resolved
//! (`Host`); curl, `switchyard ctl` and scripts send no `Origin`, so they are unaffected.

use std::net::IpAddr;

use http::{HeaderMap, Uri, header};

/// Why a request is refused, as the 403's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No Host at all (HTTP/1.0 without one): nothing to check it against.
    NoHost,
    /// A name that is neither an IP literal, `localhost` nor in `admin.allowed_hosts`.
    ForeignHost(String),
    /// A change sent by a page of another origin.
    CrossSite(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoHost => f.write_str("the request names no Host"),
            Refusal::ForeignHost(host) => write!(
                f,
                "Host {host:?} is not an IP address, localhost or a name in admin.allowed_hosts"
            ),
            Refusal::CrossSite(why) => write!(f, "cross-site change refused: {why}"),
        }
    }
}

/// The authority the request was sent to: the target's (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target), else the `Host` header.
pub(super) fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|a| !a.is_empty())
}

/// Splits `host[:port]` or `[v6][:port]`; `None` for what is no authority at all.
fn split(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 address has colons of its own.
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Whether the admin listener answers a request sent to `authority`: an IP literal,
/// `localhost`, or a name in `allowed` (lower-case, from the config), any port.
pub(super) fn check_host(authority: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    let authority = authority.ok_or(Refusal::NoHost)?;
    let shown = || Refusal::ForeignHost(authority.chars().take(100).collect());
    let (host, _) = split(authority).ok_or_else(shown)?;
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    // A trailing dot names the same host (`localhost.`).
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    {
        return Ok(());
    }
    Err(shown())
}

/// Whether a change (PUT, POST) comes from another site: `Sec-Fetch-Site` says so, or its
/// `Origin` is not `http://` + the authority it was sent to. A request without either header
/// is not from a browser page, and passes.
pub(super) fn check_same_origin(headers: &HeaderMap, authority: &str) -> Result<(), Refusal> {
    for v in headers.get_all("sec-fetch-site") {
        let v = v.to_str().unwrap_or("").trim();
        if v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site") {
            return Err(Refusal::CrossSite(format!("Sec-Fetch-Site: {v}")));
        }
    }
    let mut origins = headers.get_all(header::ORIGIN).iter().peekable();
    if origins.peek().is_none() {
        return Ok(());
    }
    for origin in origins {
        let text = origin.to_str().unwrap_or("");
        if !same_origin(text.trim(), authority) {
            let shown: String = text.chars().take(100).collect();
            return Err(Refusal::CrossSite(format!(
                "Origin {shown:?} is not http://{authority}"
            )));
        }
    }
    Ok(())
}

/// `origin` is `http://` + `authority`: same host (case-insensitive), same port (80 when
/// left out). The listener speaks plain HTTP, so an `https://` origin is another origin;
/// `null` (a sandboxed frame, a file) is no origin of ours.
fn same_origin(origin: &str, authority: &str) -> bool {
    let Some(rest) = origin
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .and_then(|_| origin.get(7..))
    else {
        return false;
    };
    match (split(rest), split(authority)) {
        (Some((oh, op)), Some((ah, ap))) => {
            oh.eq_ignore_ascii_case(ah) && op.unwrap_or(80) == ap.unwrap_or(80)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed_names() {
        let allowed = vec!["admin.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9901",
            "::1",
            "localhost",
            "LOCALHOST:9901",
            "localhost.:1",
            "admin.internal:9901",
            "Admin.Internal",
        ] {
            assert_eq!(check_host(Some(ok), &allowed), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "admin.internal.evil",
            "127.0.0.1:99999",
            "[::1",
            "[::1]x",
            ":9901",
        ] {
            assert!(
                matches!(
                    check_host(Some(bad), &allowed),
                    Err(Refusal::ForeignHost(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(check_host(None, &allowed), Err(Refusal::NoHost));
    }

    #[test]
    fn changes_from_another_origin_are_refused() {
        let at = "127.0.0.1:9901";
        for ok in [
            vec![],
            vec![("origin", "http://127.0.0.1:9901")],
            vec![("origin", "HTTP://127.0.0.1:9901")],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
            vec![
                ("origin", "http://127.0.0.1:9901"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            assert_eq!(check_same_origin(&headers(&ok), at), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![("origin", "http://evil.example")],
            vec![("origin", "http://127.0.0.1:9902")],
            vec![("origin", "http://127.0.0.1")],
            vec![("origin", "https://127.0.0.1:9901")],
            vec![("origin", "null")],
            vec![("origin", "")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![
                ("origin", "http://127.0.0.1:9901"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert!(
                matches!(
                    check_same_origin(&headers(&bad), at),
                    Err(Refusal::CrossSite(_))
                ),
                "{bad:?}"
            );
        }
        // Port 80 may be left out on either side.
        assert_eq!(
            check_same_origin(&headers(&[("origin", "http://localhost")]), "localhost:80"),
            Ok(())
        );
    }
}
