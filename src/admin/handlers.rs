//! Mutating admin calls: each becomes one control `Change`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::{AdminState, answer, error};
use crate::config::Strategy;
use crate::control::{Change, Guard, ReloadSource, RolloutAction};

/// How long one prepromotion check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn mutate(
    state: &AdminState,
    method: &Method,
    segs: &[&str],
    query: &str,
    body: Bytes,
    guard: Guard,
) -> Response<Full<Bytes>> {
    let service = |s: &str| s.to_string();
    let change = match (method, segs) {
        (&Method::POST, ["admin", "reload"]) => {
            return answer(state.control.reload(ReloadSource::Admin).await);
        }
        (&Method::PUT, ["admin", "services", svc, "weights"]) => {
            Change::set_weights(service(svc), &body)
        }
        (&Method::POST, ["admin", "services", svc, "swap"]) => {
            let force = match super::query_flag(query, "force") {
                Ok(v) => v,
                Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
            };
            let checked_standby = if force {
                None
            } else {
                match prepromotion_checks(state, svc).await {
                    Ok(standby) => standby,
                    Err((status, msg)) => return error(status, &msg),
                }
            };
            Change::Swap {
                service: service(svc),
                checked_standby,
            }
        }
        (&Method::POST, ["admin", "services", svc, "rollback"]) => Change::Rollback {
            service: service(svc),
        },
        (
            &Method::POST,
            [
                "admin",
                "services",
                svc,
                "pools",
                pool,
                "endpoints",
                addr,
                action @ ("drain" | "undrain"),
            ],
        ) => Change::Drain {
            service: service(svc),
            pool: pool.to_string(),
            address: addr.to_string(),
            drain: *action == "drain",
        },
        (&Method::POST, ["admin", "services", svc, "rollout", action]) => {
            let Some(action) = RolloutAction::parse(action) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "rollout actions: start, pause, resume, promote, abort",
                );
            };
            if action == RolloutAction::Start
                && !guard.dry_run
                && let Err((status, msg)) = pre_rollout_hooks(state, svc, &guard).await
            {
                return error(status, &msg);
            }
            Change::Rollout {
                service: service(svc),
                action,
            }
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {method} /{}", segs.join("/")),
            );
        }
    };
    answer(state.control.change(change, guard).await)
}

/// Calls a rollout's `pre-rollout` webhooks before a start that fits the rollout's state
/// (the control task gives the 404 and the 409 of a start that does not): 409 naming the
/// first hook that did not answer 2xx, and nothing changes.
async fn pre_rollout_hooks(
    state: &AdminState,
    service: &str,
    guard: &Guard,
) -> Result<(), (StatusCode, String)> {
    use crate::api::RolloutState as S;
    use crate::control::IfMatch;
    let Some((hooks, rollout, generation)) = state.control.rollout_hooks(service) else {
        return Ok(());
    };
    // A start the control task refuses anyway (412, 400, 409) calls no hook: its answer
    // comes first, in the usual order.
    let stale = match guard.if_match {
        Some(IfMatch::Generation(g)) => g != generation,
        Some(IfMatch::Malformed) => true,
        None => false,
    };
    if stale || !matches!(rollout.state, S::Idle | S::Aborted | S::Promoted) {
        return Ok(());
    }
    crate::control::hooks::pre_rollout(service, &hooks, &rollout, &state.control.hook_log())
        .await
        .map_err(|(hook, what)| {
            (
                StatusCode::CONFLICT,
                format!("pre-rollout webhook {hook:?} refused the start: {what}"),
            )
        })
}

/// Runs the blue-green `prepromotion_checks` (GET on every standby endpoint, 2xx each).
/// Returns the standby pool that passed; 404 for an unknown service, 409 on a failed check.
async fn prepromotion_checks(
    state: &AdminState,
    service: &str,
) -> Result<Option<String>, (StatusCode, String)> {
    // Read what to check from the live table, then check without holding it.
    let (standby, targets, paths) = {
        let table = state.tables.load();
        let Some((_, svc)) = table.service_by_name(service) else {
            // The control task gives the precise 404 (with the list of services).
            return Ok(None);
        };
        if svc.strategy != Strategy::BlueGreen {
            return Ok(None);
        }
        let Some(standby) = svc.standby.and_then(|id| svc.pool(id)) else {
            return Ok(None);
        };
        let targets: Vec<_> = standby
            .endpoints
            .iter()
            .map(|e| (e.clone(), standby.upstream.clone()))
            .collect();
        (
            standby.name.to_string(),
            targets,
            svc.prepromotion_checks.clone(),
        )
    };
    for (ep, proto) in &targets {
        let addr = &ep.address;
        for path in &paths {
            if let Err(why) = crate::health::probe::get_ok(ep, proto, path, CHECK_TIMEOUT).await {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "prepromotion check failed: GET {path} on {addr} of standby pool {standby:?}: {why} (use ?force=true to skip the checks)"
                    ),
                ));
            }
        }
    }
    Ok(Some(standby))
}
