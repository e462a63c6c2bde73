//! The admin API as `ctl` reaches it: plain HTTP/1.1 on hyper's connection API, one
//! connection per call, JSON answers sorted into the three outcomes `ctl` exits with.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

/// Admin answers are a few KiB; the cap only keeps a wrong URL (a server streaming something
/// else) from filling memory.
const MAX_ANSWER: usize = 16 << 20;

/// Where the admin API is and how to call it.
#[derive(Debug, Clone)]
pub struct Admin {
    /// As given, for messages.
    url: String,
    /// For `Host:`.
    authority: String,
    /// For the connection: an IPv6 literal without its brackets.
    host: String,
    port: u16,
    /// A path prefix of the URL (the admin behind a path-routing proxy), without its last `/`.
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

/// Why a call gave no success answer.
#[derive(Debug)]
pub enum CallError {
    /// The admin answered with a refusal: its status, the `error` of its JSON body, and the
    /// body.
    Refused {
        status: StatusCode,
        message: String,
        body: ErrorBody,
    },
    /// No usable answer: no connection, no answer in time, or an answer that is not the admin
    /// API's JSON (a 502 or 504 from a proxy in front of it, another server on that port).
    Unreachable(String),
}

impl CallError {
    /// Whether trying again later may succeed: no usable answer, a 503 (the admin's
    /// refusal for now: a fleet's cluster store out of reach, a shutdown under way) or a
    /// 504 (a fleet's store stopped answering mid-commit: the outcome is not known yet).
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Unreachable(_) => true,
            CallError::Refused { status, .. } => {
                *status == StatusCode::SERVICE_UNAVAILABLE || *status == StatusCode::GATEWAY_TIMEOUT
            }
        }
    }
}

impl Admin {
    /// `http://host:port[/prefix]`, or `host:port`; https is refused (the admin listener
    /// speaks plain HTTP and is meant for loopback or a private network).
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Admin, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--admin {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--admin {url:?}: https is not supported; ctl speaks plain http to the admin listener"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "--admin {url:?}: scheme {other:?} is not supported, use http://HOST:PORT"
                ));
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(format!(
                "--admin {url:?} names no host, expected http://HOST:PORT"
            ));
        };
        if uri.query().is_some() {
            return Err(format!(
                "--admin {url:?}: a query has no place in the admin URL"
            ));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Admin {
            url: url.trim_end_matches('/').to_string(),
            authority: authority.as_str().to_string(),
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_string(),
            token,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.call(Method::GET, path, None::<&()>, None).await
    }

    /// One call; `path` starts with `/admin/` and may carry a query. The answer is read as
    /// `T`: one that is not (another server on that port) is no usable answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        if_match: Option<u64>,
    ) -> Result<T, CallError> {
        let target = format!("{}{path}", self.prefix);
        let shown = format!("{method} {}{path}", self.url);
        let body = body.and_then(|b| serde_json::to_vec(b).ok());
        let exchange = self.exchange(method, &target, body, if_match);
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(CallError::Unreachable(format!("{shown}: {e}"))),
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "{shown}: no answer within {}",
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        if status.is_success() {
            return serde_json::from_slice::<T>(&bytes).map_err(|e| {
                CallError::Unreachable(format!(
                    "{shown} answered {status} with a body that is not the admin API's ({e}): is {} a switchyard admin listener?",
                    self.url
                ))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(CallError::Refused {
                status,
                message: body.error.clone(),
                body,
            }),
            // Not the admin API's error (another server on that port, a proxy in between
            // that could not reach it): not a refusal by the admin, its own words shortened.
            Err(_) => {
                let text = String::from_utf8_lossy(&bytes);
                let text: String = text.trim().chars().take(200).collect();
                Err(CallError::Unreachable(if text.is_empty() {
                    format!("{shown} answered {status}")
                } else {
                    format!("{shown} answered {status}: {text}")
                }))
            }
        }
    }

    async fn exchange(
        &self,
        method: Method,
        target: &str,
        body: Option<Vec<u8>>,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Bytes), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake failed: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(generation) = if_match {
            req = req.header(header::IF_MATCH, generation.to_string());
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("answer cut short: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// A path segment as the admin API decodes it: anything but unreserved characters and `:`
/// (endpoint addresses) percent-encoded, so a `/` or `?` in a name cannot change the call.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Escaped in a path segment: all but RFC 3986's unreserved bytes and `:` (so addresses
/// like `10.0.0.1:8080` read as they are).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(url: &str) -> Result<Admin, String> {
        Admin::new(url, None, Duration::from_secs(1))
    }

    #[test]
    fn urls() {
        let a = admin("http://127.0.0.1:9901").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.prefix.as_str()),
            ("127.0.0.1", 9901, "")
        );
        let a = admin("http://[::1]:9901/ops/").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.prefix.as_str()),
            ("::1", 9901, "/ops")
        );
        assert_eq!(a.authority, "[::1]:9901");
        let a = admin("localhost:9901").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("localhost", 9901));
        let a = admin("http://admin.internal").unwrap();
        assert_eq!(a.port, 80);
        assert!(
            admin("https://127.0.0.1:9901")
                .unwrap_err()
                .contains("https")
        );
        assert!(admin("ftp://x:1").is_err());
        assert!(admin("http://x:1/?a=b").is_err());
        assert!(admin("not a url").is_err());
    }

    #[test]
    fn segments() {
        assert_eq!(segment("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("[::1]:80"), "%5B::1%5D:80");
    }
}
