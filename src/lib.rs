//! switchyard: an L7 reverse proxy that splits traffic by deployment strategy in its data path.
//!
//! # Layout
//!
//! The request flow: file → [`config::load`] → [`config::Config`] → [`router::RoutingTable::build`]
//! → `ArcSwap` → [`proxy`] service → [`router::decide`] → [`router::Decision`] →
//! [`upstream::balance`] → endpoint → [`upstream::client`].
//!
//! - [`api`]: the admin API's bodies as types, shared by the server and `ctl`.
//! - [`config`]: schema and validation; its only I/O is reading the file and the certificate
//!   files it names.
//! - [`router`]: the immutable routing table and the pure decision (no I/O, no clock, no atomics).
//! - [`upstream`]: endpoint runtime state (atomics that survive rebuilds), balancing, the
//!   per-worker upstream connection pools.
//! - [`proxy`]: the hyper service of a client connection: decide, pick, forward, stream back.
//! - [`server`]: one `current_thread` runtime and `SO_REUSEPORT` listener per worker thread,
//!   connection timeouts and graceful shutdown.
//! - [`takeover`]: `run --takeover`, the listening sockets and live state handed to a successor.
//! - [`demo`]: the two built-in demo apps behind the demo config.
//!
//! The data plane only reads tables; building and publishing them is the only write.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod takeover;
pub mod tls;
pub mod upstream;
