//! Fleet mode: replicas with the same prefix share their live state (weights, active pools,
//! drains) through etcd, the store of record.

pub mod link;
pub mod presence;
pub mod shared;
pub mod side;
pub mod store;

pub use shared::{SharedService, SharedState};
pub use side::FleetSide;
pub use store::{Commit, Store, StoreError, Versioned, Watch};
