//! The admin API on `admin.listen`: routing, bearer auth, the Host and cross-site checks,
//! JSON answers, its connections' limits. Owns the listener and nothing else: handlers turn
//! requests into control `Command`s and read the control task's published views; nothing
//! here touches the live table or config directly.

mod conns;
mod handlers;
mod live;
mod site;
mod ui;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulConnection;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::api::{ErrorBody, WatchView};
use crate::config::Secret;
use crate::control::{ControlError, ControlHandle, IfMatch};
use crate::proxy::conn::RequestGuard;
use crate::router::RoutingTable;
use crate::server::{Watchdog, counted_io, drive, http_builder};

/// Admin request bodies are small JSON objects; past this, a 413.
const MAX_BODY: usize = 1024 * 1024;

/// What the admin handlers share.
pub struct AdminState {
    pub control: ControlHandle,
    pub tables: Arc<ArcSwap<RoutingTable>>,
    pub token: Option<Secret>,
    /// False once shutdown has begun: `/readyz` then answers 503 so balancers stop sending.
    pub ready: AtomicBool,
    /// Whether the config file is watched (shown in `/admin/status`).
    pub watcher: crate::reload::WatchStatus,
    /// Renders `/metrics` (None: metrics are off).
    pub metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// The live view's series, audit ring and event feed.
    pub observer: Arc<crate::observe::Observer>,
    /// `/admin/stats` answers of the last second.
    pub(crate) stats_cache: live::StatsCache,
}

/// A client must send each request head within this: from accept, or from its first byte
/// on a kept-alive connection. A connection idle between requests is closed after
/// `IDLE_TIMEOUT`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request's announced body must have arrived this long after its head, else a 408 and
/// the connection is closed: a client that announces 100 bytes and sends one would
/// otherwise hold its place (and a task) for as long as it likes.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams on one admin connection.
const MAX_H2_STREAMS: u32 = 16;

