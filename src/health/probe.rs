//! One GET to an endpoint in its pool's protocol (HTTP/1.1 or HTTP/2, clear or TLS), judged
//! by its status: shared by health checks and blue-green prepromotion checks.

use std::time::Duration;

use http::Request;

use crate::upstream::client::{self, ReqBody};
use crate::upstream::tls::Wire;
use crate::upstream::{EndpointState, UpstreamProtocol};

/// GETs `path` on `ep` over a connection of its own and succeeds on a 2xx answer within
/// `timeout`; the error says what went wrong.
pub async fn get_ok(
    ep: &EndpointState,
    proto: &UpstreamProtocol,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let mut conn = client::connect_unpooled(ep, proto, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let builder = match proto.wire {
            Wire::Http2 => Request::get(format!("{}://{}{path}", proto.scheme(), ep.address))
                .version(http::Version::HTTP_2),
            Wire::Http1 => Request::get(path).header(http::header::HOST, ep.address.as_str()),
        };
        let req = builder
            .header(http::header::USER_AGENT, "switchyard-health")
            .body(ReqBody::empty())
            .map_err(|e| format!("request: {e}"))?;
        let status = conn
            .status_of(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
