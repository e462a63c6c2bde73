//! The data path: the hyper service of a client connection, and every rewrite of a request
//! and its answer (`forward`). It reads the published table and writes only endpoint and
//! pool atomics (inflight, counters) and its own worker's state (`worker`: the upstream pools,
//! the per-worker limits); it may not block, take a lock or wait for the control task.
pub mod body;
pub mod conn;
pub mod error;
pub mod forward;
mod hold;
pub mod mirror;
pub mod service;
pub mod worker;

pub use body::ProxyBody;
pub use conn::{ConnActivity, ConnInfo};
pub use error::ProxyError;
pub use service::{ProxyService, Shared};
pub use worker::Worker;
