//! Rewrites a client request into an upstream request, and an upstream response into the
//! client's: origin-form URI (absolute for HTTP/2 upstreams), hop-by-hop removal,
//! `X-Forwarded-*`, the pool header. Every change the proxy makes to a request is made here,
//! in three steps the proxy takes in order:
//!
//! 1. [`check_request`], before routing: refuses a malformed request, normalises its path
//!    and works out, once, the [`TargetHost`] that routes match and the upstream receives;
//! 2. [`prepare_request`], once routed: Host, `X-Forwarded-*`, hop-by-hop removal, origin
//!    form;
//! 3. [`for_connection`], once the serving pool and connection are known (again after a
//!    failover): the pool header, and the HTTP/2 or HTTP/1.1 form the connection speaks.

use bytes::Bytes;
use http::header::{
    CONNECTION, EXPECT, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};

use super::error::ProxyError;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the common non-standard ones). `Upgrade` and
/// `Connection` are handled apart, since an upgrade keeps them; so is `TE`, whose value
/// `trailers` gRPC needs end to end. `Trailer` is end to end (RFC 9110 §6.6.2): hyper sends
/// HTTP/1.1 trailer fields only when the message announces them in it.
static HOP_BY_HOP: [&HeaderName; 5] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TRANSFER_ENCODING,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION || name == UPGRADE || name == TE || HOP_BY_HOP.contains(&name)
}

/// Does this HTTP/1.1 request ask for a protocol upgrade (WebSocket)?
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && has_token(req.headers(), "upgrade")
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`. With `upgrade`, the
/// `Connection: upgrade` and `Upgrade` headers stay so the upstream sees the handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass of cheap name comparisons first: most messages carry no hop-by-hop header,
    // and this beats a hash lookup per listed name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        // Rare path (most clients send no Connection header): collect, then remove.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|n| !(upgrade && *n == UPGRADE))
            // `Connection: host` must not strip the request of its Host.
            .filter(|n| *n != HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(CONNECTION);
        }
    }
    for name in HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if !upgrade && headers.contains_key(UPGRADE) {
        headers.remove(UPGRADE);
    }
    if headers.contains_key(TE) {
        // Only `trailers` travels end to end (gRPC needs it), whatever else TE listed.
        let trailers = headers.get_all(TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        headers.remove(TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The host a request names: the authority of its target when it has one (HTTP/2's
/// `:authority`, an absolute-form target), else its Host header (RFC 9112 §3.2.2). Worked out
/// once, before routing: routes match it and the upstream receives it as Host.
#[derive(Debug, Clone)]
pub struct TargetHost {
    /// `None`: an HTTP/1.0 request without Host.
    value: Option<HeaderValue>,
    /// Taken from the authority: it replaces (or becomes) the Host header.
    from_authority: bool,
}

impl TargetHost {
    fn of<B>(req: &Request<B>) -> Result<Self, ProxyError> {
        match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())
                .map(|value| TargetHost {
                    value: Some(value),
                    from_authority: true,
                })
                .map_err(|_| ProxyError::BadRequest("invalid authority")),
            None => Ok(TargetHost {
                value: req.headers().get(HOST).cloned(),
                from_authority: false,
            }),
        }
    }

    /// The host as routes match it: `None` when there is none or it is not text.
    pub fn as_str(&self) -> Option<&str> {
        self.value.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// Step 1, before routing: refuses what is malformed or not proxied (an HTTP/1.1 request
/// without Host, CONNECT), normalises the path (routes match, and the upstream receives, the
/// normalised one: `/public/../admin` must not pass a `/public` route on its way to
/// `/admin`), and returns the host the request names.
pub fn check_request<B>(req: &mut Request<B>) -> Result<TargetHost, ProxyError> {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is malformed, even in absolute form.
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    normalize_target(req)?;
    TargetHost::of(req)
}

/// Per-connection facts the rewrite needs, computed once per client connection.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// The client's IP, ready to append to `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

impl ClientFacts {
    /// `http` or `https`, for `X-Forwarded-Proto` (a static value: no copy kept per
    /// connection, where each idle client's bytes count).
    pub fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.https { "https" } else { "http" })
    }
}

