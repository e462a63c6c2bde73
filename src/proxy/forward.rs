//! Rewrites a client request into an upstream request, and an upstream response into the
//! client's: origin-form URI (absolute for HTTP/2 upstreams), hop-by-hop removal,
//! `X-Forwarded-*`, the pool header.

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

/// Per-connection facts the rewrite needs, computed once per client connection.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    /// The client's IP, ready to append to `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
}

/// Turns the client's request into the upstream request, in place (the pool header is added
/// once the serving pool is known, after any failover).
pub fn prepare_request<B>(
    req: &mut Request<B>,
    facts: &ClientFacts,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, even in absolute form.
    if host.is_none() && req.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    // The authority (HTTP/2's :authority, or an absolute-form target) names the host and,
    // per RFC 9112 §3.2.2, wins over a Host header; HTTP/1.1 upstreams get it as Host.
    let authority_host = match req.uri().authority() {
        Some(a) => Some(
            HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?,
        ),
        None => None,
    };
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    // Room for the headers added below in one growth, not one per insert.
    headers.reserve(5);
    if let Some(host) = &authority_host {
        headers.insert(HOST, host.clone());
    }
    strip_hop_by_hop(headers, upgrade);
    // The proxy already answered `100-continue` by reading the body; don't ask again upstream.
    headers.remove(EXPECT);

    append_forwarded_for(headers, &facts.peer_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), facts.proto.clone());
    if let Some(host) = authority_host.or(host) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    Ok(())
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

fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    match headers.get(&X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        }
        Some(existing) => {
            // Several XFF headers are one comma-separated list; fold them and append.
            let mut joined: Vec<u8> = Vec::with_capacity(existing.len() + ip.len() + 2);
            for (i, v) in headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
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
}
