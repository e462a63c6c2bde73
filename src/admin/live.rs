//! The live view over HTTP: `/admin/stats` (the per-pool series and rollout judgements),
//! `/admin/audit` (the last applied changes) and `/admin/events` (both as server-sent
//! events). Open reads, like `GET /admin/services/{svc}`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use indexmap::IndexMap;
use serde::ser::{Serialize, SerializeMap as _, Serializer};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{AdminState, control_error, error, json, json_body};
use crate::observe::{audit, sampler};
use crate::proxy::conn::RequestGuard;
use crate::server::OpenGuard;

const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// One point a second: a shorter window would hold none.
const MIN_WINDOW: Duration = sampler::INTERVAL;
const DEFAULT_AUDIT_LIMIT: usize = 100;
/// A comment line this often keeps proxies and browsers from timing out a quiet stream, and
/// finds a client that went away.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events queued ahead of a slow client; past it, the client skips events rather than
/// making anyone wait.
const CLIENT_BACKLOG: usize = 16;
/// An event not taken by the connection this long after it was queued means the client
/// reads nothing (the socket's small send buffer is full): it is gone or stuck, and its
/// connection is closed so that it does not hold one of the few places for long. Two
/// heartbeats: a client that reads keeps up with far less.
const WRITE_DEADLINE: Duration = Duration::from_secs(2 * HEARTBEAT.as_secs());
/// Event streams open at once at most. Each one holds an admin connection (of 256) for as
/// long as it lasts; past this, a 503, so that streams never crowd out `/healthz`,
/// `/readyz` and `ctl`.
pub(super) const MAX_EVENT_STREAMS: usize = 32;

/// The value of `name` in a query string (the last one wins).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .next_back()
}

/// Answers of `/admin/stats` kept, one per window asked for.
const STATS_CACHE_ENTRIES: usize = 4;

/// `/admin/stats` answers built within the last sampler interval, by window. The series
/// moves once a second, so a crowd asking for the same window shares one answer (one
/// buffer, referenced by every response) instead of each building megabytes of its own:
/// 100 parallel `window=1h` requests grew the process by ~80 MB, never given back.
#[derive(Default)]
pub(crate) struct StatsCache(tokio::sync::Mutex<Vec<CachedStats>>);

impl StatsCache {
    /// Lets answers older than the sampler interval go, so that a burst's answers (megabytes
    /// for an hour of many pools) are not kept until the next request.
    pub(super) fn prune(&self) {
        if let Ok(mut cache) = self.0.try_lock() {
            let now = tokio::time::Instant::now();
            cache.retain(|c| now.duration_since(c.built) < sampler::INTERVAL);
        }
    }
}

struct CachedStats {
    window: Duration,
    built: tokio::time::Instant,
    body: Bytes,
}

/// `GET /admin/stats?window=15m`.
pub(super) async fn stats(state: &AdminState, query: &str) -> Response<Full<Bytes>> {
    let window = match query_value(query, "window") {
        None => DEFAULT_WINDOW,
        Some(v) => match humantime::parse_duration(v) {
            Ok(w) if w <= sampler::MAX_WINDOW && w >= MIN_WINDOW => w,
            _ => {
                let shown: String = v.chars().take(32).collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("window={shown}: give a duration from 1s to 1h, like 15m"),
                );
            }
        },
    };
    // Held while an answer is built: one build at a time, and whoever waited finds it built.
    let mut cache = state.stats_cache.0.lock().await;
    let now = tokio::time::Instant::now();
    cache.retain(|c| now.duration_since(c.built) < sampler::INTERVAL);
    if let Some(hit) = cache.iter().find(|c| c.window == window) {
        return json_body(StatusCode::OK, hit.body.clone());
    }
    match build_stats(state, window).await {
        Ok(body) => {
            if cache.len() >= STATS_CACHE_ENTRIES {
                cache.remove(0);
            }
            cache.push(CachedStats {
                window,
                built: now,
                body: body.clone(),
            });
            json_body(StatusCode::OK, body)
        }
        Err(r) => r,
    }
}

/// The answer of `/admin/stats` for `window`, serialized.
async fn build_stats(state: &AdminState, window: Duration) -> Result<Bytes, Response<Full<Bytes>>> {
    let series = state.observer.series.window(window).await;
    let names: Vec<String> = state
        .tables
        .load()
        .services
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    let mut services = Vec::with_capacity(names.len());
    for name in names {
        let view = match state.control.get(&name).await {
            Ok(v) => v,
            // Removed by a reload since the table was read.
            Err(crate::control::ControlError::NotFound(_)) => continue,
            Err(e) => return Err(control_error(&e)),
        };
        let history: Vec<Value> = view
            .rollout
            .as_ref()
            .and_then(|r| serde_json::to_value(&r.history).ok())
            .and_then(|h| h.as_array().map(|h| h.iter().map(judgement).collect()))
            .unwrap_or_default();
        services.push((name, history));
    }
    let answer = StatsAnswer { series, services };
    // An hour of many pools is megabytes of JSON: written on a blocking thread, not on the
    // runtime that serves the admin API and the control task.
    match tokio::task::spawn_blocking(move || serde_json::to_vec(&answer)).await {
        Ok(Ok(body)) => Ok(Bytes::from(body)),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// `/admin/stats`' answer, serialized straight from the points and compact: a JSON value per
/// point, pretty-printed, made an hour of many pools tens of MB built in memory first.
/// `{"interval_s": 1, "services": {svc: {"pools": {pool: [point, ...]}, "rollout_history":
/// [...]}}}`, services in the table's order.
struct StatsAnswer {
    series: sampler::Window,
    /// Each service shown, with its rollout judgements.
    services: Vec<(String, Vec<Value>)>,
}

impl Serialize for StatsAnswer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("interval_s", &sampler::INTERVAL.as_secs())?;
        m.serialize_entry("services", &Services(self))?;
        m.end()
    }
}