/// Step 2, once routed: turns the client's request ([`check_request`]ed, which gave `host`)
/// into the upstream request, in place. `upgrade`: the request asks for a protocol upgrade
/// (see [`is_upgrade_request`]), whose handshake headers stay.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    host: &TargetHost,
    facts: &ClientFacts,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let absolute = req.uri().scheme().is_some() || req.uri().authority().is_some();
    let headers = req.headers_mut();
    let mut found = Found::scan(headers);
    if found.hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    // HTTP/1.1 upstreams get the authority as Host.
    let authority_host = host.from_authority.then(|| host.value.clone()).flatten();
    if found.hop_by_hop {
        // Rare (most clients send no Connection header): remove them, then look again,
        // since `Connection` may have named any header.
        strip_hop_by_hop(headers, upgrade);
        found = Found::scan(headers);
    }
    let inserts = found.update(authority_host, facts);
    inserts.apply(headers, facts);

    if absolute {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// What the rewrite needs from the request headers, found in one pass: a hash lookup costs
/// more than comparing every name of a typical request, and in-place updates need none.
struct Found<'a> {
    hosts: usize,
    host: Option<&'a mut HeaderValue>,
    hop_by_hop: bool,
    expect: bool,
    xff: Option<&'a mut HeaderValue>,
    xffs: usize,
    xfp: Option<&'a mut HeaderValue>,
    xfps: usize,
    xfh: Option<&'a mut HeaderValue>,
    xfhs: usize,
}

impl<'a> Found<'a> {
    fn scan(headers: &'a mut HeaderMap) -> Self {
        let mut f = Found {
            hosts: 0,
            host: None,
            hop_by_hop: false,
            expect: false,
            xff: None,
            xffs: 0,
            xfp: None,
            xfps: 0,
            xfh: None,
            xfhs: 0,
        };
        for (name, value) in headers.iter_mut() {
            if name == HOST {
                f.hosts += 1;
                f.host.get_or_insert(value);
            } else if name == X_FORWARDED_FOR {
                f.xffs += 1;
                f.xff.get_or_insert(value);
            } else if name == X_FORWARDED_PROTO {
                f.xfps += 1;
                f.xfp.get_or_insert(value);
            } else if name == X_FORWARDED_HOST {
                f.xfhs += 1;
                f.xfh.get_or_insert(value);
            } else if name == EXPECT {
                f.expect = true;
            } else if is_hop_by_hop(name) {
                f.hop_by_hop = true;
            }
        }
        f
    }
}

impl Found<'_> {
    /// Sets Host (from the authority), appends the client to `X-Forwarded-For` and sets
    /// `X-Forwarded-Proto`/`-Host` where the header is present once: in place, without a
    /// lookup. Returns what is left to do through the map.
    fn update(self, authority_host: Option<HeaderValue>, facts: &ClientFacts) -> Inserts {
        let mut host = None;
        // Host as the upstream sees it, which `X-Forwarded-Host` repeats.
        let forwarded_host = match (authority_host, self.host) {
            (Some(authority), Some(existing)) => {
                *existing = authority.clone();
                Some(authority)
            }
            (Some(authority), None) => {
                host = Some(authority.clone());
                Some(authority)
            }
            (None, existing) => existing.map(|h| h.clone()),
        };
        let xff = match self.xff {
            Some(existing) if self.xffs == 1 => {
                if let Some(v) = forwarded_for(&[&*existing], &facts.peer_ip) {
                    *existing = v;
                }
                Xff::Done
            }
            Some(_) => Xff::Fold,
            None => Xff::Insert,
        };
        let xfp = match self.xfp {
            Some(v) if self.xfps == 1 => {
                *v = facts.proto();
                false
            }
            _ => true,
        };
        let xfh = match (self.xfh, forwarded_host) {
            (Some(v), Some(host)) if self.xfhs == 1 => {
                *v = host;
                None
            }
            (_, host) => host,
        };
        Inserts {
            host,
            expect: self.expect,
            xff,
            xfp,
            xfh,
        }
    }
}

