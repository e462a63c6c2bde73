//! Endpoints and how to reach them: runtime state, balancing, connection pools, protocols.
//! It may not decide which pool serves (that is `router`).
pub mod balance;
pub mod client;
pub mod endpoint;
pub mod registry;
pub mod tls;

pub use endpoint::{EndpointState, InflightGuard};
pub use registry::Registry;
pub use tls::{UpstreamProtocol, Wire};
