//! Rollout controller tests: time is paused and advanced; snapshots come from real PoolStats.
use super::*;
use crate::stats::PoolStats;
use serde_json::{Value, json};

/// The figures as the API writes them.
fn fig(f: &crate::api::Figures) -> Value {
    serde_json::to_value(f).unwrap_or_default()
}
use std::time::{Duration, UNIX_EPOCH};
use tokio::time::advance;

const SECS: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

fn cfg() -> Rollout {
    Rollout {
        baseline: "stable".into(),
        canary: "canary".into(),
        steps: vec![5, 10, 25, 50, 100],
        interval: MINUTE,
        min_requests: 50,
        max_error_rate: Some(0.05),
        max_error_rate_increase: Some(0.01),
        max_p99_increase: Some(Duration::from_millis(200)),
        max_p99: None,
        pause_at: Vec::new(),
        webhooks: Vec::new(),
        prometheus: None,
        checks: Vec::new(),
        confidence: 0.99,
        auto_start: false,
    }
}

/// A controller with real pool stats and a wall clock that follows paused tokio time.
struct Rig {
    ctl: RolloutController,
    base: PoolStats,
    can: PoolStats,
    t0: Instant,
}

/// 2026-11-26T15:00:00Z
const WALL0: u64 = 1_795_705_200;

impl Rig {
    fn new(cfg: Rollout, total: u32) -> Rig {
        Rig {
            ctl: RolloutController::new(cfg, total),
            base: PoolStats::default(),
            can: PoolStats::default(),
            t0: Instant::now(),
        }
    }

    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(WALL0) + (Instant::now() - self.t0)
    }

    fn start(&mut self) -> Result<Split, RolloutError> {
        let wall = self.wall();
        self.ctl.start(
            Instant::now(),
            wall,
            self.base.snapshot(),
            self.can.snapshot(),
        )
    }

    fn resume(&mut self) -> Result<(), RolloutError> {
        let wall = self.wall();
        self.ctl.resume(
            Instant::now(),
            wall,
            self.base.snapshot(),
            self.can.snapshot(),
        )
    }

    fn pause(&mut self) -> Result<(), RolloutError> {
        let wall = self.wall();
        self.ctl.pause(Instant::now(), wall)
    }

    fn promote(&mut self) -> Result<Split, RolloutError> {
        let wall = self.wall();
        self.ctl.promote(Instant::now(), wall)
    }

    fn abort(&mut self, reason: &str) -> Result<Split, RolloutError> {
        let wall = self.wall();
        self.ctl.abort(Instant::now(), wall, reason.to_string())
    }

    fn tick(&mut self) -> Option<Split> {
        let wall = self.wall();
        self.ctl.tick(
            Instant::now(),
            wall,
            &self.base.snapshot(),
            &self.can.snapshot(),
        )
    }

    /// Records `ok` 200s and `errors` 500s of `ms` milliseconds into the canary.
    fn canary(&self, ok: u64, errors: u64, ms: u64) {
        record(&self.can, ok, errors, ms);
    }

    fn baseline(&self, ok: u64, errors: u64, ms: u64) {
        record(&self.base, ok, errors, ms);
    }

    /// Healthy traffic on both pools, a full interval, one tick.
    async fn pass_step(&mut self) -> Option<Split> {
        self.canary(50, 0, 5);
        self.baseline(100, 0, 5);
        advance(MINUTE).await;
        self.tick()
    }
}

fn record(stats: &PoolStats, ok: u64, errors: u64, ms: u64) {
    for _ in 0..ok {
        stats.record(200, Duration::from_millis(ms));
    }
    for _ in 0..errors {
        stats.record(500, Duration::from_millis(ms));
    }
}

fn split(baseline: u32, canary: u32) -> Split {
    Split { baseline, canary }
}

#[test]
fn splits_floor_the_canary_share() {
    for (total, percent, want) in [
        (100, 5, split(95, 5)),
        (100, 100, split(0, 100)),
        (10_000, 25, split(7_500, 2_500)),
        (7, 5, split(7, 0)),
        (7, 50, split(4, 3)),
        (3, 0, split(3, 0)),
        (u32::MAX, 100, split(0, u32::MAX)),
        (u32::MAX, 50, split(u32::MAX - u32::MAX / 2, u32::MAX / 2)),
    ] {
        assert_eq!(Split::of(total, percent), want, "{total} at {percent}%");
    }
}