/// The header changes [`Found::update`] could not make in place.
struct Inserts {
    host: Option<HeaderValue>,
    expect: bool,
    xff: Xff,
    xfp: bool,
    xfh: Option<HeaderValue>,
}

enum Xff {
    Done,
    Insert,
    /// Several XFF headers (rare): fold them into one list, through the map.
    Fold,
}

impl Inserts {
    fn apply(self, headers: &mut HeaderMap, facts: &ClientFacts) {
        if let Some(host) = self.host {
            headers.insert(HOST, host);
        }
        // The proxy already answered `100-continue` by reading the body; don't ask again
        // upstream.
        if self.expect {
            headers.remove(EXPECT);
        }
        match self.xff {
            Xff::Done => {}
            Xff::Insert => {
                headers.insert(&X_FORWARDED_FOR, facts.peer_ip.clone());
            }
            Xff::Fold => {
                let all: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
                if let Some(v) = forwarded_for(&all, &facts.peer_ip) {
                    headers.insert(&X_FORWARDED_FOR, v);
                }
            }
        }
        if self.xfp {
            headers.insert(&X_FORWARDED_PROTO, facts.proto());
        }
        if let Some(host) = self.xfh {
            headers.insert(&X_FORWARDED_HOST, host);
        }
    }
}

/// Step 3, once the serving connection is known (and again for another, after a failover or
/// a replay): `pool_header` (name, the pool's value), and the form the connection speaks:
/// `http2` gives the scheme of an HTTP/2 connection's absolute URI, `None` is HTTP/1.1.
pub fn for_connection<B>(
    req: &mut Request<B>,
    pool_header: Option<(&HeaderName, &HeaderValue)>,
    http2: Option<Scheme>,
) -> Result<(), ProxyError> {
    if let Some((name, value)) = pool_header {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    // HTTP/1.1 requests are in the right form already (one comparison); HTTP/2 upstreams
    // need the absolute form, and a failover may cross between the two.
    match http2 {
        Some(scheme) => to_http2(req, &scheme),
        None => {
            to_http1(req);
            Ok(())
        }
    }
}

/// Puts a prepared request (HTTP/1.1 form) into HTTP/2 form for an HTTP/2 upstream: version 2,
/// an absolute URI whose authority is the Host as received, no Host or connection-specific
/// headers (`te: trailers` stays). A request already in HTTP/2 form is left as it is.
pub fn to_http2<B>(req: &mut Request<B>, scheme: &Scheme) -> Result<(), ProxyError> {
    if req.version() == Version::HTTP_2 {
        return Ok(());
    }
    let Some(host) = req.headers_mut().remove(HOST) else {
        return Err(ProxyError::BadRequest("missing Host header"));
    };
    let authority = Authority::try_from(host.as_bytes())
        .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    *req.version_mut() = Version::HTTP_2;
    // `prepare_request` removed the rest; an upgrade request kept these two, and an HTTP/2
    // upstream cannot upgrade.
    let headers = req.headers_mut();
    headers.remove(CONNECTION);
    headers.remove(UPGRADE);
    Ok(())
}

/// Undoes [`to_http2`] (a request sent again to an HTTP/1.1 pool after a failover): origin-form
/// URI, the authority back as Host. A request in HTTP/1.1 form is left as it is.
pub fn to_http1<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(host) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(HOST, host);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
}

/// `X-Forwarded-For` with `ip` appended: several XFF headers are one comma-separated list,
/// folded into one value. Built at its exact size, so the buffer becomes the value's
/// storage without another copy.
fn forwarded_for(existing: &[&HeaderValue], ip: &HeaderValue) -> Option<HeaderValue> {
    let len = existing.iter().map(|v| v.len() + 2).sum::<usize>() + ip.len();
    let mut joined: Vec<u8> = Vec::with_capacity(len);
    for v in existing {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
}

/// Rewrites the upstream response's headers for the client, in place.
pub fn prepare_response<B>(
    resp: &mut Response<B>,
    pool_header: Option<(&HeaderName, &HeaderValue)>,
) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgrade);
    if let Some((name, value)) = pool_header {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
}

