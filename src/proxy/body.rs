//! The response body: streamed from the upstream, or generated here.
//!
//! An upstream body carries the connection it came on and returns it to the pool once the
//! body has ended; it also holds the in-flight guards, so counts drop when the client is done.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::conn::RequestGuard;
use super::worker::Worker;
use crate::upstream::InflightGuard;
use crate::upstream::client::Conn;

pub struct ProxyBody {
    kind: Kind,
    /// Marks the request finished on the client connection when dropped.
    _request: Option<RequestGuard>,
}

enum Kind {
    Upstream {
        body: Incoming,
        conn: Option<Conn>,
        /// Whose pool the connection goes back to.
        worker: Rc<Worker>,
        _inflight: Option<InflightGuard>,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Local(Full::new(bytes)),
            _request: None,
        }
    }

    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    pub fn upstream(
        body: Incoming,
        conn: Option<Conn>,
        worker: Rc<Worker>,
        inflight: Option<InflightGuard>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                body,
                conn,
                worker,
                _inflight: inflight,
            },
            _request: None,
        }
    }

    pub(crate) fn with_request(mut self, guard: RequestGuard) -> Self {
        self._request = Some(guard);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Kind::Upstream {
                body, conn, worker, ..
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => release(conn, worker),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => release(conn, worker),
                    Poll::Ready(Some(Err(_))) => drop(conn.take()),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(full) => full.is_end_stream(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(full) => full.size_hint(),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

fn release(conn: &mut Option<Conn>, worker: &Worker) {
    if let Some(c) = conn.take() {
        worker.pools.release(c);
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so; the connection is reusable then.
        if let Kind::Upstream {
            body, conn, worker, ..
        } = &mut self.kind
            && body.is_end_stream()
        {
            release(conn, worker);
        }
    }
}