#[tokio::test(start_paused = true)]
async fn healthy_canary_steps_through_to_promoted() {
    for (total, want) in [
        (
            100,
            [
                split(95, 5),
                split(90, 10),
                split(75, 25),
                split(50, 50),
                split(0, 100),
            ],
        ),
        (
            10_000,
            [
                split(9_500, 500),
                split(9_000, 1_000),
                split(7_500, 2_500),
                split(5_000, 5_000),
                split(0, 10_000),
            ],
        ),
    ] {
        let mut rig = Rig::new(cfg(), total);
        assert_eq!(rig.ctl.state(), RolloutState::Idle);
        assert_eq!(rig.start(), Ok(want[0]));
        assert_eq!((rig.ctl.step(), rig.ctl.weight()), (0, 5));
        for (i, &next) in want.iter().enumerate().skip(1) {
            assert_eq!(rig.pass_step().await, Some(next), "total {total}, step {i}");
            assert_eq!(rig.ctl.step(), i);
            assert_eq!(rig.ctl.state(), RolloutState::Progressing);
            assert_eq!(rig.ctl.split(), Some(next));
        }
        // Passing the last step promotes.
        assert_eq!(rig.pass_step().await, Some(split(0, total)));
        assert_eq!(rig.ctl.state(), RolloutState::Promoted);
        assert_eq!((rig.ctl.step(), rig.ctl.weight()), (4, 100));
        let verdict = rig.ctl.last_verdict().expect("judged");
        assert!(verdict.passed());
        assert_eq!(verdict.canary_requests, 50);
        // Promoted is final: ticks do nothing.
        assert_eq!(rig.pass_step().await, None);
    }
}

#[tokio::test(start_paused = true)]
async fn pause_at_applies_the_step_then_waits_for_resume() {
    let mut rig = Rig::new(
        Rollout {
            steps: vec![10, 50, 100],
            pause_at: vec![50],
            webhooks: Vec::new(),
            prometheus: None,
            checks: Vec::new(),
            ..cfg()
        },
        100,
    );
    rig.start().unwrap();
    assert_eq!(
        rig.pass_step().await,
        Some(split(50, 50)),
        "the step applies"
    );
    assert_eq!(rig.ctl.state(), RolloutState::Paused);
    assert_eq!(rig.ctl.reason(), Some("paused at step 50% (pause_at)"));
    let view = rig.ctl.view();
    assert_eq!(view.waiting_for.as_deref(), Some("resume"));
    assert_eq!((view.step, view.weight), (1, 50));
    // However long and however much traffic: no judgement while paused.
    assert_eq!(rig.pass_step().await, None);
    assert_eq!(rig.ctl.state(), RolloutState::Paused);
    assert_eq!(rig.ctl.history().len(), 1);
    // Judgement of the step starts on resume: a full dwell and fresh requests.
    rig.resume().unwrap();
    assert_eq!(rig.ctl.reason(), None);
    assert_eq!(rig.ctl.view().waiting_for, None);
    rig.canary(50, 0, 5);
    advance(MINUTE / 2).await;
    assert_eq!(rig.tick(), None, "dwell restarted at resume");
    advance(MINUTE / 2).await;
    assert_eq!(rig.tick(), Some(split(0, 100)), "the next step applies");
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
}

#[tokio::test(start_paused = true)]
async fn pause_at_the_first_step_pauses_at_start_and_promote_ends_it() {
    let mut rig = Rig::new(
        Rollout {
            steps: vec![10, 100],
            pause_at: vec![10],
            ..cfg()
        },
        100,
    );
    assert_eq!(rig.start(), Ok(split(90, 10)));
    assert_eq!(rig.ctl.state(), RolloutState::Paused);
    assert_eq!(rig.ctl.reason(), Some("paused at step 10% (pause_at)"));
    assert_eq!(rig.promote(), Ok(split(0, 100)));
    assert_eq!(rig.ctl.state(), RolloutState::Promoted);
}

#[tokio::test(start_paused = true)]
async fn last_step_below_100_still_promotes_to_100() {
    let mut rig = Rig::new(
        Rollout {
            steps: vec![20, 60],
            ..cfg()
        },
        10,
    );
    assert_eq!(rig.start(), Ok(split(8, 2)));
    assert_eq!(rig.pass_step().await, Some(split(4, 6)));
    assert_eq!(rig.pass_step().await, Some(split(0, 10)));
    assert_eq!(
        (rig.ctl.state(), rig.ctl.step()),
        (RolloutState::Promoted, 1)
    );
    assert_eq!(rig.ctl.weight(), 100);
}