/// Serves the admin API until `token` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, token: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut places = conns::Places::new();
    let streams = Arc::new(AtomicUsize::new(0));
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => break,
            _ = prune.tick() => {
                state.stats_cache.prune();
                continue;
            }
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((open, conn)) = places.take(peer, &token).await else {
            debug!(%peer, "admin connection limit reached, every connection busy: connection closed");
            drop(stream);
            continue;
        };
        let state = state.clone();
        let streams = streams.clone();
        tracker.spawn(async move {
            let _open = open;
            let info = conn.info.clone();
            // Closed with the listener, to make room for a newcomer, or alone when an event
            // stream's client stalls.
            let close = conn.close.clone();
            let io = counted_io(conns::AdminIo::new(stream, conn.clone()), &info);
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let streams = streams.clone();
                let conn = conn.clone();
                // Started and finished for the watchdog, as on the proxy port.
                let request = RequestGuard::start(conn.info.clone());
                async move {
                    if let Err(refusal) = check_site(&state, &req) {
                        drop(request);
                        return Ok(
                            error(StatusCode::FORBIDDEN, &refusal.to_string()).map(Either::Left)
                        );
                    }
                    // The event stream's body carries the request guard: it is one long
                    // request, not an idle connection.
                    // `/admin/events/` too, as every other path is matched by its segments.
                    if req.method() == Method::GET
                        && req.uri().path().trim_matches('/') == "admin/events"
                    {
                        return Ok::<_, Infallible>(live::events(&state, request, &streams, &conn));
                    }
                    let resp = handle(&state, req, &conn).await;
                    drop(request);
                    Ok::<_, Infallible>(resp.map(Either::Left))
                }
            });
            let mut builder = http_builder();
            // hyper's default of 200 streams a connection is for the proxy's clients; one
            // admin client needs few, and each stream is a task and buffers of its own.
            builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            let graceful = |c: Pin<&mut _>| GracefulConnection::graceful_shutdown(c);
            // No drain signal: the token's cancellation below ends every admin connection.
            let mut watchdog = Watchdog::new(info, HEADER_TIMEOUT, IDLE_TIMEOUT);
            tokio::select! {
                ended = drive(conn, graceful, &mut watchdog, None) => {
                    if let Err(why) = ended {
                        debug!(%peer, why, "admin connection closed");
                    }
                }
                _ = close.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    state: &AdminState,
    req: Request<Incoming>,
    conn: &conns::AdminConn,
) -> Response<Full<Bytes>> {
    let head_at = tokio::time::Instant::now();
    let peer = conn.info.peer;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();

    // Open reads first.
    if method == Method::GET || method == Method::HEAD {
        return match segs.as_slice() {
            ["healthz"] => text(StatusCode::OK, "ok\n"),
            ["readyz"] if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
            ["readyz"] => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            ["metrics"] => match &state.metrics {
                Some(render) => {
                    let mut r = text(StatusCode::OK, &render());
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                }
                None => error(StatusCode::NOT_FOUND, "metrics are not enabled"),
            },
            ["admin", "status"] => match state.control.status().await {
                // The watcher's state sits beside the control task's view.
                Ok(mut view) => {
                    view.config_watcher = Some(WatchView::clone(&state.watcher.load()));
                    json(StatusCode::OK, &view)
                }
                Err(e) => control_error(&e),
            },
            ["admin", "cluster"] => match state.control.status().await {
                Ok(view) => match &view.cluster {
                    Some(cluster) => json(StatusCode::OK, cluster),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "not in fleet mode: the config has no [cluster] section",
                    ),
                },
                Err(e) => control_error(&e),
            },
            ["admin", "services", svc] => answer(state.control.get(svc).await),
            ["admin", "stats"] => live::stats(state, &query).await,
            ["admin", "audit"] => live::audit(state, &query),
            // A GET was streamed before it got here; a HEAD gets the headers alone.
            ["admin", "events"] => live::events_head(),
            ["ui", rest @ ..] => ui::asset(rest),
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: GET {path}"),
            ),
        };
    }
    if method != Method::POST && method != Method::PUT {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or POST");
    }
    if !authorized(state, &req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    // A malformed If-Match is a 400, but only after the 404 check (an unknown service is a
    // 404 whatever its headers).
    let if_match = if_match(&req);
    let reading = conns::ReadingBody::start(conn);
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout_at(head_at + BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"),
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("request body not received within {BODY_TIMEOUT:?} of the head"),
            );
            // The rest of the body may still come: the connection cannot be reused.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    drop(reading);
    let dry_run = match query_flag(&query, "dry_run") {
        Ok(v) => v,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    let guard = crate::control::Guard {
        if_match,
        dry_run,
        caller: Some(peer),
        by: None,
    };
    handlers::mutate(state, &method, &segs, &query, body, guard).await
}

/// Every request must be sent to a Host the listener answers to; a change must not come
/// from another site's page. Both before the token: a forged call is refused whether or not
/// the browser could add a token.
fn check_site<B>(state: &AdminState, req: &Request<B>) -> Result<(), site::Refusal> {
    let authority = site::authority(req.uri(), req.headers());
    let allowed = state.tables.load().settings.admin_allowed_hosts.clone();
    site::check_host(authority, &allowed)?;
    if req.method() == Method::POST || req.method() == Method::PUT {
        site::check_same_origin(req.headers(), authority.unwrap_or(""))?;
    }
    Ok(())
}

/// Constant-time comparison of the bearer token; open when no token is configured.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(Secret(want)) = &state.token else {
        return true;
    };
    let Some((scheme, got)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 11.1): `bearer` works as well as `Bearer`.
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(got.trim().as_bytes().ct_eq(want.as_bytes()))
}

/// `If-Match: 7` or `If-Match: "7"`.
fn if_match(req: &Request<Incoming>) -> Option<IfMatch> {
    let v = req.headers().get(header::IF_MATCH)?;
    let parsed = v
        .to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok());
    Some(parsed.map_or(IfMatch::Malformed, IfMatch::Generation))
}

/// A boolean query flag: absent is false; bare (`?dry_run`) is true; otherwise `true`,
/// `false`, `1` or `0` in any case (the last occurrence wins). Anything else is an error, so a
/// misspelt `?dry_run=yes` changes nothing instead of applying the change for real.
fn query_flag(query: &str, name: &str) -> Result<bool, String> {
    let mut value = false;
    for kv in query.split('&') {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        if k != name {
            continue;
        }
        value = match v {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                let shown: String = v.chars().take(32).collect();
                return Err(format!(
                    "query flag {name}={shown}: use true, false, 1 or 0 (or a bare {name})"
                ));
            }
        };
    }
    Ok(value)
}

/// Decodes `%XX` escapes (addresses like `[::1]:8080` arrive escaped).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn answer<T: serde::Serialize>(r: Result<T, ControlError>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => control_error(&e),
    }
}

fn control_error(e: &ControlError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: e.to_string(),
        generation: e.generation(),
    };
    json(status, &body)
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    json_body(status, body)
}

/// An answer of JSON already serialized.
fn json_body(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = ErrorBody {
        error: msg.to_string(),
        generation: None,
    };
    json(status, &body)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}