struct Services<'a>(&'a StatsAnswer);

impl Serialize for Services<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.services.iter().map(|(name, history)| {
            let service = ServiceStats {
                pools: Pools(self.0.series.get(name.as_str())),
                rollout_history: history,
            };
            (name, service)
        }))
    }
}

#[derive(serde::Serialize)]
struct ServiceStats<'a> {
    pools: Pools<'a>,
    rollout_history: &'a [Value],
}

/// A service's pools and their points; none yet is `{}`.
struct Pools<'a>(Option<&'a IndexMap<std::sync::Arc<str>, Vec<sampler::Point>>>);

impl Serialize for Pools<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .into_iter()
                .flatten()
                .map(|(pool, points)| (&**pool, points)),
        )
    }
}

/// A rollout history entry as `/admin/stats` gives it: the judgement's figures apart from
/// what step it was and what came of it.
fn judgement(entry: &Value) -> Value {
    let mut figures = entry.as_object().cloned().unwrap_or_default();
    let mut take = |k: &str| figures.remove(k).unwrap_or(Value::Null);
    let out = json!({
        "step": take("step"),
        "weight": take("weight"),
        "started": take("started"),
        "judged_at": take("at"),
        "verdict": take("outcome"),
        "detail": take("detail"),
        "canary_requests": take("canary_requests"),
        "baseline_requests": take("baseline_requests"),
    });
    figures.remove("passed");
    let mut out = out;
    if let Some(o) = out.as_object_mut() {
        o.insert("figures".to_string(), Value::Object(figures));
    }
    out
}

/// `GET /admin/audit?limit=100`.
pub(super) fn audit(state: &AdminState, query: &str) -> Response<Full<Bytes>> {
    let limit = match query_value(query, "limit") {
        None => DEFAULT_AUDIT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=audit::CAPACITY).contains(&n) => n,
            _ => {
                let shown: String = v.chars().take(32).collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("limit={shown}: give a number from 1 to {}", audit::CAPACITY),
                );
            }
        },
    };
    let entries = state.observer.audit.latest(limit);
    let entries: Vec<&audit::AuditEntry> = entries.iter().map(|e| &**e).collect();
    json(StatusCode::OK, &entries)
}

/// `GET /admin/events`: `change` and `stats` events until the client goes away. The body
/// carries the request guard, so the connection counts as busy (not idle) while it streams,
/// and a place among the [`MAX_EVENT_STREAMS`]. `conn` closes the connection when the
/// client stops taking events.
pub(super) fn events(
    state: &AdminState,
    guard: RequestGuard,
    streams: &Arc<AtomicUsize>,
    conn: &super::conns::AdminConn,
) -> Response<Either<Full<Bytes>, EventBody>> {
    let Some(place) = OpenGuard::take(streams, MAX_EVENT_STREAMS) else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many event streams ({MAX_EVENT_STREAMS}); close one, or poll /admin/stats instead"
            ),
        );
        // EventSource gives up on a 503; a script gets told when to retry.
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
        return r.map(Either::Left);
    };
    conn.mark_event_stream();
    let (tx, rx) = mpsc::channel(CLIENT_BACKLOG);
    tokio::spawn(forward(state.observer.subscribe(), tx, conn.close.clone()));
    let mut r = Response::new(EventBody {
        rx,
        _guard: guard,
        _place: place,
    });
    event_headers(&mut r);
    r.map(Either::Right)
}

/// `HEAD /admin/events`: the stream's headers, without opening one.
pub(super) fn events_head() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    event_headers(&mut r);
    r
}

fn event_headers<B>(r: &mut Response<B>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
}

