//! Simulated rollouts: the real `RolloutController`, fed seeded random traffic on a simulated
//! clock, so thousands of rollouts run in a moment. Shared by `tests/rollout_sim.rs` (which
//! asserts the false-abort and detection rates) and `benches/rollout_sim.rs` (which prints the
//! table in the docs).

use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Binomial, Distribution};
use switchyard::config::Rollout;
use switchyard::control::rollout::{RolloutController, RolloutState};
use switchyard::stats::{BUCKETS_SECONDS, Snapshot};
use tokio::time::Instant;

/// A latency distribution: a few point masses `(milliseconds, probability)`.
#[derive(Debug, Clone)]
pub struct Latency(pub Vec<(f64, f64)>);

impl Latency {
    /// 80% at 10 ms, 19.5% at 40 ms, 0.5% at 200 ms: p99 in the 30–50 ms bucket.
    pub fn typical() -> Latency {
        Latency(vec![(10.0, 0.8), (40.0, 0.195), (200.0, 0.005)])
    }

    /// The true p99 of [`Latency::typical`]: 0.5% of requests are slower than it.
    pub const TYPICAL_P99_MS: f64 = 40.0;

    /// Every request `extra_ms` slower.
    pub fn shifted(&self, extra_ms: f64) -> Latency {
        Latency(self.0.iter().map(|&(ms, p)| (ms + extra_ms, p)).collect())
    }

    /// Bucket index and probability of each mass.
    fn buckets(&self) -> Vec<(usize, f64)> {
        self.0
            .iter()
            .map(|&(ms, p)| {
                let seconds = ms / 1000.0;
                (BUCKETS_SECONDS.partition_point(|&b| b < seconds), p)
            })
            .collect()
    }
}

/// One pool's behaviour.
#[derive(Debug, Clone)]
pub struct Pool {
    pub error_rate: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub cfg: Rollout,
    /// Requests per second through the service (split by the rollout's weight).
    pub rps: f64,
    pub baseline: Pool,
    pub canary: Pool,
    /// How often the controller looks (the control task ticks every 250 ms).
    pub tick: Duration,
    /// A rollout still running after this long is counted as unfinished.
    pub limit: Duration,
}

/// How one simulated rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub state: RolloutState,
    /// Simulated time from start to the end state.
    pub after: Duration,
    /// The step (0-based) it ended on.
    pub step: usize,
    pub reason: Option<String>,
}

/// Runs one rollout with `seed`.
pub fn run(s: &Scenario, seed: u64) -> Run {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_705_200);
    let mut ctl = RolloutController::new(s.cfg.clone(), 100);
    let (mut base, mut can) = (Snapshot::default(), Snapshot::default());
    let (base_lat, can_lat) = (s.baseline.latency.buckets(), s.canary.latency.buckets());
    let started = ctl.start(t0, wall0, base, can);
    assert!(started.is_ok(), "{started:?}");
    let per_tick = s.rps * s.tick.as_secs_f64();
    let (mut carry_base, mut carry_can) = (0.0, 0.0);
    let mut elapsed = Duration::ZERO;
    while elapsed < s.limit {
        elapsed += s.tick;
        let share = f64::from(ctl.weight()) / 100.0;
        let n_can = whole(&mut carry_can, per_tick * share);
        let n_base = whole(&mut carry_base, per_tick * (1.0 - share));
        serve(&mut rng, &mut can, n_can, &s.canary, &can_lat);
        serve(&mut rng, &mut base, n_base, &s.baseline, &base_lat);
        let _ = ctl.tick(t0 + elapsed, wall0 + elapsed, &base, &can);
        if ctl.state() != RolloutState::Progressing {
            break;
        }
    }
    Run {
        state: ctl.state(),
        after: elapsed,
        step: ctl.step(),
        reason: ctl.reason().map(str::to_owned),
    }
}

/// The whole requests of `amount`, the fraction carried to the next tick.
fn whole(carry: &mut f64, amount: f64) -> u64 {
    *carry += amount;
    let n = carry.floor();
    *carry -= n;
    n as u64
}

