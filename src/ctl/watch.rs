//! `ctl rollout SVC watch`: polls the service's state and shows the rollout's progress until
//! it ends. On a terminal the few lines are redrawn in place; on a pipe or a file each change
//! is one line (a log, not escape codes); with `--json` each change is the service's state as
//! one line of JSON.

use std::io::IsTerminal as _;
use std::time::Duration;

use crate::api::{RolloutState, RolloutView, ServiceView};

use super::client::{Admin, segment};
use super::{DONE, REFUSED, err, failed, out, show};

/// Failed polls in a row tolerated once the watch has started: one lost call (the admin's
/// connection cap, a restart of a sidecar) should not end a long watch, a gone admin should.
const MISSES: u32 = 3;

/// Lines on a terminal are cut to this many characters: a wrapped line would throw off the
/// count of lines to redraw.
const WIDTH: usize = 79;

pub async fn run(admin: &Admin, service: &str, every: Duration, json: bool) -> u8 {
    let path = format!("/admin/services/{}", segment(service));
    let terminal = !json && std::io::stdout().is_terminal();
    let mut last: Option<RolloutView> = None;
    let mut drawn = 0usize;
    let mut misses = 0u32;
    loop {
        let view = match admin.get::<ServiceView>(&path).await {
            Ok(v) => v,
            Err(e) if e.retryable() && last.is_some() && misses + 1 < MISSES => {
                misses += 1;
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => return failed(e, json, admin),
        };
        misses = 0;
        let Some(rollout) = &view.rollout else {
            err(&format!(
                "{service} has no rollout section: there is nothing to watch\n"
            ));
            return REFUSED;
        };
        if last.as_ref() != Some(rollout) {
            if json {
                match serde_json::to_string(&view) {
                    Ok(line) => out(&format!("{line}\n")),
                    Err(e) => err(&format!("error: cannot print the answer: {e}\n")),
                }
            } else if terminal {
                let lines = show::frame(service, rollout);
                let mut text = String::new();
                if drawn > 0 {
                    // Back to the first line of the last frame, and clear from there down.
                    text.push_str(&format!("\x1b[{drawn}F\x1b[J"));
                }
                for l in &lines {
                    text.extend(l.chars().take(WIDTH));
                    text.push('\n');
                }
                out(&text);
                drawn = lines.len();
            } else {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                out(&format!("{now} {}\n", show::line(service, rollout)));
            }
            last = Some(rollout.clone());
        }
        match rollout.state {
            RolloutState::Promoted => return DONE,
            RolloutState::Aborted => {
                err(&format!(
                    "rollout of {service} aborted: {}\n",
                    rollout.reason.as_deref().unwrap_or("no reason given")
                ));
                return REFUSED;
            }
            RolloutState::Idle => {
                err(&format!(
                    "no rollout of {service} is running (state idle): start one with `switchyard ctl rollout {service} start`\n"
                ));
                return REFUSED;
            }
            // Progressing or paused: a paused rollout may be resumed, so the watch goes on.
            _ => {}
        }
        tokio::time::sleep(every).await;
    }
}
