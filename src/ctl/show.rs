//! What `ctl` prints for people: one-line summaries of a change, the status table and the
//! rollout progress. Pure functions of the admin API's JSON, so they are tested without a
//! server.
//!
//! Rollout steps are counted from 1 here (the API's `step` is a 0-based index).

use std::fmt::Write as _;

use serde_json::Value;

/// Characters of the progress bar between its brackets.
const BAR: usize = 30;

/// `stable=90 canary=10`, or `active=blue standby=green` for blue-green.
pub fn split(view: &Value) -> String {
    if let Some(weights) = view["weights"].as_object() {
        return weights
            .iter()
            .map(|(pool, w)| format!("{pool}={}", number(w)))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut out = Vec::new();
    for key in ["active", "standby"] {
        if let Some(pool) = view[key].as_str() {
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
pub fn change(what: &str, view: &Value) -> String {
    let name = view["name"].as_str().unwrap_or("?");
    let mut out = String::new();
    if view["dry_run"] == Value::Bool(true) {
        let _ = write!(out, "dry run, nothing changed: ");
    }
    let _ = writeln!(
        out,
        "{name}: {what}, generation {}",
        number(&view["generation"])
    );
    if let Some(warnings) = view["warnings"].as_array() {
        for w in warnings {
            let _ = writeln!(out, "warning: {}", w.as_str().unwrap_or_default());
        }
    }
    out
}

/// After a drain or undrain: the endpoint's state in the answer.
pub fn endpoint(view: &Value, pool: &str, address: &str) -> String {
    let found = view["pools"][pool]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == address));
    match found {
        Some(e) => format!(
            "{address} in pool {pool}: {}, {} in flight",
            if e["draining"] == Value::Bool(true) {
                "draining"
            } else {
                "in rotation"
            },
            number(&e["inflight"])
        ),
        None => format!("{address} in pool {pool}"),
    }
}

/// `progressing, step 2 of 4 (canary 50%)`; `-` without a rollout section.
pub fn rollout(rollout: &Value) -> String {
    let Some(state) = rollout["state"].as_str() else {
        return "-".to_string();
    };
    let step = rollout["step"].as_u64().unwrap_or(0) + 1;
    let of = rollout["steps"]
        .as_array()
        .map_or_else(String::new, |steps| format!(" of {}", steps.len()));
    let weight = number(&rollout["weight"]);
    match state {
        "idle" => "idle".to_string(),
        "promoted" => format!("promoted (canary {weight}%)"),
        "aborted" => format!("aborted at step {step}{of} (canary {weight}%)"),
        _ => format!("{state}, step {step}{of} (canary {weight}%)"),
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
pub fn verdict(v: &Value, reason: &Value) -> Option<String> {
    let outcome = v["outcome"].as_str()?;
    let step = v["step"].as_u64().unwrap_or(0) + 1;
    let mut out = format!("step {step} ({}%) {outcome}", number(&v["weight"]));
    if let Some(detail) = v["detail"].as_str()
        && v["detail"] != *reason
    {
        let _ = write!(out, ": {detail}");
    }
    Some(out)
}

/// `canary 106 req, 5xx 0.00%, p99 2.47 ms` for `side` ("canary", "baseline") of a verdict.
fn figures(v: &Value, side: &str) -> String {
    let f = &v[side];
    let rate = f["error_rate"]
        .as_f64()
        .map_or_else(|| "-".to_string(), |r| format!("{:.2}%", r * 100.0));
    let p99 = f["p99_ms"]
        .as_f64()
        .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
    format!(
        "{side} {} req, 5xx {rate}, p99 {p99}",
        number(&f["requests"])
    )
}

/// The watch screen for a terminal: a few short lines, redrawn in place.
pub fn frame(name: &str, rollout: &Value) -> Vec<String> {
    let mut lines = vec![
        format!("{name}: {}", self::rollout(rollout)),
        bar(rollout["weight"].as_u64().unwrap_or(0)),
    ];
    if let Some(reason) = rollout["reason"].as_str() {
        lines.push(format!("reason: {reason}"));
    }
    if let Some(waiting) = rollout["waiting_for"].as_str() {
        lines.push(format!("waiting for {waiting}"));
    }
    let last = &rollout["last_verdict"];
    if let Some(v) = verdict(last, &rollout["reason"]) {
        lines.push(format!("last verdict: {v}"));
        lines.push(format!("  {}", figures(last, "canary")));
        if last["baseline"].is_object() {
            lines.push(format!("  {}", figures(last, "baseline")));
        }
    }
    lines
}

/// The watch line for a pipe or a file: one per change.
pub fn line(name: &str, rollout: &Value) -> String {
    let mut out = format!(
        "{name}: {} {}",
        self::rollout(rollout),
        bar(rollout["weight"].as_u64().unwrap_or(0))
    );
    if let Some(reason) = rollout["reason"].as_str() {
        let _ = write!(out, "; reason: {reason}");
    }
    if let Some(waiting) = rollout["waiting_for"].as_str() {
        let _ = write!(out, "; waiting for {waiting}");
    }
    if let Some(v) = verdict(&rollout["last_verdict"], &rollout["reason"]) {
        let _ = write!(
            out,
            "; last verdict: {v} ({})",
            figures(&rollout["last_verdict"], "canary")
        );
    }
    out
}

/// `switchyard ctl status`: the instance, then one table of services and one of endpoints.
/// `services` are the `GET /admin/services/{svc}` answers, in the status's order.
pub fn status(url: &str, status: &Value, services: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "admin {url}  generation {}  config {} ({})",
        number(&status["generation"]),
        status["config_path"].as_str().unwrap_or("?"),
        if status["persisted"] == Value::Bool(true) {
            "persisted"
        } else {
            "not persisted"
        }
    );
    let reload = &status["last_reload"];
    match (reload["ok"].as_bool(), reload["at"].as_str()) {
        (Some(true), Some(at)) => {
            let _ = writeln!(out, "last reload ok at {at}");
        }
        (Some(false), at) => {
            let _ = writeln!(
                out,
                "last reload FAILED at {}: {}",
                at.unwrap_or("?"),
                reload["error"].as_str().unwrap_or("?")
            );
        }
        _ => {}
    }
    if let Some(why) = status["restart_required"].as_str() {
        let _ = writeln!(out, "restart required: {why}");
    }
    let cluster = &status["cluster"];
    if cluster.is_object() {
        let members = cluster["members"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "fleet {} (replica {}): leader {}, {members} member(s), store {}",
            cluster["prefix"].as_str().unwrap_or("?"),
            cluster["name"].as_str().unwrap_or("?"),
            cluster["leader"].as_str().unwrap_or("-"),
            if cluster["store"]["up"] == Value::Bool(true) {
                "up"
            } else {
                "DOWN"
            }
        );
    }

    let mut rows = vec![row(["SERVICE", "STRATEGY", "SPLIT", "ROLLOUT"])];
    let mut reasons = Vec::new();
    for s in services {
        let name = s["name"].as_str().unwrap_or("?");
        rows.push(row([
            name,
            s["strategy"].as_str().unwrap_or("?"),
            &split(s),
            &rollout(&s["rollout"]),
        ]));
        if let Some(reason) = s["rollout"]["reason"].as_str() {
            reasons.push(format!("{name}: rollout {reason}"));
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
        let name = s["name"].as_str().unwrap_or("?");
        let Some(pools) = s["pools"].as_object() else {
            continue;
        };
        for (pool, p) in pools {
            for e in p["endpoints"].as_array().into_iter().flatten() {
                let healthy = match (e["healthy"].as_bool(), e["ejected_until"].as_str()) {
                    (_, Some(until)) => format!("ejected until {until}"),
                    (Some(true), None) => "yes".to_string(),
                    _ => "no".to_string(),
                };
                rows.push(row([
                    name,
                    pool,
                    e["address"].as_str().unwrap_or("?"),
                    &healthy,
                    yes_no(&e["draining"]),
                    &number(&e["inflight"]),
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

fn yes_no(v: &Value) -> &'static str {
    if *v == Value::Bool(true) { "yes" } else { "no" }
}

/// A JSON number as written, `-` for anything else (null, missing).
fn number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits() {
        assert_eq!(
            split(&json!({"weights": {"stable": 90, "canary": 10}, "active": null})),
            "stable=90 canary=10"
        );
        assert_eq!(
            split(&json!({"weights": null, "active": "blue", "standby": "green"})),
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
        assert_eq!(rollout(&Value::Null), "-");
        let r = json!({"state": "progressing", "step": 1, "weight": 50});
        assert_eq!(rollout(&r), "progressing, step 2 (canary 50%)");
        let r = json!({"state": "paused", "step": 1, "weight": 50, "steps": [10, 50, 100]});
        assert_eq!(rollout(&r), "paused, step 2 of 3 (canary 50%)");
        let r = json!({"state": "promoted", "step": 2, "weight": 100});
        assert_eq!(rollout(&r), "promoted (canary 100%)");
    }

    #[test]
    fn tables_align() {
        let t = table(&[row(["A", "BB", "C"]), row(["long", "x", "last column"])]);
        assert_eq!(t, "A     BB  C\nlong  x   last column\n");
    }

    #[test]
    fn verdict_lines() {
        let v = json!({"step": 0, "weight": 10, "outcome": "passed", "detail": null,
            "canary": {"requests": 106, "error_rate": 0.0, "p99_ms": 2.47},
            "baseline": {"requests": 912, "error_rate": 0.00877, "p99_ms": null}});
        assert_eq!(verdict(&v, &Value::Null).unwrap(), "step 1 (10%) passed");
        let breach = json!({"step": 0, "weight": 20, "outcome": "breached", "detail": "5xx"});
        assert_eq!(
            verdict(&breach, &Value::Null).unwrap(),
            "step 1 (20%) breached: 5xx"
        );
        assert_eq!(
            verdict(&breach, &json!("5xx")).unwrap(),
            "step 1 (20%) breached"
        );
        assert_eq!(
            figures(&v, "canary"),
            "canary 106 req, 5xx 0.00%, p99 2.47 ms"
        );
        assert_eq!(
            figures(&v, "baseline"),
            "baseline 912 req, 5xx 0.88%, p99 -"
        );
        let r = json!({"state": "progressing", "step": 1, "weight": 50, "reason": null,
            "waiting_for": null, "last_verdict": v});
        assert_eq!(frame("shop", &r).len(), 5);
        assert!(line("shop", &r).contains("last verdict: step 1 (10%) passed (canary 106 req"));
    }
}
