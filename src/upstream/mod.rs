//! Endpoints and how to reach them: runtime state, balancing, connection pools (a worker
//! owns its own, `client::Pools`), protocols. It may not decide which pool serves (that is
//! `router`) nor read files (CA bundles come in with the config).
pub mod balance;
pub mod client;
pub mod endpoint;
pub mod registry;
pub mod tls;

pub use endpoint::{EndpointState, InflightGuard};
pub use registry::Registry;
pub use tls::{UpstreamProtocol, Wire};
