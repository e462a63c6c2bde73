//! The data path: the hyper service of a client connection.
pub mod body;
pub mod error;
pub mod forward;
pub mod mirror;
pub mod service;

pub use body::ProxyBody;
pub use error::ProxyError;
pub use service::{ConnActivity, ConnInfo, ProxyService, Shared};
