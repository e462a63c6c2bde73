//! Request matchers compiled once per table: host, path prefix, header/cookie values.

use http::HeaderMap;
use http::header::COOKIE;

use crate::config::{HostMatch, KeySource, ValueMatch};

/// `host` as received (may carry a port, any case) against a pattern stored lower-case.
pub fn host_matches(pattern: &HostMatch, host: &str) -> bool {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern {
        HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// Whole-segment prefix: `/api` matches `/api` and `/api/x`, not `/apix`.
#[inline]
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The first value of a header, or of a cookie, as bytes.
#[inline]
pub fn extract<'a>(source: &KeySource, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match source {
        KeySource::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        KeySource::Cookie(name) => cookie(headers, name),
    }
}

/// Finds a cookie by name across all `Cookie` headers without allocating.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim(&pair[..eq]) == name.as_bytes() {
                return Some(trim(&pair[eq + 1..]));
            }
        }
    }
    None
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Does the value (if any) satisfy the matcher? Regexes see the value only if it is UTF-8.
#[inline]
pub fn value_matches(matcher: &ValueMatch, value: Option<&[u8]>) -> bool {
    match (matcher, value) {
        (_, None) => false,
        (ValueMatch::Present, Some(_)) => true,
        (ValueMatch::Equals(want), Some(v)) => v == want.as_bytes(),
        (ValueMatch::Matches(re), Some(v)) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
    }
}
