//! Endpoints and how to reach them: runtime state, balancing, connection pools.
pub mod balance;
pub mod client;
pub mod endpoint;
pub mod registry;

pub use endpoint::{EndpointState, InflightGuard};
pub use registry::Registry;