/// `n` requests into a cumulative snapshot: errors and latency buckets drawn at random.
fn serve(rng: &mut SmallRng, snap: &mut Snapshot, n: u64, pool: &Pool, latency: &[(usize, f64)]) {
    if n == 0 {
        return;
    }
    let errors = draw(rng, n, pool.error_rate);
    snap.by_class[4] += errors;
    snap.by_class[1] += n - errors;
    // A multinomial draw as a chain of binomials.
    let (mut left, mut mass_left) = (n, 1.0);
    for &(bucket, p) in latency {
        let k = if mass_left <= p {
            left
        } else {
            draw(rng, left, p / mass_left)
        };
        snap.buckets[bucket] += k;
        left -= k;
        mass_left -= p;
        if left == 0 {
            break;
        }
    }
}

fn draw(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    match Binomial::new(n, p.clamp(0.0, 1.0)) {
        Ok(b) => b.sample(rng),
        Err(_) => 0,
    }
}

/// The outcome counts of `runs` seeded rollouts.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub runs: usize,
    pub aborted: usize,
    pub promoted: usize,
    pub paused: usize,
    /// Simulated times to abort, sorted.
    pub abort_times: Vec<Duration>,
    pub durations: Vec<Duration>,
}

impl Tally {
    pub fn of(s: &Scenario, runs: usize, first_seed: u64) -> Tally {
        let mut t = Tally {
            runs,
            ..Tally::default()
        };
        for seed in first_seed..first_seed + runs as u64 {
            let r = run(s, seed);
            match r.state {
                RolloutState::Aborted => {
                    t.aborted += 1;
                    t.abort_times.push(r.after);
                }
                RolloutState::Promoted => t.promoted += 1,
                RolloutState::Paused => t.paused += 1,
                _ => {}
            }
            t.durations.push(r.after);
        }
        t.abort_times.sort();
        t.durations.sort();
        t
    }

    pub fn abort_rate(&self) -> f64 {
        self.aborted as f64 / self.runs as f64
    }

    pub fn median_abort_time(&self) -> Option<Duration> {
        self.abort_times.get(self.abort_times.len() / 2).copied()
    }
}

/// The rollout defaults (steps, interval, min_requests, confidence) with the given thresholds.
pub fn defaults(
    max_error_rate: Option<f64>,
    max_error_rate_increase: Option<f64>,
    max_p99_increase: Option<Duration>,
) -> Rollout {
    Rollout {
        baseline: "stable".into(),
        canary: "canary".into(),
        steps: vec![5, 10, 25, 50, 100],
        interval: Duration::from_secs(60),
        min_requests: 50,
        max_error_rate,
        max_error_rate_increase,
        max_p99_increase,
        max_p99: None,
        pause_at: Vec::new(),
        webhooks: Vec::new(),
        prometheus: None,
        checks: Vec::new(),
        confidence: 0.99,
        auto_start: false,
    }
}

/// A scenario at `rps` with both pools at `baseline_error`/typical latency, the canary at
/// `canary_error` and `extra_ms` slower.
pub fn scenario(
    cfg: Rollout,
    rps: f64,
    baseline_error: f64,
    canary_error: f64,
    extra_ms: f64,
) -> Scenario {
    Scenario {
        cfg,
        rps,
        baseline: Pool {
            error_rate: baseline_error,
            latency: Latency::typical(),
        },
        canary: Pool {
            error_rate: canary_error,
            latency: Latency::typical().shifted(extra_ms),
        },
        tick: Duration::from_millis(250),
        limit: Duration::from_secs(3600),
    }
}

/// How much slower than [`Latency::typical`] a canary must be for its true p99 to be `p99_ms`
/// (at least the typical p99).
pub fn p99_shift(p99_ms: f64) -> f64 {
    (p99_ms - Latency::TYPICAL_P99_MS).max(0.0)
}
