//! The per-pool series: once a second, the cumulative counters of every pool in the live
//! table are read and diffed with the previous reading into one point (req/s, 5xx ratio,
//! p50/p99, inflight), kept for an hour. A task of its own on the control thread: the proxy
//! only keeps the counters it always kept.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use indexmap::IndexMap;
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Observer;
use crate::router::RoutingTable;
use crate::stats::Snapshot;

pub const INTERVAL: Duration = Duration::from_secs(1);
/// One hour of points per pool.
pub const CAPACITY: usize = 3600;
/// The longest `window` that `/admin/stats` answers.
pub const MAX_WINDOW: Duration = Duration::from_secs(CAPACITY as u64);

/// One pool over one interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// The end of the interval.
    #[serde(serialize_with = "rfc3339")]
    pub t: SystemTime,
    pub rps: f64,
    /// 5xx / all; null without requests (as are the latencies).
    pub error_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub inflight: usize,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

struct PoolSeries {
    points: VecDeque<Point>,
    last: Snapshot,
    last_at: Instant,
    /// Set by each sample that found the pool: a pool gone from the table is forgotten.
    seen: bool,
}

/// Pool → series, of one service.
type ByPool = IndexMap<Arc<str>, PoolSeries>;

/// Service → pool → series; locked once a second by the sampler and briefly by readers,
/// never by the request path.
#[derive(Default)]
pub struct Series {
    pools: tokio::sync::Mutex<IndexMap<Arc<str>, ByPool>>,
}

/// Service → pool → points.
pub type Window = IndexMap<Arc<str>, IndexMap<Arc<str>, Vec<Point>>>;

impl Series {
    /// The points from the last `window`, oldest first.
    pub async fn window(&self, window: Duration) -> Window {
        let from = SystemTime::now()
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let pools = self.pools.lock().await;
        pools
            .iter()
            .map(|(svc, by_pool)| {
                let by_pool = by_pool
                    .iter()
                    .map(|(pool, s)| {
                        let start = s.points.partition_point(|p| p.t <= from);
                        (pool.clone(), s.points.range(start..).cloned().collect())
                    })
                    .collect();
                (svc.clone(), by_pool)
            })
            .collect()
    }

    /// Takes one reading of every pool; returns the new points (service → pool → point).
    async fn sample(&self, table: &RoutingTable) -> Window {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let readings: Vec<_> = table
            .services
            .iter()
            .flat_map(|svc| {
                svc.pools.iter().map(|p| {
                    let inflight = p.endpoints.iter().map(|e| e.inflight()).sum::<usize>();
                    (
                        svc.name.clone(),
                        p.name.clone(),
                        p.metrics.stats.snapshot(),
                        inflight,
                    )
                })
            })
            .collect();
        let mut latest = Window::new();
        let mut pools = self.pools.lock().await;
        for by_pool in pools.values_mut() {
            for s in by_pool.values_mut() {
                s.seen = false;
            }
        }
        for (svc, pool, snap, inflight) in readings {
            let by_pool = pools.entry(svc.clone()).or_default();
            let Some(s) = by_pool.get_mut(&pool) else {
                // The first reading only opens the first interval.
                by_pool.insert(
                    pool,
                    PoolSeries {
                        points: VecDeque::new(),
                        last: snap,
                        last_at: now,
                        seen: true,
                    },
                );
                continue;
            };
            let point = point(&snap.since(&s.last), now - s.last_at, wall, inflight);
            (s.last, s.last_at, s.seen) = (snap, now, true);
            if s.points.len() == CAPACITY {
                s.points.pop_front();
            }
            s.points.push_back(point.clone());
            latest.entry(svc).or_default().insert(pool, vec![point]);
        }
        for by_pool in pools.values_mut() {
            by_pool.retain(|_, s| s.seen);
        }
        pools.retain(|_, by_pool| !by_pool.is_empty());
        latest
    }
}

/// The figures of one interval of `elapsed`.
fn point(w: &Snapshot, elapsed: Duration, t: SystemTime, inflight: usize) -> Point {
    let ms = |q: f64| w.quantile(q).map(crate::stats::millis_f64);
    Point {
        t,
        // The measured interval, not the nominal second: a late tick does not inflate it.
        // To the thousandth: the digits past it are the clock's noise.
        rps: (w.requests() as f64 / elapsed.as_secs_f64().max(1e-3) * 1e3).round() / 1e3,
        error_ratio: w.error_rate(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        inflight,
    }
}

/// Samples the live table every [`INTERVAL`] until `token` is cancelled, and publishes each
/// round's points as a `stats` event.
pub async fn run(
    tables: Arc<ArcSwap<RoutingTable>>,
    observer: Arc<Observer>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    // A late round measures the longer interval it covers; catching up would add nothing.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let table = tables.load_full();
        let latest = observer.series.sample(&table).await;
        drop(table);
        if latest.is_empty() {
            // The first round only opens the first interval.
            continue;
        }
        let services: serde_json::Map<String, serde_json::Value> = latest
            .into_iter()
            .map(|(svc, by_pool)| {
                let pools: serde_json::Map<String, serde_json::Value> = by_pool
                    .into_iter()
                    .filter_map(|(pool, mut points)| {
                        let p = points.pop()?;
                        Some((pool.to_string(), serde_json::to_value(p).ok()?))
                    })
                    .collect();
                (svc.to_string(), serde_json::json!({ "pools": pools }))
            })
            .collect();
        observer.publish(
            "stats",
            &serde_json::json!({
                "t": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "services": services,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_the_interval_s_figures() {
        let stats = crate::stats::PoolStats::default();
        let start = stats.snapshot();
        for _ in 0..9 {
            stats.record(200, Duration::from_micros(800));
        }
        stats.record(502, Duration::from_millis(180));
        let w = stats.snapshot().since(&start);
        let p = point(&w, Duration::from_secs(2), SystemTime::UNIX_EPOCH, 3);
        assert_eq!(p.rps, 5.0);
        assert_eq!(p.error_ratio, Some(0.1));
        assert!(p.p50_ms.is_some_and(|ms| ms > 0.5 && ms <= 1.0), "{p:?}");
        assert!(p.p99_ms.is_some_and(|ms| ms > 150.0), "{p:?}");
        let idle = point(&Snapshot::default(), INTERVAL, SystemTime::UNIX_EPOCH, 0);
        assert_eq!((idle.rps, idle.error_ratio, idle.p99_ms), (0.0, None, None));
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["t"], "1970-01-01T00:00:00.000Z");
    }
}