#[tokio::test(start_paused = true)]
async fn waits_for_min_requests_even_after_interval() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(49, 0, 5);
    rig.baseline(1_000, 0, 5);
    advance(10 * MINUTE).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(
        (rig.ctl.state(), rig.ctl.step()),
        (RolloutState::Progressing, 0)
    );
    assert!(rig.ctl.last_verdict().is_none(), "not judged yet");
    rig.canary(1, 0, 5);
    assert_eq!(rig.tick(), Some(split(90, 10)));
}

#[tokio::test(start_paused = true)]
async fn waits_for_interval_even_with_many_requests() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(5_000, 0, 5);
    rig.baseline(5_000, 0, 5);
    advance(MINUTE - SECS).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.step(), 0);
    assert!(rig.ctl.last_verdict().is_none());
    advance(SECS).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
    // The next step's window is new: the earlier 5000 requests do not count.
    advance(MINUTE).await;
    assert_eq!(rig.tick(), None);
}

#[tokio::test(start_paused = true)]
async fn error_rate_breach_aborts_at_once() {
    let mut rig = Rig::new(cfg(), 200);
    rig.start().unwrap();
    rig.pass_step().await.unwrap();
    rig.pass_step().await.unwrap();
    assert_eq!(rig.ctl.weight(), 25);
    rig.canary(20, 30, 5);
    rig.baseline(100, 0, 5);
    advance(SECS).await; // well before the interval
    assert_eq!(rig.tick(), Some(split(200, 0)));
    assert_eq!(rig.ctl.state(), RolloutState::Aborted);
    let reason = rig.ctl.reason().unwrap_or_default();
    assert!(
        reason.starts_with("canary 5xx 60.0% (≥ ")
            && reason.ends_with("at 99%, n=50) > 5.0% at step 25%"),
        "{reason}"
    );
    assert_eq!((rig.ctl.weight(), rig.ctl.step()), (0, 2));
    assert_eq!(rig.ctl.split(), Some(split(200, 0)));
    let verdict = rig.ctl.last_verdict().expect("judged");
    assert_eq!(verdict.outcome, Outcome::Breached);
    assert_eq!(verdict.detail.as_deref(), Some(reason));
    assert_eq!(
        (verdict.canary_requests, verdict.step, verdict.weight),
        (50, 2, 25)
    );
    assert_eq!(fig(&verdict.figures)["canary"]["error_rate"], 0.6);
    let low = fig(&verdict.figures)["canary"]["error_rate_interval"][0]
        .as_f64()
        .unwrap_or(1.0);
    assert!(0.2 < low && low < 0.6, "{low}");
    assert_eq!(fig(&verdict.figures)["baseline"]["error_rate"], 0.0);
    // The history has the two passed steps before it.
    let outcomes: Vec<_> = rig
        .ctl
        .history()
        .iter()
        .map(|v| (v.step, v.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, Outcome::Passed),
            (1, Outcome::Passed),
            (2, Outcome::Breached)
        ]
    );
    // Aborted is final until a new start.
    advance(MINUTE).await;
    assert_eq!(rig.tick(), None);
}

/// A started rollout whose first window holds 6 errors in 50 canary requests (12% against
/// max_error_rate 5%): above the threshold, not beyond chance.
fn undecided() -> Rig {
    let mut rig = Rig::new(
        Rollout {
            max_error_rate_increase: None,
            ..cfg()
        },
        100,
    );
    rig.start().unwrap();
    rig.canary(44, 6, 5);
    rig.baseline(1_000, 10, 5);
    rig
}

