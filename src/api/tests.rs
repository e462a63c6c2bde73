//! Every answer of the admin API survives a trip through JSON unchanged: what the server
//! writes is what `ctl` reads.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::control::{Change, ControlState, Guard, RolloutAction};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let text = serde_json::to_string(value).unwrap_or_default();
    let back: T = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {text}"),
    };
    assert_eq!(&back, value, "{text}");
}

/// A state with a running rollout, a blue-green service and a drained endpoint.
fn state() -> ControlState {
    let config = crate::config::fixture::with_rollout();
    let mut state = match ControlState::new(config, String::new()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let drain = Change::Drain {
        service: "shop".into(),
        pool: "stable".into(),
        address: "127.0.0.1:1".into(),
        drain: true,
    };
    let start = Change::Rollout {
        service: "shop".into(),
        action: RolloutAction::Start,
    };
    for change in [drain, start] {
        if let Err(e) = state.change(change, &Guard::default()) {
            panic!("{e}");
        }
    }
    state
}

#[test]
fn service_and_status_answers_round_trip() {
    let state = state();
    for name in ["shop", "bg"] {
        match state.service_view(name) {
            Ok(view) => round_trip(&view),
            Err(e) => panic!("{e}"),
        }
    }
    let shop = state.service_view("shop").ok();
    assert!(
        shop.and_then(|s| s.rollout)
            .is_some_and(|r| r.state == RolloutState::Progressing)
    );
    let mut status = state.status_view();
    status.config_watcher = Some(WatchView {
        watching: false,
        error: Some("file watching is off".into()),
    });
    status.cluster = Some(ClusterStatus {
        name: "r1".into(),
        prefix: "/sy".into(),
        leader: Some("r2".into()),
        members: vec![MemberView {
            name: "r1".into(),
            seen: "2026-12-06T09:00:00Z".into(),
        }],
        store: StoreStatus {
            up: false,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            error: Some("cannot connect".into()),
        },
        applied_generation: 7,
        conflicts: vec!["a conflict".into()],
    });
    round_trip(&status);
}

#[test]
fn rollouts_with_verdicts_round_trip() {
    let view = RolloutView {
        state: RolloutState::Aborted,
        step: 1,
        weight: 0,
        since: Some("2026-12-06T09:00:00Z".into()),
        reason: Some("canary 5xx 14.0% (≥ 7.1% at 99%, n=57) > 5.0% at step 25%".into()),
        confidence: 0.99,
        waiting_for: None,
        last_verdict: Some(VerdictView {
            step: 1,
            weight: 25,
            outcome: Outcome::Breached,
            passed: false,
            detail: Some("5xx".into()),
            canary_requests: 57,
            baseline_requests: 400,
            started: "2026-12-06T08:59:00Z".into(),
            at: "2026-12-06T09:00:00Z".into(),
            figures: Figures {
                confidence: 0.99,
                canary: SideFigures {
                    requests: 57,
                    error_rate: Some(0.14),
                    error_rate_interval: Some([0.071, 0.25]),
                    p99_ms: Some(12.5),
                    p99_ms_at_least: Some(10.0),
                    p99_ms_at_most: None,
                },
                baseline: SideFigures::default(),
            },
        }),
        history: Vec::new(),
        baseline: "stable".into(),
        canary: "canary".into(),
        steps: vec![10, 25, 50],
        min_requests: 50,
        interval_s: 60.0,
        checks: vec![CheckView {
            name: "canary-5xx".into(),
            value: Some(0.12),
            min: None,
            max: Some(0.05),
            state: CheckState::Failing,
            detail: Some("0.12 > max 0.05".into()),
            failures_in_row: 2,
            failures: 3,
            at: Some("2026-12-06T09:00:00Z".into()),
        }],
        hooks: vec![HookView {
            name: "approve".into(),
            on: "confirm-promotion".into(),
            last_call: Some("2026-12-06T09:00:00Z".into()),
            outcome: Some("failed".into()),
            detail: Some("status 503".into()),
            failures_in_row: 1,
        }],
    };
    round_trip(&view);
}

#[test]
fn audit_entries_and_errors_round_trip() {
    let mut entry = AuditEntry::now(Actor::Fleet, "PUT /admin/services/shop/weights".into());
    entry.caller = Some("127.0.0.1:5000".into());
    entry.replica = Some("r2".into());
    entry.before = Touched::One(ServiceFields {
        weights: Some([("stable".to_string(), 90), ("canary".to_string(), 10)].into()),
        ..ServiceFields::default()
    });
    entry.after = Touched::Many {
        services: [(
            "shop".to_string(),
            ServiceFields {
                drained: Some(vec!["stable/127.0.0.1:1".into()]),
                rollout: Some(RolloutMark {
                    state: "progressing".into(),
                    step: 1,
                }),
                ..ServiceFields::default()
            },
        )]
        .into(),
    };
    entry.generation = 9;
    round_trip(&entry);
    round_trip(&ErrorBody {
        error: "outcome unknown: no answer".into(),
        generation: Some(8),
    });
    round_trip(&ErrorBody {
        error: "unknown service".into(),
        generation: None,
    });
}
