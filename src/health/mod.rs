//! Endpoint health: active HTTP probes and passive outlier ejection. Both only write the
//! atomics of `EndpointState`; the data path reads them when it decides and balances. It may
//! not change the config or the table.
pub mod active;
pub mod outlier;
pub mod probe;

pub use active::HealthChecks;
