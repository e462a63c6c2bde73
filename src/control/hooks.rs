//! A rollout's webhooks: one POST of JSON (or a Slack `{"text"}`) per call, off the control
//! task and off the data path's threads. The control task and the admin handlers only see
//! each call's [`HookOutcome`]; every call is counted in `switchyard_webhook_calls_total`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::RolloutView;
use crate::config::{HookFormat, HookMoment, Protocol, Webhook};
use crate::upstream::client::{self, ReqBody};
use crate::upstream::{EndpointState, UpstreamProtocol};

/// Informational hooks (`post-rollout`, `event`) are tried at most this many more times.
pub const INFORMATIONAL_RETRIES: u32 = 3;

/// How one call went, as `switchyard_webhook_calls_total{outcome}` counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// A 2xx answer.
    Ok,
    /// Another status, or no connection: the text says which (`status 500`).
    Failed(String),
    /// No answer within the hook's `timeout`.
    Timeout,
}

impl HookOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            HookOutcome::Ok => "ok",
            HookOutcome::Failed(_) => "failed",
            HookOutcome::Timeout => "timeout",
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == HookOutcome::Ok
    }

    /// In words, for a 409 or a log line: `status 500`, `no answer within 1s`.
    pub fn describe(&self, hook: &Webhook) -> String {
        match self {
            HookOutcome::Ok => "ok".to_string(),
            HookOutcome::Failed(why) => why.clone(),
            HookOutcome::Timeout => format!(
                "no answer within {}",
                humantime::format_duration(hook.timeout)
            ),
        }
    }
}

/// A hook's last call: when, and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCall {
    pub at: SystemTime,
    pub outcome: HookOutcome,
}

/// The last call of each hook, by service and hook name, for the rollout's view. Written by
/// whichever task made the call (admin handler, notification, gate), read when the view is
/// made; swapped whole, as calls are rare next to reads.
#[derive(Debug, Default)]
pub struct HookLog {
    calls: arc_swap::ArcSwap<std::collections::HashMap<(String, String), LastCall>>,
}

impl HookLog {
    fn note(&self, service: &str, hook: &str, outcome: &HookOutcome) {
        let key = (service.to_string(), hook.to_string());
        let call = LastCall {
            at: SystemTime::now(),
            outcome: outcome.clone(),
        };
        self.calls.rcu(|calls| {
            let mut calls = std::collections::HashMap::clone(calls);
            calls.insert(key.clone(), call.clone());
            calls
        });
    }

    pub fn last(&self, service: &str, hook: &str) -> Option<LastCall> {
        let key = (service.to_string(), hook.to_string());
        self.calls.load().get(&key).cloned()
    }
}

