//! The dashboard at `/ui`: a page, a script and a style sheet from `ui/`, built into the
//! binary, that draw the live view from the admin API. Served with a strict content security
//! policy: the page runs only its own script and talks only to this listener.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use super::error;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// No inline script or style, no other origin, no framing (clickjacking on the controls).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// `/ui`, `/ui/` and the assets under `/ui/`.
pub(super) fn asset(rest: &[&str]) -> Response<Full<Bytes>> {
    let (body, content_type) = match rest {
        [] | ["index.html"] => (INDEX, "text/html; charset=utf-8"),
        ["app.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        ["app.css"] => (STYLE, "text/css; charset=utf-8"),
        _ => return error(StatusCode::NOT_FOUND, "no such dashboard file"),
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    r
}
