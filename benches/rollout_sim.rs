//! The rollout judgement's error rates, measured: seeded rollouts of the real controller on
//! simulated traffic, looked at every 250 ms as the control task does, for each threshold at
//! 0.5×, 1×, 2× and 3× its limit and at 20, 200 and 2,000 requests/s. Prints the Markdown
//! table in docs/rollout.md.
//!
//!     cargo bench --bench rollout_sim            # 1,000 rollouts a cell
//!     ROLLOUTS=200 cargo bench --bench rollout_sim
//!     cargo bench --bench rollout_sim -- 'max_p99 ='   # only the rows whose name holds this

#[path = "../tests/support/sim.rs"]
mod sim;

use std::time::Duration;

use sim::{Scenario, Tally, defaults, scenario};

fn main() {
    let runs: usize = std::env::var("ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let multiples = [0.5, 1.0, 2.0, 3.0];
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let row = |name: &str, rps, multiples: &[f64], runs, make: &dyn Fn(f64) -> Scenario| {
        if only.as_deref().is_none_or(|o| name.contains(o)) {
            row(name, rps, multiples, runs, make);
        }
    };
    println!(
        "| threshold | req/s | {} |",
        multiples.map(|m| format!("{m}× the limit")).join(" | ")
    );
    println!("|---|---:|{}", ":---|".repeat(multiples.len()));
    for rps in [20.0, 200.0, 2000.0] {
        row(
            "`max_error_rate = 0.05`, baseline 1%",
            rps,
            &multiples,
            runs,
            &|m| scenario(defaults(Some(0.05), None, None), rps, 0.01, 0.05 * m, 0.0),
        );
    }
    for rps in [20.0, 200.0, 2000.0] {
        row(
            "`max_error_rate_increase = 0.01`, baseline 1%",
            rps,
            &multiples,
            runs,
            &|m| {
                scenario(
                    defaults(None, Some(0.01), None),
                    rps,
                    0.01,
                    0.01 + 0.01 * m,
                    0.0,
                )
            },
        );
    }
    for rps in [20.0, 200.0, 2000.0] {
        let cfg = || defaults(None, None, Some(Duration::from_millis(200)));
        row(
            "`max_p99_increase = \"200ms\"`, canary slower by",
            rps,
            &multiples,
            runs,
            &|m| scenario(cfg(), rps, 0.0, 0.0, 200.0 * m),
        );
    }
    for rps in [20.0, 200.0, 2000.0] {
        row(
            "`max_p99 = \"300ms\"`, canary p99 at",
            rps,
            &multiples,
            runs,
            &|m| scenario(max_p99(300.0), rps, 0.0, 0.0, sim::p99_shift(300.0 * m)),
        );
    }
}

/// The defaults with only `max_p99` set, in milliseconds.
fn max_p99(ms: f64) -> switchyard::config::Rollout {
    let mut cfg = defaults(None, None, None);
    cfg.max_p99 = Some(Duration::from_secs_f64(ms / 1000.0));
    cfg
}

/// One table row: per multiple, the share of rollouts aborted (with the median time to the
/// abort), paused undecided, and promoted.
fn row(name: &str, rps: f64, multiples: &[f64], runs: usize, make: &dyn Fn(f64) -> Scenario) {
    let cells: Vec<String> = multiples
        .iter()
        .map(|&m| {
            let t = Tally::of(&make(m), runs, 1);
            let mut cell = format!("{:.1}% aborted", 100.0 * t.abort_rate());
            match t.median_abort_time() {
                Some(m) if m.as_secs() == 0 => cell += " (median <1s)",
                Some(m) => cell += &format!(" (median {}s)", m.as_secs()),
                None => {}
            }
            let share = |count: usize| 100.0 * count as f64 / runs as f64;
            if t.paused > 0 {
                cell += &format!(", {:.1}% paused", share(t.paused));
            }
            cell += &format!(", {:.1}% promoted", share(t.promoted));
            cell
        })
        .collect();
    println!("| {name} | {rps} | {} |", cells.join(" | "));
}
