//! One HTTP/1.1 GET to an endpoint, judged by its status: shared by health checks and
//! blue-green prepromotion checks.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GETs `path` on `addr` (a fresh connection, closed after) and succeeds on a 2xx answer
/// within `timeout`; the error says what went wrong.
pub async fn get_ok(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection task ends once `sender` is dropped (at the end of this function).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let exchange = async {
            let req = Request::get(path)
                .header(http::header::HOST, addr)
                .header(http::header::USER_AGENT, "switchyard-health")
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        exchange.await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