#[tokio::test(start_paused = true)]
async fn a_sample_above_the_threshold_by_chance_does_not_abort() {
    // 6 of 50 is 12%, but a canary whose true ratio is 5% shows that often enough: no abort,
    // and after the dwell the step waits for more data instead of passing.
    let mut rig = undecided();
    assert_eq!(rig.tick(), None);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    let waiting = serde_json::to_value(rig.ctl.view()).unwrap_or_default()["waiting_for"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        waiting.starts_with("more data: inconclusive after its dwell, canary 5xx 12.0% (≥ ")
            && waiting.contains("at 99%, n=50) > 5.0%, not yet beyond chance"),
        "{waiting}"
    );
    // More data decide it: 10 of 340 is 2.9%, and the step passes.
    rig.canary(286, 4, 5);
    rig.baseline(1_000, 10, 5);
    advance(SECS).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
    assert_eq!(
        serde_json::to_value(rig.ctl.view()).unwrap_or_default()["waiting_for"],
        Value::Null
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_still_undecided_after_nine_more_intervals_pauses() {
    let mut rig = undecided();
    advance(MINUTE).await;
    assert_eq!(rig.tick(), None);
    advance(9 * MINUTE - SECS).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    advance(SECS).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Paused);
    assert_eq!(rig.ctl.split(), Some(split(95, 5)), "the split stays");
    let reason = rig.ctl.reason().unwrap_or_default().to_owned();
    assert!(
        reason.starts_with("inconclusive for 9m at step 5%: canary 5xx 12.0% (≥ "),
        "{reason}"
    );
    assert_eq!(
        rig.ctl.last_verdict().map(|v| v.outcome),
        Some(Outcome::Inconclusive)
    );
    // Resuming judges the step afresh.
    assert_eq!(rig.resume(), Ok(()));
    assert_eq!(rig.ctl.reason(), None);
    assert_eq!(rig.pass_step().await, Some(split(90, 10)));
}

#[tokio::test(start_paused = true)]
async fn error_rate_increase_breach() {
    let mut rig = Rig::new(
        Rollout {
            max_error_rate: Some(0.5),
            ..cfg()
        },
        100,
    );
    rig.start().unwrap();
    rig.pass_step().await.unwrap();
    rig.canary(70, 30, 5);
    rig.baseline(995, 5, 5);
    assert_eq!(rig.tick(), Some(split(100, 0)));
    let reason = rig.ctl.reason().unwrap_or_default();
    assert!(
        reason.starts_with("canary 5xx 30.0% (≥ ")
            && reason.contains("at 99%, n=100) exceeds baseline 0.5% (≤ ")
            && reason.ends_with(", n=1000) by more than 1.0% at step 10%"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn error_rate_increase_is_not_judged_without_baseline_requests() {
    let mut rig = Rig::new(
        Rollout {
            max_error_rate: None,
            ..cfg()
        },
        100,
    );
    rig.start().unwrap();
    rig.canary(90, 10, 5);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
}

#[tokio::test(start_paused = true)]
async fn p99_increase_breach() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 400);
    rig.baseline(2_000, 0, 5);
    assert_eq!(rig.tick(), Some(split(100, 0)));
    // p99 is interpolated in its bucket: 400 ms lands in (300, 500] → 498 ms; 5 ms in (3, 5].
    // Every canary request is slower than 300 ms, and fewer than 1% of the baseline's are
    // slower than 5 ms: the bounds are those bucket edges.
    assert_eq!(
        rig.ctl.reason(),
        Some(
            "canary p99 498ms (≥ 300ms at 99%, n=50) exceeds baseline p99 5ms (≤ 5ms, n=2000) \
             by more than 200ms at step 5%"
        )
    );
    let v = rig.ctl.last_verdict().unwrap();
    assert_eq!(fig(&v.figures)["canary"]["p99_ms"], 498.0);
    assert_eq!(fig(&v.figures)["canary"]["p99_ms_at_least"], 300.0);
    assert_eq!(fig(&v.figures)["baseline"]["p99_ms_at_most"], 5.0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_against_a_small_baseline_is_not_yet_a_breach() {
    // 100 baseline requests cannot show that fewer than 1% of them are slow.
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 400);
    rig.baseline(100, 0, 5);
    assert_eq!(rig.tick(), None);
    rig.baseline(2_000, 0, 5);
    assert_eq!(rig.tick(), Some(split(100, 0)));
}

#[tokio::test(start_paused = true)]
async fn canary_as_slow_as_baseline_does_not_abort() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 400);
    rig.baseline(100, 0, 400);
    assert_eq!(rig.tick(), None);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
}

#[tokio::test(start_paused = true)]
async fn p99_is_not_judged_without_baseline_requests() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 400);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
}

/// Only `max_p99 = 300ms`: the canary's own p99, no baseline.
fn p99_only() -> Rollout {
    Rollout {
        max_error_rate: None,
        max_error_rate_increase: None,
        max_p99_increase: None,
        max_p99: Some(Duration::from_millis(300)),
        ..cfg()
    }
}

