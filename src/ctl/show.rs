//! What `ctl` prints for people: one-line summaries of a change, the status table and the
//! rollout progress. Pure functions of the admin API's answers, so they are tested without a
//! server.
//!
//! Rollout steps are counted from 1 here (the API's `step` is a 0-based index).

use std::fmt::Write as _;

use crate::api::{RolloutState, RolloutView, ServiceView, SideFigures, StatusView, VerdictView};

/// Characters of the progress bar between its brackets.
const BAR: usize = 30;

/// `stable=90 canary=10`, or `active=blue standby=green` for blue-green.
pub fn split(view: &ServiceView) -> String {
    if let Some(weights) = &view.weights {
        return weights
            .iter()
            .map(|(pool, w)| format!("{pool}={w}"))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut out = Vec::new();
    for (key, pool) in [("active", &view.active), ("standby", &view.standby)] {
        if let Some(pool) = pool {
            out.push(format!("{key}={pool}"));
        }
    }
    if out.is_empty() {
        "-".to_string()
    } else {
        out.join(" ")
    }
}

/// What a change did, for the answer `view` to it: `what` first, then the generation, the
/// warnings and whether it was a dry run.
pub fn change(what: &str, view: &ServiceView) -> String {
    let mut out = String::new();
    if view.dry_run {
        let _ = write!(out, "dry run, nothing changed: ");
    }
    let _ = writeln!(out, "{}: {what}, generation {}", view.name, view.generation);
    for w in &view.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// After a drain or undrain: the endpoint's state in the answer.
pub fn endpoint(view: &ServiceView, pool: &str, address: &str) -> String {
    let found = view
        .pools
        .get(pool)
        .and_then(|p| p.endpoints.iter().find(|e| e.address == address));
    match found {
        Some(e) => format!(
            "{address} in pool {pool}: {}, {} in flight",
            if e.draining {
                "draining"
            } else {
                "in rotation"
            },
            e.inflight
        ),
        None => format!("{address} in pool {pool}"),
    }
}

/// `progressing, step 2 of 4 (canary 50%)`; `-` without a rollout section.
pub fn rollout(rollout: Option<&RolloutView>) -> String {
    let Some(r) = rollout else {
        return "-".to_string();
    };
    let step = r.step + 1;
    let of = if r.steps.is_empty() {
        String::new()
    } else {
        format!(" of {}", r.steps.len())
    };
    let weight = r.weight;
    match r.state {
        RolloutState::Idle => "idle".to_string(),
        RolloutState::Promoted => format!("promoted (canary {weight}%)"),
        RolloutState::Aborted => format!("aborted at step {step}{of} (canary {weight}%)"),
        state => format!("{state}, step {step}{of} (canary {weight}%)"),
    }
}

/// `[#########---------------------]  30%`: the canary's share of the traffic, which the
/// steps move from the first step's share to 100% at promotion.
pub fn bar(percent: u64) -> String {
    let percent = percent.min(100);
    let filled = usize::try_from(percent).unwrap_or(0) * BAR / 100;
    format!(
        "[{}{}] {percent:>3}%",
        "#".repeat(filled),
        "-".repeat(BAR - filled)
    )
}

/// `step 1 (10%) passed` and, when the verdict has one, its detail; not when the rollout's
/// `reason` already says it (an abort on a breach), so it is not printed twice.
pub fn verdict(v: &VerdictView, reason: Option<&str>) -> String {
    let outcome = serde_json::to_value(v.outcome)
        .ok()
        .and_then(|o| o.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!("step {} ({}%) {outcome}", v.step + 1, v.weight);
    if let Some(detail) = &v.detail
        && Some(detail.as_str()) != reason
    {
        let _ = write!(out, ": {detail}");
    }
    out
}

/// `canary 106 req, 5xx 0.00%, p99 2.47 ms` for `side` ("canary", "baseline") of a verdict.
fn figures(f: &SideFigures, side: &str) -> String {
    let rate = f
        .error_rate
        .map_or_else(|| "-".to_string(), |r| format!("{:.2}%", r * 100.0));
    let p99 = f
        .p99_ms
        .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
    format!("{side} {} req, 5xx {rate}, p99 {p99}", f.requests)
}

/// One line per rollout check and webhook: `check canary-5xx: ok 0.01 (max 0.05), 0 of 3
/// failures in a row`, `hook approve (confirm-promotion): failed at T (status 503)`.
pub fn gates(r: &RolloutView) -> Vec<String> {
    let mut lines = Vec::new();
    for c in &r.checks {
        let value = c.value.map_or_else(|| "-".to_string(), |v| v.to_string());
        let bound = match (c.min, c.max) {
            (Some(min), Some(max)) => format!("min {min}, max {max}"),
            (Some(min), None) => format!("min {min}"),
            (None, Some(max)) => format!("max {max}"),
            (None, None) => "no bound".to_string(),
        };
        let mut line = format!(
            "check {}: {} {value} ({bound}), {} of {} failures in a row",
            c.name,
            c.state.as_str(),
            c.failures_in_row,
            c.failures
        );
        if let (crate::api::CheckState::Inconclusive, Some(why)) = (c.state, &c.detail) {
            let _ = write!(line, ": {why}");
        }
        lines.push(line);
    }
    for h in &r.hooks {
        let call = match (&h.outcome, &h.last_call) {
            (Some(outcome), Some(at)) => format!("{outcome} at {at}"),
            _ => "not called yet".to_string(),
        };
        let mut line = format!("hook {} ({}): {call}", h.name, h.on);
        if let Some(detail) = &h.detail {
            let _ = write!(line, " ({detail})");
        }
        lines.push(line);
    }
    lines
}

/// The watch screen for a terminal: a few short lines, redrawn in place.
pub fn frame(name: &str, r: &RolloutView) -> Vec<String> {
    let mut lines = vec![
        format!("{name}: {}", self::rollout(Some(r))),
        bar(u64::from(r.weight)),
    ];
    if let Some(reason) = &r.reason {
        lines.push(format!("reason: {reason}"));
    }
    if let Some(waiting) = &r.waiting_for {
        lines.push(format!("waiting for {waiting}"));
    }
    lines.extend(gates(r));
    if let Some(last) = &r.last_verdict {
        lines.push(format!(
            "last verdict: {}",
            verdict(last, r.reason.as_deref())
        ));
        lines.push(format!("  {}", figures(&last.figures.canary, "canary")));
        lines.push(format!("  {}", figures(&last.figures.baseline, "baseline")));
    }
    lines
}

/// The watch line for a pipe or a file: one per change.
pub fn line(name: &str, r: &RolloutView) -> String {
    let mut out = format!(
        "{name}: {} {}",
        self::rollout(Some(r)),
        bar(u64::from(r.weight))
    );
    if let Some(reason) = &r.reason {
        let _ = write!(out, "; reason: {reason}");
    }
    if let Some(waiting) = &r.waiting_for {
        let _ = write!(out, "; waiting for {waiting}");
    }
    for c in &r.checks {
        let value = c.value.map_or_else(|| "-".to_string(), |v| v.to_string());
        let _ = write!(out, "; check {} {} {value}", c.name, c.state.as_str());
    }
    for h in &r.hooks {
        if let Some(outcome) = &h.outcome {
            let _ = write!(out, "; hook {} {outcome}", h.name);
        }
    }
    if let Some(last) = &r.last_verdict {
        let _ = write!(
            out,
            "; last verdict: {} ({})",
            verdict(last, r.reason.as_deref()),
            figures(&last.figures.canary, "canary")
        );
    }
    out
}

/// `switchyard ctl status`: the instance, then one table of services and one of endpoints.
/// `services` are the `GET /admin/services/{svc}` answers, in the status's order.
pub fn status(url: &str, status: &StatusView, services: &[ServiceView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "admin {url}  generation {}  config {} ({})",
        status.generation,
        status.config_path,
        if status.persisted {
            "persisted"
        } else {
            "not persisted"
        }
    );
    let reload = &status.last_reload;
    if reload.ok {
        let _ = writeln!(out, "last reload ok at {}", reload.at);
    } else {
        let _ = writeln!(
            out,
            "last reload FAILED at {}: {}",
            reload.at,
            reload.error.as_deref().unwrap_or("?")
        );
    }
    if let Some(why) = &status.restart_required {
        let _ = writeln!(out, "restart required: {why}");
    }
    if let Some(cluster) = &status.cluster {
        let _ = writeln!(
            out,
            "fleet {} (replica {}): leader {}, {} member(s), store {}",
            cluster.prefix,
            cluster.name,
            cluster.leader.as_deref().unwrap_or("-"),
            cluster.members.len(),
            if cluster.store.up { "up" } else { "DOWN" }
        );
        for c in &cluster.conflicts {
            let _ = writeln!(out, "conflict: {c}");
        }
    }

    let mut rows = vec![row(["SERVICE", "STRATEGY", "SPLIT", "ROLLOUT"])];
    let mut reasons = Vec::new();
    for s in services {
        rows.push(row([
            &s.name,
            &s.strategy,
            &split(s),
            &rollout(s.rollout.as_ref()),
        ]));
        if let Some(reason) = s.rollout.as_ref().and_then(|r| r.reason.as_ref()) {
            reasons.push(format!("{}: rollout {reason}", s.name));
        }
        if let Some(r) = &s.rollout {
            reasons.extend(gates(r).into_iter().map(|g| format!("{}: {g}", s.name)));
        }
    }
    let _ = writeln!(out);
    out.push_str(&table(&rows));
    for r in reasons {
        let _ = writeln!(out, "{r}");
    }

    let mut rows = vec![row([
        "SERVICE", "POOL", "ENDPOINT", "HEALTHY", "DRAINING", "INFLIGHT",
    ])];
    for s in services {
        for (pool, p) in &s.pools {
            for e in &p.endpoints {
                let healthy = match (&e.ejected_until, e.healthy) {
                    (Some(until), _) => format!("ejected until {until}"),
                    (None, true) => "yes".to_string(),
                    (None, false) => "no".to_string(),
                };
                rows.push(row([
                    &s.name,
                    pool,
                    &e.address,
                    &healthy,
                    if e.draining { "yes" } else { "no" },
                    &e.inflight.to_string(),
                ]));
            }
        }
    }
    let _ = writeln!(out);
    out.push_str(&table(&rows));
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_string()).collect()
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded, so no
/// line ends in blanks.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> ServiceView {
        let mut base = json!({"name": "shop", "strategy": "canary", "generation": 1,
            "persisted": true, "weights": null, "active": null, "standby": null,
            "pools": {}, "rollout": null});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).expect("a service state")
    }

    fn rollout_view(v: serde_json::Value) -> RolloutView {
        let mut base = json!({"state": "idle", "step": 0, "weight": 0, "since": null,
            "reason": null, "confidence": 0.99, "waiting_for": null, "last_verdict": null,
            "history": [], "baseline": "stable", "canary": "canary", "steps": [],
            "min_requests": 10, "interval_s": 1.0});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).expect("a rollout")
    }

    fn verdict_view(v: serde_json::Value) -> VerdictView {
        let mut base = json!({"step": 0, "weight": 10, "outcome": "passed", "passed": true,
            "detail": null, "canary_requests": 0, "baseline_requests": 0,
            "started": "2026-01-01T00:00:00Z", "at": "2026-01-01T00:00:01Z",
            "confidence": 0.99,
            "canary": {"requests": 0, "error_rate": null, "error_rate_interval": null,
                "p99_ms": null, "p99_ms_at_least": null, "p99_ms_at_most": null},
            "baseline": {"requests": 0, "error_rate": null, "error_rate_interval": null,
                "p99_ms": null, "p99_ms_at_least": null, "p99_ms_at_most": null}});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).expect("a verdict")
    }

    #[test]
    fn splits() {
        assert_eq!(
            split(&service(json!({"weights": {"stable": 90, "canary": 10}}))),
            "stable=90 canary=10"
        );
        assert_eq!(
            split(&service(json!({"active": "blue", "standby": "green"}))),
            "active=blue standby=green"
        );
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0), format!("[{}]   0%", "-".repeat(30)));
        assert_eq!(
            bar(50),
            format!("[{}{}]  50%", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(bar(100), format!("[{}] 100%", "#".repeat(30)));
        assert_eq!(bar(250), bar(100));
    }

    #[test]
    fn rollouts() {
        assert_eq!(rollout(None), "-");
        let r = rollout_view(json!({"state": "progressing", "step": 1, "weight": 50}));
        assert_eq!(rollout(Some(&r)), "progressing, step 2 (canary 50%)");
        let r = rollout_view(
            json!({"state": "paused", "step": 1, "weight": 50, "steps": [10, 50, 100]}),
        );
        assert_eq!(rollout(Some(&r)), "paused, step 2 of 3 (canary 50%)");
        let r = rollout_view(json!({"state": "promoted", "step": 2, "weight": 100}));
        assert_eq!(rollout(Some(&r)), "promoted (canary 100%)");
    }

    #[test]
    fn a_rollout_paused_at_a_step_waits_for_resume() {
        let r = rollout_view(json!({"state": "paused", "step": 1, "weight": 50,
            "steps": [10, 50, 100], "reason": "paused at step 50% (pause_at)",
            "waiting_for": "resume"}));
        assert!(frame("shop", &r).contains(&"waiting for resume".to_string()));
        assert!(
            line("shop", &r).contains("; waiting for resume"),
            "{}",
            line("shop", &r)
        );
    }

    #[test]
    fn checks_and_hooks_have_a_line_each() {
        let r = rollout_view(json!({"state": "progressing", "step": 1, "weight": 50,
            "waiting_for": "webhook approve (status 503)",
            "checks": [{"name": "canary-5xx", "value": 0.01, "min": null, "max": 0.05,
                "state": "ok", "detail": null, "failures_in_row": 0, "failures": 3,
                "at": "2026-12-06T09:00:00Z"},
              {"name": "up", "value": null, "min": 1.0, "max": null, "state": "inconclusive",
                "detail": "Prometheus unreachable", "failures_in_row": 1, "failures": 3,
                "at": "2026-12-06T09:00:00Z"}],
            "hooks": [{"name": "approve", "on": "confirm-promotion",
                "last_call": "2026-12-06T09:00:01Z", "outcome": "failed",
                "detail": "status 503", "failures_in_row": 2},
              {"name": "chat", "on": "event", "last_call": null, "outcome": null,
                "detail": null, "failures_in_row": 0}]}));
        assert_eq!(
            gates(&r),
            [
                "check canary-5xx: ok 0.01 (max 0.05), 0 of 3 failures in a row",
                "check up: inconclusive - (min 1), 1 of 3 failures in a row: Prometheus unreachable",
                "hook approve (confirm-promotion): failed at 2026-12-06T09:00:01Z (status 503)",
                "hook chat (event): not called yet",
            ]
        );
        let frame = frame("shop", &r);
        assert!(frame.contains(&"waiting for webhook approve (status 503)".to_string()));
        let line = line("shop", &r);
        assert!(
            line.contains(
                "; check canary-5xx ok 0.01; check up inconclusive -; hook approve failed"
            ),
            "{line}"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(&[row(["A", "BB", "C"]), row(["long", "x", "last column"])]);
        assert_eq!(t, "A     BB  C\nlong  x   last column\n");
    }

    #[test]
    fn verdict_lines() {
        let v = verdict_view(json!({
            "canary": {"requests": 106, "error_rate": 0.0, "error_rate_interval": null,
                "p99_ms": 2.47, "p99_ms_at_least": null, "p99_ms_at_most": null},
            "baseline": {"requests": 912, "error_rate": 0.00877, "error_rate_interval": null,
                "p99_ms": null, "p99_ms_at_least": null, "p99_ms_at_most": null}}));
        assert_eq!(verdict(&v, None), "step 1 (10%) passed");
        let breach = verdict_view(
            json!({"weight": 20, "outcome": "breached", "passed": false, "detail": "5xx"}),
        );
        assert_eq!(verdict(&breach, None), "step 1 (20%) breached: 5xx");
        assert_eq!(verdict(&breach, Some("5xx")), "step 1 (20%) breached");
        assert_eq!(
            figures(&v.figures.canary, "canary"),
            "canary 106 req, 5xx 0.00%, p99 2.47 ms"
        );
        assert_eq!(
            figures(&v.figures.baseline, "baseline"),
            "baseline 912 req, 5xx 0.88%, p99 -"
        );
        let r = rollout_view(json!({"state": "progressing", "step": 1, "weight": 50,
            "last_verdict": serde_json::to_value(&v).expect("json")}));
        assert_eq!(frame("shop", &r).len(), 5);
        assert!(line("shop", &r).contains("last verdict: step 1 (10%) passed (canary 106 req"));
    }
}