/// The body of a call: `{service, rollout: {state, step, weight, reason}, event, at}`, or
/// `{"text": …}` for `format = "slack"`.
pub fn payload(hook: &Webhook, service: &str, rollout: &RolloutView, event: &str) -> Bytes {
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let body = match hook.format {
        HookFormat::Json => serde_json::json!({
            "service": service,
            "rollout": {
                "state": rollout.state,
                "step": rollout.step,
                "weight": rollout.weight,
                "reason": rollout.reason,
            },
            "event": event,
            "at": at,
        }),
        HookFormat::Slack => {
            let mut text = format!(
                "switchyard: {service} rollout {event}: {} at step {} ({}% canary)",
                rollout.state.as_str(),
                rollout.step + 1,
                rollout.weight
            );
            if let Some(reason) = &rollout.reason {
                text += &format!(": {reason}");
            }
            serde_json::json!({ "text": text })
        }
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// One POST of `body` to the hook within its timeout, counted and noted in `log`.
pub async fn call(service: &str, hook: &Webhook, body: Bytes, log: &HookLog) -> HookOutcome {
    let outcome = match tokio::time::timeout(hook.timeout, post(hook, body)).await {
        Ok(Ok(status)) if status.is_success() => HookOutcome::Ok,
        Ok(Ok(status)) => HookOutcome::Failed(format!("status {}", status.as_u16())),
        Ok(Err(e)) => HookOutcome::Failed(e.to_string()),
        Err(_) => HookOutcome::Timeout,
    };
    metrics::counter!(
        crate::metrics::WEBHOOK_CALLS_TOTAL,
        "service" => service.to_string(),
        "hook" => hook.name.clone(),
        "outcome" => outcome.label(),
    )
    .increment(1);
    log.note(service, &hook.name, &outcome);
    outcome
}

/// Why a hook call got no status.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Tls(#[from] crate::upstream::tls::TlsError),
    #[error("cannot connect: {0}")]
    Connect(#[from] client::ConnectError),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("request: {0}")]
    Exchange(#[from] hyper::Error),
}

async fn post(hook: &Webhook, body: Bytes) -> Result<http::StatusCode, CallError> {
    let proto = UpstreamProtocol::build(Protocol::Http1, hook.tls, None, None)?;
    let ep = EndpointState::new(&hook.authority);
    let mut conn = client::connect_unpooled(&ep, &proto, hook.timeout).await?;
    let req = Request::post(hook.path.as_str())
        .header(http::header::HOST, hook.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "switchyard-webhook")
        .body(ReqBody::Bytes(Some(body)))?;
    Ok(conn.status_of(req).await?)
}

/// Calls the `pre-rollout` hooks one after the other; the first that does not answer 2xx
/// refuses the start: `Err((hook name, what went wrong))`.
pub async fn pre_rollout(
    service: &str,
    hooks: &[Webhook],
    rollout: &RolloutView,
    log: &HookLog,
) -> Result<(), (String, String)> {
    for hook in hooks.iter().filter(|h| h.on == HookMoment::PreRollout) {
        let outcome = call(
            service,
            hook,
            payload(hook, service, rollout, "pre-rollout"),
            log,
        )
        .await;
        if !outcome.is_ok() {
            return Err((hook.name.clone(), outcome.describe(hook)));
        }
    }
    Ok(())
}

/// Spawns the informational calls of a rollout change (`event` hooks on every change,
/// `post-rollout` hooks on promotion or abort): each tried up to
/// [`INFORMATIONAL_RETRIES`] more times, a second apart; nothing waits for them.
pub fn notify(
    service: &str,
    hooks: &[Webhook],
    rollout: &RolloutView,
    event: &str,
    token: &CancellationToken,
    log: &std::sync::Arc<HookLog>,
) {
    let finished = matches!(event, "promotion" | "abort");
    for hook in hooks {
        let wanted = match hook.on {
            HookMoment::Event => true,
            HookMoment::PostRollout => finished,
            _ => false,
        };
        if !wanted {
            continue;
        }
        let body = payload(hook, service, rollout, event);
        let (service, hook, token) = (service.to_string(), hook.clone(), token.clone());
        let log = log.clone();
        tokio::spawn(async move {
            let attempts = async {
                for attempt in 0..=INFORMATIONAL_RETRIES {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let outcome = call(&service, &hook, body.clone(), &log).await;
                    if outcome.is_ok() {
                        return;
                    }
                    warn!(service, hook = %hook.name, outcome = %outcome.describe(&hook), attempt, "webhook call failed");
                }
            };
            tokio::select! {
                () = token.cancelled() => {}
                () = attempts => {}
            }
        });
    }
}

/// The event a rollout change is, from the view before and after it; `None` when nothing a
/// hook hears about changed.
pub fn event(before: Option<&RolloutView>, after: &RolloutView) -> Option<&'static str> {
    use crate::api::RolloutState as S;
    let was = before.map(|b| (b.state, b.step, b.since.as_deref()));
    if was == Some((after.state, after.step, after.since.as_deref())) {
        return None;
    }
    let from = before.map_or(S::Idle, |b| b.state);
    let same_step = before.is_some_and(|b| b.step == after.step);
    Some(match (from, after.state) {
        (_, S::Promoted) => "promotion",
        (_, S::Aborted) => "abort",
        (_, S::Idle) => return None,
        (S::Idle | S::Aborted | S::Promoted, _) => "start",
        (S::Progressing, S::Paused) if same_step => "pause",
        (S::Paused, S::Progressing) if same_step => "resume",
        _ => "step",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RolloutState;

    fn view(state: RolloutState, step: usize, since: &str) -> RolloutView {
        let v = serde_json::json!({"state": state, "step": step, "weight": 10,
            "since": since, "reason": null, "confidence": 0.99, "waiting_for": null,
            "last_verdict": null, "history": [], "baseline": "stable", "canary": "canary",
            "steps": [10, 50, 100], "min_requests": 10, "interval_s": 1.0});
        serde_json::from_value(v).expect("a rollout view")
    }

    #[test]
    fn events_name_each_kind_of_change() {
        use RolloutState::*;
        let cases = [
            ((Idle, 0, "a"), (Progressing, 0, "b"), Some("start")),
            ((Promoted, 2, "a"), (Paused, 0, "b"), Some("start")),
            ((Progressing, 0, "a"), (Progressing, 1, "b"), Some("step")),
            ((Progressing, 0, "a"), (Paused, 1, "b"), Some("step")),
            ((Progressing, 1, "a"), (Paused, 1, "b"), Some("pause")),
            ((Paused, 1, "a"), (Progressing, 1, "b"), Some("resume")),
            ((Progressing, 1, "a"), (Promoted, 2, "b"), Some("promotion")),
            ((Paused, 1, "a"), (Aborted, 1, "b"), Some("abort")),
            ((Progressing, 1, "a"), (Progressing, 1, "a"), None),
            ((Aborted, 1, "a"), (Idle, 0, "b"), None),
        ];
        for ((s0, i0, t0), (s1, i1, t1), want) in cases {
            let (before, after) = (view(s0, i0, t0), view(s1, i1, t1));
            assert_eq!(event(Some(&before), &after), want, "{s0} → {s1}");
        }
    }

    #[test]
    fn a_slack_body_is_one_line_of_text() {
        let hook = Webhook {
            name: "chat".into(),
            url: "http://h/x".into(),
            authority: "h:80".into(),
            path: "/x".into(),
            tls: false,
            on: HookMoment::Event,
            timeout: Duration::from_secs(1),
            format: HookFormat::Slack,
        };
        let body = payload(
            &hook,
            "shop",
            &view(RolloutState::Progressing, 1, "a"),
            "step",
        );
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"text": "switchyard: shop rollout step: progressing at step 2 (10% canary)"})
        );
    }
}
