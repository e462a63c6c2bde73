//! Per-pool request statistics: lock-free counters and a fixed-bucket latency histogram.
//! The proxy records into them; `/metrics` renders them and the rollout controller judges
//! canary steps on the difference of two snapshots (a window).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (0.5 ms to 10 s; `+Inf` follows).
/// Fine enough around common p99s for a 200 ms `max_p99_increase` to be judged.
pub const BUCKETS_SECONDS: [f64; 25] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];
const N: usize = BUCKETS_SECONDS.len() + 1;

/// Bucket bounds in microseconds, for integer comparisons on the request path.
const BOUNDS_MICROS: [u64; 25] = {
    let mut out = [0u64; 25];
    let mut i = 0;
    while i < 25 {
        out[i] = (BUCKETS_SECONDS[i] * 1_000_000.0) as u64;
        i += 1;
    }
    out
};

/// Counters of one pool; cumulative since the pool first appeared (they survive reloads).
#[derive(Debug)]
pub struct PoolStats {
    /// By status class: index 0 = 1xx … 4 = 5xx.
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; N],
    sum_micros: AtomicU64,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// The status class index of a status code (1xx → 0 … 5xx → 4).
#[inline]
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

impl PoolStats {
    /// One finished request: its status and how long it took.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.by_class[class_index(status)].fetch_add(1, Ordering::Relaxed);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// Counts at one moment, or (from [`Snapshot::since`]) over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub by_class: [u64; 5],
    /// Per bucket, not cumulative; the last is `+Inf`.
    pub buckets: [u64; N],
    pub sum_micros: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            by_class: [0; 5],
            buckets: [0; N],
            sum_micros: 0,
        }
    }
}

impl Snapshot {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn errors_5xx(&self) -> u64 {
        self.by_class[4]
    }

    /// 5xx / requests; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.errors_5xx() as f64 / n as f64)
    }

    /// Both together (a fleet's replicas' windows, summed).
    pub fn plus(&self, other: &Snapshot) -> Snapshot {
        Snapshot {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_add(other.by_class[i])),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_add(other.buckets[i])),
            sum_micros: self.sum_micros.saturating_add(other.sum_micros),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_sub(earlier.by_class[i])),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without requests. In `+Inf` it is the last bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.buckets.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let Some(&upper) = BUCKETS_SECONDS.get(i) else {
                    return Some(Duration::from_secs_f64(BUCKETS_SECONDS[N - 2]));
                };
                let lower = if i == 0 { 0.0 } else { BUCKETS_SECONDS[i - 1] };
                let frac = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(Duration::from_secs_f64(lower + (upper - lower) * frac));
            }
            below += count;
        }
        Some(Duration::from_secs_f64(BUCKETS_SECONDS[N - 2]))
    }

    /// Prometheus text lines `NAME_bucket{labels,le}`, `NAME_sum`, `NAME_count`.
    pub fn render_histogram(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count;
            match BUCKETS_SECONDS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Milliseconds with microsecond precision, for JSON.
pub fn millis_f64(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_classes_buckets_and_quantiles() {
        let s = PoolStats::default();
        for _ in 0..98 {
            s.record(200, Duration::from_micros(800)); // bucket le=0.001
        }
        s.record(503, Duration::from_millis(180)); // le=0.2
        s.record(404, Duration::from_secs(20)); // +Inf
        let snap = s.snapshot();
        assert_eq!(snap.requests(), 100);
        assert_eq!(snap.errors_5xx(), 1);
        assert_eq!(snap.by_class[3], 1);
        assert_eq!(snap.error_rate(), Some(0.01));
        assert_eq!(snap.buckets[1], 98);
        let p50 = snap.quantile(0.5).expect("p50");
        assert!(
            p50 > Duration::from_micros(500) && p50 <= Duration::from_millis(1),
            "{p50:?}"
        );
        let p99 = snap.quantile(0.99).expect("p99");
        assert!(
            p99 > Duration::from_millis(150) && p99 <= Duration::from_millis(200),
            "{p99:?}"
        );
        assert_eq!(Snapshot::default().quantile(0.99), None);
    }

    #[test]
    fn windows_are_differences() {
        let s = PoolStats::default();
        s.record(500, Duration::from_millis(1));
        let start = s.snapshot();
        s.record(200, Duration::from_millis(1));
        s.record(200, Duration::from_millis(1));
        let w = s.snapshot().since(&start);
        assert_eq!((w.requests(), w.errors_5xx()), (2, 0));
    }

    #[test]
    fn renders_cumulative_buckets() {
        let s = PoolStats::default();
        s.record(200, Duration::from_micros(100));
        s.record(200, Duration::from_secs(60));
        let mut out = String::new();
        s.snapshot()
            .render_histogram(&mut out, "x_seconds", "pool=\"a\"");
        assert!(
            out.contains("x_seconds_bucket{pool=\"a\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"a\",le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{pool=\"a\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{pool=\"a\"} 2\n"), "{out}");
    }
}
