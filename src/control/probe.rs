//! Makes a rollout's gate calls (Prometheus queries, `step` and `confirm-promotion` hooks)
//! on tasks of the control runtime: never on the data path's threads, and never holding up
//! the control task, which drains the answers before it judges.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::gates::{Answer, Answered, Ask, Due, Reading};
use super::hooks::{self, HookLog};
use crate::api::RolloutView;
use crate::config::{Prometheus, Protocol, Rollout};
use crate::upstream::client::{self, ReqBody};
use crate::upstream::{EndpointState, UpstreamProtocol};

/// A query gets this long at most (or the rollout's `interval`, when shorter): a slow
/// Prometheus makes the check inconclusive rather than stacking queries up.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from Prometheus: one number needs far less.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The control task's side of the gate calls: where answers arrive, and the hooks' log.
pub struct Probes {
    tx: mpsc::UnboundedSender<(String, Answered)>,
    rx: mpsc::UnboundedReceiver<(String, Answered)>,
    pub log: Arc<HookLog>,
}

impl Default for Probes {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Probes {
            tx,
            rx,
            log: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl Probes {
    /// The answers that came in since the last call, by service.
    pub fn answers(&mut self) -> Vec<(String, Answered)> {
        let mut answers = Vec::new();
        while let Ok(answer) = self.rx.try_recv() {
            answers.push(answer);
        }
        answers
    }

    /// Starts the calls `due` asks for; each answer comes back through [`Self::answers`]. A
    /// call that cannot be made answers at once (inconclusive, failed), so none stays in
    /// flight for ever.
    pub fn start(&self, service: &str, cfg: &Rollout, view: &RolloutView, due: Vec<Due>) {
        let runtime = tokio::runtime::Handle::try_current();
        for Due { window, ask } in due {
            let (tx, owner) = (self.tx.clone(), service.to_string());
            let send = move |answer| {
                let _ = tx.send((owner, Answered { window, answer }));
            };
            match (ask, &runtime) {
                (Ask::Check { index, query }, Ok(rt)) => {
                    let prom = cfg.prometheus.clone();
                    let name = cfg.checks.get(index).map(|c| c.name.clone());
                    let (service, timeout) = (service.to_string(), cfg.interval.min(QUERY_TIMEOUT));
                    rt.spawn(async move {
                        let reading = match &prom {
                            Some(prom) => evaluate(prom, &query, timeout).await,
                            None => Reading::Inconclusive("no prometheus set".into()),
                        };
                        if let (Reading::Value(v), Some(name)) = (&reading, name) {
                            metrics::gauge!(crate::metrics::ROLLOUT_CHECK_VALUE,
                                "service" => service, "check" => name)
                            .set(*v);
                        }
                        send(Answer::Check { index, reading });
                    });
                }
                (Ask::Hook { index }, Ok(rt)) => {
                    let Some(hook) = cfg.webhooks.get(index).cloned() else {
                        send(Answer::Hook {
                            index,
                            outcome: hooks::HookOutcome::Failed("no such hook".into()),
                        });
                        continue;
                    };
                    let body = hooks::payload(&hook, service, view, hook.on.as_str());
                    let (service, log) = (service.to_string(), self.log.clone());
                    rt.spawn(async move {
                        let outcome = hooks::call(&service, &hook, body, &log).await;
                        send(Answer::Hook { index, outcome });
                    });
                }
                (Ask::Check { index, .. }, Err(_)) => send(Answer::Check {
                    index,
                    reading: Reading::Inconclusive("no runtime to query on".into()),
                }),
                (Ask::Hook { index }, Err(_)) => send(Answer::Hook {
                    index,
                    outcome: hooks::HookOutcome::Failed("no runtime to call on".into()),
                }),
            }
        }
    }
}

/// One instant query through Prometheus's HTTP API, within `timeout`.
pub async fn evaluate(prom: &Prometheus, query: &str, timeout: Duration) -> Reading {
    match tokio::time::timeout(timeout, fetch(prom, query, timeout)).await {
        Ok(Ok(body)) => parse(&body),
        Ok(Err(e)) => Reading::Inconclusive(e.to_string()),
        Err(_) => Reading::Inconclusive(format!(
            "no answer from Prometheus within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// Why a query got no answer to read; each makes the check inconclusive.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("Prometheus unreachable: {0}")]
    Unreachable(String),
    #[error("cannot make the request: {0}")]
    Request(String),
    #[error("Prometheus's answer: {0}")]
    Answer(String),
    #[error("Prometheus answered {0}")]
    Status(u16),
}

async fn fetch(prom: &Prometheus, query: &str, timeout: Duration) -> Result<Bytes, QueryError> {
    let proto = UpstreamProtocol::build(Protocol::Http1, prom.tls, None, None)
        .map_err(|e| QueryError::Request(e.to_string()))?;
    let ep = EndpointState::new(&prom.authority);
    let mut conn = client::connect_unpooled(&ep, &proto, timeout)
        .await
        .map_err(|e| QueryError::Unreachable(e.to_string()))?;
    let path = format!("{}/api/v1/query?query={}", prom.base_path, encode(query));
    let req = Request::get(path)
        .header(http::header::HOST, prom.authority.as_str())
        .header(http::header::USER_AGENT, "switchyard-rollout")
        .body(ReqBody::Bytes(None))
        .map_err(|e| QueryError::Request(e.to_string()))?;
    let resp = conn
        .try_send_request(req)
        .await
        .map_err(|e| QueryError::Unreachable(e.error().to_string()))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| QueryError::Answer(e.to_string()))?
        .to_bytes();
    // A refused query (400, 422) still says why in JSON: `parse` reads its `error`.
    if status.is_server_error() {
        return Err(QueryError::Status(status.as_u16()));
    }
    Ok(body)
}

/// The one number of an instant query's answer; anything else is inconclusive.
pub fn parse(body: &[u8]) -> Reading {
    let no = |why: String| Reading::Inconclusive(why);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return no("Prometheus's answer is not JSON".into());
    };
    if v["status"] != "success" {
        let error = v["error"].as_str().unwrap_or("no reason given");
        return no(format!("Prometheus refused the query: {error}"));
    }
    let data = &v["data"];
    let sample = match (data["resultType"].as_str(), data["result"].as_array()) {
        (Some("scalar"), _) => &data["result"],
        (Some("vector"), Some(series)) => match series.as_slice() {
            [one] => &one["value"],
            [] => return no("no series, not one number".into()),
            many => return no(format!("{} series, not one number", many.len())),
        },
        (kind, _) => {
            let kind = kind.unwrap_or("unknown");
            return no(format!("a {kind} result, not one number"));
        }
    };
    match sample[1].as_str().map(str::parse::<f64>) {
        Some(Ok(value)) if value.is_finite() => Reading::Value(value),
        Some(Ok(value)) => no(format!("{value}, not a finite number")),
        _ => no("a sample without a value".into()),
    }
}

/// Percent-encodes a query for a URL's query string (RFC 3986 unreserved bytes stay).
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED_ONLY).to_string()
}

/// Everything but RFC 3986's unreserved bytes is escaped.
const UNRESERVED_ONLY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_finite_number_is_a_value() {
        let cases = [
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.25"]}}"#,
                Some(0.25),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}}"#,
                Some(3.0),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                None,
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#,
                None,
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
                None,
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                None,
            ),
            (
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                None,
            ),
            ("<html>", None),
        ];
        for (body, want) in cases {
            let got = match parse(body.as_bytes()) {
                Reading::Value(v) => Some(v),
                Reading::Inconclusive(_) => None,
            };
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
