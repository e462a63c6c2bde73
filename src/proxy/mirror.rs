//! Shadow traffic: a copy of a sampled request goes to the mirror pool; its answer is
//! counted and thrown away. Copies run as their own tasks, bounded per worker, so a slow or
//! dead mirror pool never slows or fails a client request.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use rand::RngExt;
use tracing::debug;

use super::forward::for_connection;
use super::worker::Worker;
use crate::router::{PoolId, RoutingTable, ServiceId};
use crate::upstream::client::ReqBody;

/// What a copy needs: the request head and its (small) body.
pub struct Copy {
    head: http::request::Parts,
    body: Option<Bytes>,
}

/// Should this request be copied? `percent` of requests are, while the worker has room.
pub fn sampled(worker: &Worker, percent: u32) -> bool {
    percent > 0
        && worker.can_mirror()
        && (percent >= 100 || rand::rng().random_range(0..100) < percent)
}

/// Takes a copy of `req` when its body is known to be at most `max_body` bytes, reading the
/// body into memory (the original then sends those bytes). `Ok(None)`: not mirrored.
pub async fn copy(
    req: &mut Request<ReqBody>,
    max_body: usize,
) -> Result<Option<Copy>, hyper::Error> {
    let body = if http_body::Body::is_end_stream(req.body()) {
        None
    } else {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Unknown (chunked) or larger bodies stream through unmirrored.
        if declared.is_none_or(|n| n > max_body) {
            return Ok(None);
        }
        let taken = std::mem::replace(req.body_mut(), ReqBody::empty());
        let bytes = taken.collect().await?.to_bytes();
        *req.body_mut() = ReqBody::Bytes(Some(bytes.clone()));
        Some(bytes)
    };
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    Ok(Some(Copy { head, body }))
}

/// Sends the copy to the mirror pool on a task of its own, on the worker's thread (it uses the
/// worker's pools); the answer is drained and counted.
pub fn spawn(
    worker: Rc<Worker>,
    table: Arc<RoutingTable>,
    service: ServiceId,
    pool: PoolId,
    copy: Copy,
) {
    let slot = Slot::take(worker);
    tokio::task::spawn_local(async move {
        let worker = &slot.0;
        let Some(pool) = table.service(service).and_then(|s| s.pool(pool)) else {
            return;
        };
        let Some(ep) = pool.pick(&mut rand::rng(), None).cloned() else {
            pool.metrics.mirrored(0);
            return;
        };
        let Copy { head, body } = copy;
        let mut req = Request::from_parts(head, ReqBody::Bytes(body));
        let timeout = table.settings.request_timeout;
        let exchange = async {
            let mut conn = worker
                .pools
                .acquire(
                    &ep,
                    &pool.upstream,
                    table.settings.connect_timeout,
                    std::time::Instant::now(),
                )
                .await
                .map_err(|e| e.to_string())?;
            let pool_header = table.settings.pool_header.as_ref();
            for_connection(
                &mut req,
                pool_header.map(|name| (name, &pool.header_value)),
                conn.is_http2().then(|| pool.upstream.scheme()),
            )
            .map_err(|e| e.to_string())?;
            let resp = conn
                .try_send_request(req)
                .await
                .map_err(|e| e.into_error().to_string())?;
            let status = resp.status().as_u16();
            // Drain so the connection can go back to the pool.
            let drained = resp.into_body().collect().await.is_ok();
            if drained {
                worker.pools.release(conn);
            }
            Ok::<u16, String>(status)
        };
        let status = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                debug!(endpoint = %ep.address, error = %e, "mirror request failed");
                0
            }
            Err(_) => {
                debug!(endpoint = %ep.address, "mirror request timed out");
                0
            }
        };
        pool.metrics.mirrored(status);
    });
}

/// Holds one of the worker's mirror slots until the copy's task ends (or is dropped).
struct Slot(Rc<Worker>);

impl Slot {
    fn take(worker: Rc<Worker>) -> Slot {
        worker.mirror_started();
        Slot(worker)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.mirror_ended();
    }
}