/// Copies events to one client until it goes away. A client too slow for the feed loses
/// the events it lagged behind on (the next `stats` event has the figures again); one that
/// leaves an event untaken for [`WRITE_DEADLINE`] has its connection closed through `conn`:
/// dropping the queue alone would not end a stream whose socket is not written to.
async fn forward(
    mut events: broadcast::Receiver<crate::observe::Event>,
    tx: mpsc::Sender<Bytes>,
    conn: CancellationToken,
) {
    // When each chunk still in the queue was queued, oldest first: the connection takes them
    // in order, so the queue's length says how many of these are still there.
    let mut queued: VecDeque<tokio::time::Instant> = VecDeque::with_capacity(CLIENT_BACKLOG);
    // First bytes at once: the client knows the stream is open; `retry` paces reconnects.
    if tx
        .try_send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
        .is_err()
    {
        return;
    }
    queued.push_back(tokio::time::Instant::now());
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        let waiting = CLIENT_BACKLOG - tx.capacity();
        while queued.len() > waiting {
            queued.pop_front();
        }
        let deadline = queued.front().map(|at| *at + WRITE_DEADLINE);
        let chunk = tokio::select! {
            _ = tx.closed() => return,
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                // Taken just now? Checked again at the top; else it is overdue.
                if CLIENT_BACKLOG - tx.capacity() < queued.len() {
                    continue;
                }
                debug!("event stream client took no event for {WRITE_DEADLINE:?}: closing it");
                conn.cancel();
                return;
            }
            _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            e = events.recv() => match e {
                Ok(e) => e.frame,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        match tx.try_send(chunk) {
            Ok(()) => queued.push_back(tokio::time::Instant::now()),
            // Skipped: this client has not taken the last few yet.
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// The event stream's body: chunks from [`forward`], the request guard and the stream's
/// place under the cap (given back when the body is dropped, i.e. the stream ends).
pub struct EventBody {
    rx: mpsc::Receiver<Bytes>,
    _guard: RequestGuard,
    _place: OpenGuard,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that takes nothing has its connection closed when the first chunk has waited
    /// the write deadline; one that takes a chunk now and then is left alone.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_closed() {
        let (events, _) = broadcast::channel(8);
        let (tx, rx) = mpsc::channel(CLIENT_BACKLOG);
        let conn = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(forward(events.subscribe(), tx, conn.clone()));
        tokio::time::timeout(Duration::from_secs(3600), conn.cancelled())
            .await
            .expect("closed");
        // The greeting, queued at once, was never taken.
        assert_eq!(started.elapsed(), WRITE_DEADLINE);
        task.await.expect("forward ends");
        drop(rx);

        let (tx, mut rx) = mpsc::channel(CLIENT_BACKLOG);
        let conn = CancellationToken::new();
        let task = tokio::spawn(forward(events.subscribe(), tx, conn.clone()));
        // Slow, but it keeps up with a heartbeat every 15 s.
        let reader = async {
            loop {
                tokio::time::sleep(HEARTBEAT - Duration::from_secs(5)).await;
                if rx.recv().await.is_none() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = conn.cancelled() => panic!("a slow reader was closed"),
            _ = reader => panic!("the stream ended"),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        task.abort();
    }

    /// The answer as it was built before, through a JSON value per point: the same JSON.
    #[test]
    fn stats_keep_their_shape() {
        let point = |s| sampler::Point {
            t: std::time::UNIX_EPOCH + Duration::from_secs(s),
            rps: 2.5,
            error_ratio: None,
            p50_ms: Some(0.8),
            p99_ms: None,
            inflight: 1,
        };
        let mut series = sampler::Window::new();
        series.entry("shop".into()).or_default().extend([
            ("stable".into(), vec![point(1), point(2)]),
            ("canary".into(), vec![point(2)]),
        ]);
        let answer = StatsAnswer {
            series,
            services: vec![
                ("shop".to_string(), vec![json!({"step": 0})]),
                ("new".to_string(), vec![]),
            ],
        };
        let text = serde_json::to_string(&answer).expect("json");
        let p = |s| json!(point(s));
        let want = json!({
            "interval_s": 1,
            "services": {
                "shop": {
                    "pools": {"stable": [p(1), p(2)], "canary": [p(2)]},
                    "rollout_history": [{"step": 0}],
                },
                "new": {"pools": {}, "rollout_history": []},
            },
        });
        assert_eq!(text, want.to_string());
        assert!(text.contains(r#"{"t":"1970-01-01T00:00:01.000Z","rps":2.5,"error_ratio":null,"#));
    }

    #[test]
    fn query_values_and_judgements() {
        assert_eq!(query_value("a=1&window=5m&b", "window"), Some("5m"));
        assert_eq!(query_value("window=1m&window=2m", "window"), Some("2m"));
        assert_eq!(query_value("b", "window"), None);
        let j = judgement(&json!({
            "step": 1, "weight": 25, "outcome": "passed", "passed": true, "detail": null,
            "canary_requests": 80, "baseline_requests": 300,
            "started": "2026-01-01T00:00:00Z", "at": "2026-01-01T00:00:30Z",
            "confidence": 0.99, "canary": {"requests": 80}, "baseline": {"requests": 300},
        }));
        assert_eq!(j["verdict"], "passed");
        assert_eq!(j["judged_at"], "2026-01-01T00:00:30Z");
        assert_eq!(
            j["figures"],
            json!({"confidence": 0.99, "canary": {"requests": 80}, "baseline": {"requests": 300}})
        );
    }
}
