//! The immutable routing table and the pure routing decision. The decision may do no I/O,
//! read no clock and touch no atomics; building a table happens on the control thread only.
pub mod bucket;
pub mod decide;
pub mod matcher;
pub mod table;

#[cfg(test)]
mod tests;

pub use decide::{Decision, NoRoute, Reason, RequestView, decide};
pub use table::{PoolId, PoolTable, RoutingTable, ServiceId, ServiceTable, TableError};