/// Why a request target cannot be normalised.
#[derive(Debug, PartialEq, Eq)]
pub struct ClimbsAboveRoot;

/// Does `b` (a percent-decoded byte) belong to RFC 3986's unreserved set?
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XX` escape at `i` stands for, when it is a valid escape.
fn escape_at(path: &[u8], i: usize) -> Option<u8> {
    let h = hex_value(*path.get(i + 1)?)?;
    let l = hex_value(*path.get(i + 2)?)?;
    Some(h << 4 | l)
}

/// Does `path` need [`normalize_path`]? One pass, no allocation: most paths do not.
fn needs_normalizing(path: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        match b {
            b'%' if escape_at(path, i).is_some_and(is_unreserved) => return true,
            b'/' => match (path.get(i + 1), path.get(i + 2), path.get(i + 3)) {
                (Some(b'/'), _, _) => return true,
                (Some(b'.'), None | Some(b'/'), _) => return true,
                (Some(b'.'), Some(b'.'), None | Some(b'/')) => return true,
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    false
}

/// The normalised form of an origin-form path, as routes see it and the upstream receives
/// it: percent-encoded unreserved characters decoded, repeated slashes merged, dot-segments
/// removed (RFC 3986 6.2.2 and 5.2.4). `None` when it is normal already. A path that climbs
/// above the root (`/../x`) is an error: what it would mean depends on the upstream.
pub fn normalize_path(path: &str) -> Result<Option<String>, ClimbsAboveRoot> {
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") || !needs_normalizing(bytes) {
        return Ok(None);
    }
    // Decode the unreserved escapes first, so that `%2e%2e` is a dot-segment too.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match escape_at(bytes, i) {
            Some(c) if b == b'%' && is_unreserved(c) => {
                decoded.push(c);
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing = matches!(seg, b"" | b"." | b"..");
        match seg {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(ClimbsAboveRoot);
                }
            }
            _ => segments.push(seg),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for seg in &segments {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || segments.is_empty() {
        out.push(b'/');
    }
    // Only ASCII escapes were decoded and the rest is the original UTF-8-or-ASCII target.
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// Rewrites the request target to its normalised path (query and, in absolute form, scheme
/// and authority kept), so routing and the upstream see the same path.
pub fn normalize_target<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let normalized = match normalize_path(req.uri().path()) {
        Ok(None) => return Ok(()),
        Ok(Some(p)) => p,
        Err(ClimbsAboveRoot) => {
            return Err(ProxyError::BadRequest("request path climbs above the root"));
        }
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid request target"))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_form_takes_the_authority_from_host_and_back() {
        let mut req = Request::post("/svc.Echo/Call?x=1")
            .header(HOST, "app.internal:8080")
            .header(TE, "trailers")
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .expect("request");
        to_http2(&mut req, &Scheme::HTTPS).expect("h2 form");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(
            req.uri().to_string(),
            "https://app.internal:8080/svc.Echo/Call?x=1"
        );
        assert!(req.headers().get(HOST).is_none());
        assert!(req.headers().get(CONNECTION).is_none());
        assert!(req.headers().get(UPGRADE).is_none());
        assert_eq!(req.headers()[TE], "trailers");
        // Idempotent: a replay on another HTTP/2 connection keeps it.
        to_http2(&mut req, &Scheme::HTTPS).expect("h2 form");
        to_http1(&mut req);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/svc.Echo/Call?x=1");
        assert_eq!(req.headers()[HOST], "app.internal:8080");
    }

    #[test]
    fn http2_form_needs_a_host() {
        let mut req = Request::get("/").body(()).expect("request");
        assert!(to_http2(&mut req, &Scheme::HTTP).is_err());
    }

    #[test]
    fn connection_tokens_never_strip_host_and_only_trailers_survives_te() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("app"));
        h.insert(CONNECTION, HeaderValue::from_static("host, x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.append(TE, HeaderValue::from_static("trailers"));
        h.append(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(HOST).map(|v| v.as_bytes()), Some(&b"app"[..]));
        assert!(!h.contains_key("x-a") && !h.contains_key(CONNECTION));
        let te: Vec<_> = h.get_all(TE).iter().collect();
        assert_eq!(te, vec![HeaderValue::from_static("trailers")]);

        for (value, kept) in [
            ("gzip", false),
            ("gzip, Trailers", true),
            ("deflate;q=0.5", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(TE, HeaderValue::from_static(value));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.contains_key(TE), kept, "TE: {value}");
        }
    }

    fn facts() -> ClientFacts {
        ClientFacts {
            peer_ip: HeaderValue::from_static("10.1.2.3"),
            https: true,
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Steps 1 and 2, as the proxy takes them around routing.
    fn prepared(req: &mut Request<()>) -> Result<(), ProxyError> {
        let upgrade = is_upgrade_request(req);
        let host = check_request(req)?;
        prepare_request(req, &host, &facts(), upgrade)
    }

    #[test]
    fn forwarded_headers_are_appended_or_set_once() {
        // XFF once (updated in place), none, or several (folded into one list); XFP and XFH
        // absent, present once or several times: one value each afterwards.
        let cases: [(&[(&str, &str)], &str); 3] = [
            (
                &[("x-forwarded-for", "203.0.113.7")],
                "203.0.113.7, 10.1.2.3",
            ),
            (&[], "10.1.2.3"),
            (
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-for", "198.51.100.1, 192.0.2.9"),
                ],
                "203.0.113.7, 198.51.100.1, 192.0.2.9, 10.1.2.3",
            ),
        ];
        for (xff, want) in cases {
            for extra in [
                &[][..],
                &[("x-forwarded-proto", "http"), ("x-forwarded-host", "evil")][..],
                &[
                    ("x-forwarded-proto", "http"),
                    ("x-forwarded-proto", "ftp"),
                    ("x-forwarded-host", "a"),
                    ("x-forwarded-host", "b"),
                ][..],
            ] {
                let mut b = Request::get("/p?q=1").header(HOST, "shop.example.com:8080");
                for (k, v) in xff.iter().chain(extra) {
                    b = b.header(*k, *v);
                }
                let mut req = b.header("accept", "*/*").body(()).expect("request");
                prepared(&mut req).expect("prepared");
                let h = req.headers();
                assert_eq!(
                    values(h, "x-forwarded-for"),
                    vec![want],
                    "{xff:?} {extra:?}"
                );
                assert_eq!(values(h, "x-forwarded-proto"), vec!["https"]);
                assert_eq!(values(h, "x-forwarded-host"), vec!["shop.example.com:8080"]);
                assert_eq!(values(h, "host"), vec!["shop.example.com:8080"]);
                assert_eq!(values(h, "accept"), vec!["*/*"]);
                assert_eq!(req.uri(), "/p?q=1");
                assert_eq!(req.version(), Version::HTTP_11);
            }
        }
    }

    #[test]
    fn the_authority_becomes_host_and_forwarded_host() {
        // Absolute form with a Host header: the authority wins.
        let mut req = Request::get("http://app.example.com:81/x?y")
            .header(HOST, "other.example.com")
            .header("x-forwarded-host", "client-said")
            .body(())
            .expect("request");
        prepared(&mut req).expect("prepared");
        assert_eq!(req.uri(), "/x?y");
        assert_eq!(values(req.headers(), "host"), vec!["app.example.com:81"]);
        assert_eq!(
            values(req.headers(), "x-forwarded-host"),
            vec!["app.example.com:81"]
        );

        // HTTP/2: no Host header, the :authority is added as Host.
        let mut req = Request::get("https://app.example.com/h2")
            .version(Version::HTTP_2)
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .expect("request");
        prepared(&mut req).expect("prepared");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/h2");
        let h = req.headers();
        assert_eq!(values(h, "host"), vec!["app.example.com"]);
        assert_eq!(values(h, "x-forwarded-host"), vec!["app.example.com"]);
        assert_eq!(values(h, "x-forwarded-for"), vec!["192.0.2.1, 10.1.2.3"]);
    }

    #[test]
    fn host_errors_and_http10_without_host() {
        let mut two = Request::get("/")
            .header(HOST, "a")
            .header(HOST, "b")
            .body(())
            .expect("request");
        assert!(matches!(
            prepared(&mut two),
            Err(ProxyError::BadRequest("more than one Host header"))
        ));
        let mut none = Request::get("/").body(()).expect("request");
        assert!(matches!(
            prepared(&mut none),
            Err(ProxyError::BadRequest("missing Host header"))
        ));
        // HTTP/1.0 may omit Host: no X-Forwarded-Host is made up, the client's stays.
        let mut old = Request::get("/")
            .version(Version::HTTP_10)
            .header("x-forwarded-host", "client-said")
            .body(())
            .expect("request");
        prepared(&mut old).expect("prepared");
        assert!(!old.headers().contains_key(HOST));
        assert_eq!(
            values(old.headers(), "x-forwarded-host"),
            vec!["client-said"]
        );
        assert_eq!(values(old.headers(), "x-forwarded-for"), vec!["10.1.2.3"]);
    }

    #[test]
    fn hop_by_hop_and_expect_are_removed_before_forwarding() {
        // `Connection` names XFF: the client's list goes (hop-by-hop), ours starts afresh;
        // `Connection: host` keeps Host; `TE: trailers` stays; Expect goes.
        let mut req = Request::post("/upload")
            .header(HOST, "app")
            .header(CONNECTION, "keep-alive, x-forwarded-for, host")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "203.0.113.7")
            .header(TE, "trailers, gzip")
            .header(EXPECT, "100-continue")
            .header(TRANSFER_ENCODING, "chunked")
            .header(PROXY_AUTHORIZATION, "Basic eA==")
            .body(())
            .expect("request");
        prepared(&mut req).expect("prepared");
        let h = req.headers();
        for gone in ["connection", "keep-alive", "expect", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert!(!h.contains_key(PROXY_AUTHORIZATION));
        assert_eq!(values(h, "host"), vec!["app"]);
        assert_eq!(values(h, "te"), vec!["trailers"]);
        assert_eq!(values(h, "x-forwarded-for"), vec!["10.1.2.3"]);
        assert_eq!(values(h, "x-forwarded-host"), vec!["app"]);

        // Expect alone (no hop-by-hop header) goes too.
        let mut req = Request::post("/")
            .header(HOST, "app")
            .header(EXPECT, "100-continue")
            .body(())
            .expect("request");
        prepared(&mut req).expect("prepared");
        assert!(!req.headers().contains_key(EXPECT));
    }

    #[test]
    fn an_upgrade_keeps_its_handshake() {
        let mut req = Request::get("/ws")
            .header(HOST, "app")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .expect("request");
        prepared(&mut req).expect("prepared");
        assert_eq!(values(req.headers(), "connection"), vec!["upgrade"]);
        assert_eq!(values(req.headers(), "upgrade"), vec!["websocket"]);
        assert_eq!(values(req.headers(), "x-forwarded-for"), vec!["10.1.2.3"]);
    }

    #[test]
    fn the_target_host_is_the_authority_else_host_and_is_worked_out_once() {
        // Origin form: the Host header; absolute form and HTTP/2: the authority, whatever
        // Host says. Routes see it, and the upstream gets it as Host and X-Forwarded-Host.
        let mut req = Request::get("/a/../b")
            .header(HOST, "shop.example.com")
            .body(())
            .expect("request");
        let host = check_request(&mut req).expect("checked");
        assert_eq!(host.as_str(), Some("shop.example.com"));
        assert_eq!(req.uri(), "/b", "the path routes see is normalised");
        let mut req = Request::get("http://app.example.com:81/x")
            .header(HOST, "other.example.com")
            .body(())
            .expect("request");
        let host = check_request(&mut req).expect("checked");
        assert_eq!(host.as_str(), Some("app.example.com:81"));
        prepare_request(&mut req, &host, &facts(), false).expect("prepared");
        assert_eq!(values(req.headers(), "host"), vec!["app.example.com:81"]);
        // HTTP/1.0 may name no host at all.
        let mut req = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .expect("request");
        assert_eq!(check_request(&mut req).expect("checked").as_str(), None);
    }

    #[test]
    fn malformed_or_unproxied_requests_are_refused_before_routing() {
        let mut connect = Request::connect("app.example.com:443")
            .header(HOST, "app.example.com:443")
            .body(())
            .expect("request");
        assert!(matches!(
            check_request(&mut connect),
            Err(ProxyError::ConnectMethod)
        ));
        let mut no_host = Request::get("http://app.example.com/")
            .body(())
            .expect("request");
        assert!(matches!(
            check_request(&mut no_host),
            Err(ProxyError::BadRequest("missing Host header"))
        ));
        let mut climbs = Request::get("/../etc/passwd")
            .header(HOST, "app")
            .body(())
            .expect("request");
        assert!(check_request(&mut climbs).is_err());
    }

    #[test]
    fn the_connection_form_follows_the_serving_connection() {
        let name = HeaderName::from_static("x-pool");
        let (stable, canary) = (
            HeaderValue::from_static("stable"),
            HeaderValue::from_static("canary"),
        );
        let mut req = Request::get("/p?q")
            .header(HOST, "app.internal")
            .body(())
            .expect("request");
        // An HTTP/1.1 connection: the pool header only.
        for_connection(&mut req, Some((&name, &stable)), None).expect("h1 form");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(values(req.headers(), "x-pool"), vec!["stable"]);
        // Failover to an HTTP/2 pool: its header replaces the first, HTTP/2 form.
        for_connection(&mut req, Some((&name, &canary)), Some(Scheme::HTTPS)).expect("h2");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "https://app.internal/p?q");
        assert_eq!(values(req.headers(), "x-pool"), vec!["canary"]);
        // And back to HTTP/1.1, without a pool header.
        for_connection(&mut req, None, None).expect("h1 form");
        assert_eq!(
            (req.version(), req.uri().to_string()),
            (Version::HTTP_11, "/p?q".into())
        );
        assert_eq!(values(req.headers(), "host"), vec!["app.internal"]);
    }

    #[test]
    fn paths_are_normalised_as_routes_see_them() {
        let n = |p: &str| super::normalize_path(p);
        assert_eq!(n("/products/42"), Ok(None));
        assert_eq!(
            n("/a%2Fb"),
            Ok(None),
            "an escaped slash is data, not a separator"
        );
        assert_eq!(n("/public/../admin-app/x"), Ok(Some("/admin-app/x".into())));
        assert_eq!(n("/a/./b/"), Ok(Some("/a/b/".into())));
        assert_eq!(n("//a///b"), Ok(Some("/a/b".into())));
        assert_eq!(n("/a/%2e%2E/b"), Ok(Some("/b".into())));
        assert_eq!(n("/%41%7e%2Fx"), Ok(Some("/A~%2Fx".into())));
        assert_eq!(n("/a/b/.."), Ok(Some("/a/".into())));
        assert_eq!(n("/a/.."), Ok(Some("/".into())));
        assert_eq!(n("/."), Ok(Some("/".into())));
        assert_eq!(n("/..hidden/.x"), Ok(None), "dots inside names are names");
        assert_eq!(n("/../x"), Err(super::ClimbsAboveRoot));
        assert_eq!(n("/a/../../x"), Err(super::ClimbsAboveRoot));
        assert_eq!(n("/%2e%2e/x"), Err(super::ClimbsAboveRoot));
    }

    #[test]
    fn the_normalised_target_keeps_query_and_authority() {
        let mut req = Request::builder()
            .uri("http://shop.example.com/public/../admin/x?q=/../1")
            .body(())
            .expect("request");
        super::normalize_target(&mut req).expect("normalises");
        assert_eq!(
            req.uri().to_string(),
            "http://shop.example.com/admin/x?q=/../1"
        );
        let mut req = Request::builder()
            .uri("/../etc/passwd")
            .body(())
            .expect("request");
        assert!(super::normalize_target(&mut req).is_err());
    }
}
