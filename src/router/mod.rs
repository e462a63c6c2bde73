//! The immutable routing table and the pure routing decision.
pub mod bucket;
pub mod decide;
pub mod matcher;
pub mod table;

#[cfg(test)]
mod tests;

pub use decide::{Decision, NoRoute, Reason, RequestView, decide};
pub use table::{PoolId, PoolTable, RoutingTable, ServiceId, ServiceTable, TableError};