#[tokio::test(start_paused = true)]
async fn max_p99_breach_needs_no_baseline() {
    let mut rig = Rig::new(p99_only(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 800);
    assert_eq!(rig.tick(), Some(split(100, 0)));
    // 800 ms lands in (750, 1000]: every request is slower than 750 ms, so the p99 is.
    assert_eq!(
        rig.ctl.reason(),
        Some("canary p99 998ms (≥ 750ms at 99%, n=50) > 300ms at step 5%")
    );
}

#[tokio::test(start_paused = true)]
async fn max_p99_a_canary_within_it_passes_and_one_barely_above_waits() {
    let mut rig = Rig::new(p99_only(), 100);
    rig.start().unwrap();
    rig.canary(50, 0, 250);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
    // 2 of 60 requests at 400 ms: the estimate is above 300 ms, the data do not show it.
    rig.canary(58, 0, 20);
    rig.canary(2, 0, 400);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    let waiting = rig.ctl.view().waiting_for.unwrap_or_default();
    assert!(
        waiting.contains("> 300ms, not yet beyond chance"),
        "{waiting}"
    );
}

#[tokio::test(start_paused = true)]
async fn exactly_at_a_threshold_passes() {
    // 5 of 100 is 5.0%, not above max_error_rate 0.05.
    let mut rig = Rig::new(
        Rollout {
            max_error_rate_increase: None,
            min_requests: 100,
            ..cfg()
        },
        100,
    );
    rig.start().unwrap();
    rig.canary(95, 5, 5);
    rig.baseline(100, 0, 5);
    advance(MINUTE).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
    // One more error is above it, but not beyond chance: no abort.
    rig.canary(94, 6, 5);
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);

    // Each is exactly max_error_rate_increase 0.01; in f64, 0.07 − 0.06 is 0.010000000000000009.
    for (canary_errors, baseline_errors) in [(2, 1), (7, 6), (3, 2)] {
        let mut rig = Rig::new(
            Rollout {
                max_error_rate: None,
                min_requests: 100,
                ..cfg()
            },
            100,
        );
        rig.start().unwrap();
        rig.canary(100 - canary_errors, canary_errors, 5);
        rig.baseline(100 - baseline_errors, baseline_errors, 5);
        advance(MINUTE).await;
        assert_eq!(
            rig.tick(),
            Some(split(90, 10)),
            "{canary_errors}% vs {baseline_errors}%: {:?}",
            rig.ctl.reason()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pause_freezes_and_resume_restarts_the_window() {
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.canary(50, 50, 5); // a breach, but not judged while paused
    rig.baseline(100, 0, 5);
    assert_eq!(rig.pause(), Ok(()));
    assert_eq!(rig.ctl.state(), RolloutState::Paused);
    assert_eq!(rig.ctl.weight(), 5);
    assert_eq!(rig.ctl.split(), Some(split(95, 5)));
    assert_eq!(
        rig.pause(),
        Err(RolloutError::Already(RolloutState::Paused))
    );
    advance(10 * MINUTE).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Paused);

    // Resume opens a new window: the bad traffic before it is not judged, and the dwell
    // starts again.
    assert_eq!(rig.resume(), Ok(()));
    assert_eq!(
        rig.resume(),
        Err(RolloutError::Already(RolloutState::Progressing))
    );
    rig.canary(50, 0, 5);
    rig.baseline(100, 0, 5);
    advance(MINUTE - SECS).await;
    assert_eq!(rig.tick(), None);
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    advance(SECS).await;
    assert_eq!(rig.tick(), Some(split(90, 10)));
}

#[tokio::test(start_paused = true)]
async fn promote_jumps_to_100() {
    let mut rig = Rig::new(cfg(), 300);
    rig.start().unwrap();
    assert_eq!(rig.promote(), Ok(split(0, 300)));
    assert_eq!(rig.ctl.state(), RolloutState::Promoted);
    assert_eq!((rig.ctl.weight(), rig.ctl.step()), (100, 4));
    assert_eq!(
        rig.promote(),
        Err(RolloutError::Already(RolloutState::Promoted))
    );
    assert!(rig.abort(ADMIN_ABORT_REASON).is_err());

    // From paused, and from idle, too.
    let mut rig = Rig::new(cfg(), 100);
    rig.start().unwrap();
    rig.pause().unwrap();
    assert_eq!(rig.promote(), Ok(split(0, 100)));
    let mut rig = Rig::new(cfg(), 100);
    assert_eq!(rig.promote(), Ok(split(0, 100)));
}

#[tokio::test(start_paused = true)]
async fn admin_abort_and_restart() {
    let mut rig = Rig::new(cfg(), 100);
    assert_eq!(rig.abort(ADMIN_ABORT_REASON), Err(RolloutError::NotRunning));
    rig.start().unwrap();
    rig.pass_step().await.unwrap();
    assert_eq!(
        rig.start(),
        Err(RolloutError::Already(RolloutState::Progressing))
    );
    assert_eq!(rig.abort(ADMIN_ABORT_REASON), Ok(split(100, 0)));
    assert_eq!(rig.ctl.state(), RolloutState::Aborted);
    assert_eq!(rig.ctl.reason(), Some("aborted by admin"));
    assert_eq!(rig.ctl.weight(), 0);
    assert_eq!(
        rig.abort(ADMIN_ABORT_REASON),
        Err(RolloutError::Already(RolloutState::Aborted))
    );
    assert!(rig.pause().is_err());
    assert!(rig.resume().is_err());

    // A new start begins at the first step with a clean slate.
    assert_eq!(rig.start(), Ok(split(95, 5)));
    assert_eq!(
        (rig.ctl.state(), rig.ctl.step()),
        (RolloutState::Progressing, 0)
    );
    assert_eq!(rig.ctl.reason(), None);
    assert!(rig.ctl.last_verdict().is_none());
    assert_eq!(rig.pass_step().await, Some(split(90, 10)));

    // Paused rollouts abort too, but cannot be started over.
    rig.pause().unwrap();
    assert!(rig.start().is_err());
    assert_eq!(rig.abort(ADMIN_ABORT_REASON), Ok(split(100, 0)));
}

#[tokio::test(start_paused = true)]
async fn set_total_rescales_the_split() {
    let mut rig = Rig::new(cfg(), 100);
    assert_eq!(rig.ctl.split(), None);
    rig.start().unwrap();
    rig.ctl.set_total(1_000);
    assert_eq!(rig.ctl.split(), Some(split(950, 50)));
    assert_eq!(rig.pass_step().await, Some(split(900, 100)));
}

#[tokio::test(start_paused = true)]
async fn view_has_the_documented_fields() {
    let mut rig = Rig::new(cfg(), 100);
    assert_eq!(
        serde_json::to_value(rig.ctl.view()).unwrap_or_default(),
        json!({"state": "idle", "step": 0, "weight": 0, "since": null, "reason": null,
               "confidence": 0.99, "waiting_for": null, "last_verdict": null, "history": [],
               "baseline": "stable", "canary": "canary", "steps": [5, 10, 25, 50, 100],
               "checks": [], "hooks": [],
               "min_requests": 50, "interval_s": 60.0})
    );
    rig.start().unwrap();
    assert_eq!(
        serde_json::to_value(rig.ctl.view()).unwrap_or_default(),
        json!({"state": "progressing", "step": 0, "weight": 5,
               "since": "2026-11-26T15:00:00Z", "reason": null, "confidence": 0.99,
               "waiting_for": null, "last_verdict": null, "history": [],
               "baseline": "stable", "canary": "canary", "steps": [5, 10, 25, 50, 100],
               "checks": [], "hooks": [],
               "min_requests": 50, "interval_s": 60.0})
    );
    assert_eq!(rig.pass_step().await, Some(split(90, 10)));
    let view = serde_json::to_value(rig.ctl.view()).unwrap_or_default();
    let verdict = json!({
        "step": 0, "weight": 5, "outcome": "passed", "passed": true, "detail": null,
        "canary_requests": 50, "baseline_requests": 100,
        "started": "2026-11-26T15:00:00Z", "at": "2026-11-26T15:01:00Z",
        "confidence": 0.99,
        "canary": view["last_verdict"]["canary"].clone(),
        "baseline": view["last_verdict"]["baseline"].clone(),
    });
    assert_eq!(
        view,
        json!({"state": "progressing", "step": 1, "weight": 10,
               "since": "2026-11-26T15:01:00Z", "reason": null, "confidence": 0.99,
               "waiting_for": null, "last_verdict": verdict, "history": [verdict],
               "baseline": "stable", "canary": "canary", "steps": [5, 10, 25, 50, 100],
               "checks": [], "hooks": [],
               "min_requests": 50, "interval_s": 60.0})
    );
    let canary = &view["last_verdict"]["canary"];
    assert_eq!(
        (
            &canary["requests"],
            &canary["error_rate"],
            &canary["p99_ms"]
        ),
        (&json!(50), &json!(0.0), &json!(4.98))
    );
    assert_eq!(canary["error_rate_interval"][0], 0.0);
    let high = canary["error_rate_interval"][1].as_f64().unwrap_or(0.0);
    assert!(0.05 < high && high < 0.3, "{high}");
    advance(30 * SECS).await;
    rig.pause().unwrap();
    let view = serde_json::to_value(rig.ctl.view()).unwrap_or_default();
    assert_eq!(view["state"], "paused");
    assert_eq!(view["since"], "2026-11-26T15:01:30Z");
    rig.abort(ADMIN_ABORT_REASON).unwrap();
    let view = serde_json::to_value(rig.ctl.view()).unwrap_or_default();
    assert_eq!(view["state"], "aborted");
    assert_eq!(view["weight"], 0);
    assert_eq!(view["step"], 1);
    assert_eq!(view["reason"], "aborted by admin");
    rig.promote().unwrap();
    let view = serde_json::to_value(rig.ctl.view()).unwrap_or_default();
    assert_eq!(
        (&view["state"], &view["step"], &view["weight"]),
        (&json!("promoted"), &json!(4), &json!(100))
    );
    assert_eq!(view["reason"], Value::Null);
}

// === checks and gate hooks ===

fn gated(
    checks: Vec<crate::config::Check>,
    hooks: &[(&str, crate::config::HookMoment)],
) -> Rollout {
    Rollout {
        steps: vec![10, 50],
        prometheus: Some(crate::config::Prometheus {
            url: "http://p:9090".into(),
            authority: "p:9090".into(),
            base_path: String::new(),
            tls: false,
        }),
        checks,
        webhooks: hooks
            .iter()
            .map(|(name, on)| crate::config::Webhook {
                name: (*name).into(),
                url: "http://h/x".into(),
                authority: "h:80".into(),
                path: "/x".into(),
                tls: false,
                on: *on,
                timeout: SECS,
                format: crate::config::HookFormat::Json,
            })
            .collect(),
        ..cfg()
    }
}

fn check(max: f64, failures: u32) -> crate::config::Check {
    crate::config::Check {
        name: "canary-5xx".into(),
        query: "rate{pool=\"$canary\",service=\"$service\",b=\"$baseline\"}".into(),
        min: None,
        max: Some(max),
        failures,
    }
}

impl Rig {
    /// Answers every due call: checks with `value` (None: inconclusive), hooks with `ok`.
    fn answer(&mut self, value: Option<f64>, hook: &super::super::hooks::HookOutcome) -> usize {
        use super::super::gates::{Answer, Answered, Ask, Reading};
        let due = self.ctl.due("shop", Instant::now());
        let n = due.len();
        let wall = self.wall();
        for d in due {
            let answer = match d.ask {
                Ask::Check { index, .. } => Answer::Check {
                    index,
                    reading: value.map_or(Reading::Inconclusive("down".into()), Reading::Value),
                },
                Ask::Hook { index } => Answer::Hook {
                    index,
                    outcome: hook.clone(),
                },
            };
            self.ctl.answered(
                Answered {
                    window: d.window,
                    answer,
                },
                wall,
            );
        }
        n
    }
}

#[tokio::test(start_paused = true)]
async fn checks_are_queried_each_interval_with_names_filled_in() {
    use super::super::gates::Ask;
    let mut rig = Rig::new(gated(vec![check(0.05, 3)], &[]), 100);
    rig.start().unwrap();
    let due = rig.ctl.due("shop", Instant::now());
    assert_eq!(due.len(), 1);
    assert!(matches!(&due[0].ask, Ask::Check { query, .. }
        if query == "rate{pool=\"canary\",service=\"shop\",b=\"stable\"}"));
    // In flight: not asked again.
    assert!(rig.ctl.due("shop", Instant::now()).is_empty());
    // Answered: not again before an interval, and again once it has passed.
    let (window, wall) = (due[0].window, rig.wall());
    let reading = super::super::gates::Reading::Value(0.01);
    let answer = super::super::gates::Answer::Check { index: 0, reading };
    rig.ctl
        .answered(super::super::gates::Answered { window, answer }, wall);
    advance(MINUTE / 2).await;
    assert!(rig.ctl.due("shop", Instant::now()).is_empty());
    advance(MINUTE / 2).await;
    assert_eq!(rig.ctl.due("shop", Instant::now()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_step_waits_for_its_checks_and_failing_ones_abort() {
    use super::super::hooks::HookOutcome;
    let mut rig = Rig::new(gated(vec![check(0.05, 2)], &[]), 100);
    rig.start().unwrap();
    // Inconclusive: the step does not pass, and the view says why.
    rig.answer(None, &HookOutcome::Ok);
    assert_eq!(rig.pass_step().await, None);
    let waiting = rig.ctl.view().waiting_for.unwrap_or_default();
    assert!(
        waiting.starts_with("check canary-5xx: inconclusive"),
        "{waiting}"
    );
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    // A value within: passes.
    rig.answer(Some(0.01), &HookOutcome::Ok);
    assert_eq!(rig.tick(), Some(split(50, 50)));
    // Two failures in a row abort with the check's name, value and bound.
    rig.answer(Some(0.2), &HookOutcome::Ok);
    assert_eq!(rig.tick(), None);
    advance(MINUTE).await;
    rig.answer(Some(0.3), &HookOutcome::Ok);
    assert_eq!(rig.tick(), Some(split(100, 0)));
    let reason = rig.ctl.reason().unwrap_or_default().to_string();
    assert_eq!(
        reason,
        "check \"canary-5xx\" = 0.3 > max 0.05, 2 evaluations in a row, at step 50%"
    );
}

#[tokio::test(start_paused = true)]
async fn step_hooks_hold_the_step_and_three_failures_abort() {
    use super::super::hooks::HookOutcome;
    use crate::config::HookMoment::Step;
    let mut rig = Rig::new(gated(Vec::new(), &[("gate", Step)]), 100);
    rig.start().unwrap();
    assert_eq!(rig.pass_step().await, None);
    assert_eq!(rig.ctl.view().waiting_for.as_deref(), Some("webhook gate"));
    let failed = HookOutcome::Failed("status 500".into());
    for _ in 0..2 {
        assert_eq!(rig.answer(None, &failed), 1);
        assert_eq!(rig.tick(), None);
        // Called again only after an interval.
        assert_eq!(rig.answer(None, &failed), 0);
        advance(MINUTE).await;
    }
    assert_eq!(
        rig.ctl.view().waiting_for.as_deref(),
        Some("webhook gate (status 500)")
    );
    assert_eq!(rig.answer(None, &failed), 1);
    assert_eq!(rig.tick(), Some(split(100, 0)));
    assert_eq!(
        rig.ctl.reason(),
        Some("webhook \"gate\" (on = \"step\") failed 3 times in a row (status 500) at step 10%")
    );
}

#[tokio::test(start_paused = true)]
async fn confirm_promotion_waits_until_it_answers_2xx() {
    use super::super::hooks::HookOutcome;
    use crate::config::HookMoment::{ConfirmPromotion, Step};
    let mut rig = Rig::new(
        gated(Vec::new(), &[("gate", Step), ("approve", ConfirmPromotion)]),
        100,
    );
    rig.start().unwrap();
    // The first step: only the step hook, not the confirmation (50% is not 100%).
    assert_eq!(rig.pass_step().await, None);
    assert_eq!(rig.answer(None, &HookOutcome::Ok), 1);
    assert_eq!(rig.tick(), Some(split(50, 50)));
    // The last step: the step hook, then the confirmation, which may fail for ever.
    assert_eq!(rig.pass_step().await, None);
    rig.answer(None, &HookOutcome::Ok);
    assert_eq!(rig.tick(), None);
    for _ in 0..5 {
        assert_eq!(rig.answer(None, &HookOutcome::Timeout), 1);
        assert_eq!(rig.tick(), None);
        advance(MINUTE).await;
    }
    assert_eq!(rig.ctl.state(), RolloutState::Progressing);
    let waiting = rig.ctl.view().waiting_for.unwrap_or_default();
    assert!(
        waiting.starts_with("webhook approve (no answer"),
        "{waiting}"
    );
    rig.answer(None, &HookOutcome::Ok);
    assert_eq!(rig.tick(), Some(split(0, 100)));
    assert_eq!(rig.ctl.state(), RolloutState::Promoted);
}
