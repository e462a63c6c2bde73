//! Errors the proxy answers itself, mapped to a status and `x-switchyard-error` in one place.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use crate::upstream::client::{ConnectError, UpstreamErrorKind};

pub static X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
    #[error("upstream connect error: {0}")]
    UpstreamConnect(#[source] ConnectError),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream reset the connection: {0}")]
    UpstreamReset(#[source] hyper::Error),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("CONNECT is not supported: this is a reverse proxy, not a forward proxy")]
    ConnectMethod,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The `x-switchyard-error` value.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyEndpoint => "no_healthy_endpoint",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamReset(_) => "upstream_reset",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ConnectMethod => "method_not_allowed",
        }
    }

    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ProxyError::UpstreamConnect(_) => Some(UpstreamErrorKind::Connect),
            ProxyError::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            ProxyError::UpstreamReset(_) => Some(UpstreamErrorKind::Reset),
            _ => None,
        }
    }

    pub fn into_response(&self) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::local(Bytes::from(format!("{self}\n"))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            X_SWITCHYARD_ERROR.clone(),
            HeaderValue::from_static(self.code()),
        );
        match self {
            ProxyError::NoHealthyEndpoint => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // A 405 names what is allowed (RFC 9110 15.5.6): every method but CONNECT.
            ProxyError::ConnectMethod => {
                h.insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
                );
            }
            _ => {}
        }
        resp
    }
}
