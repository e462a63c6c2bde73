//! Fleet mode: replicas with the same prefix share their live state (weights, active pools,
//! drains, rollout progress) through etcd, the store of record. It owns the etcd key, the
//! replica's lease, membership and leadership; it changes the live state only through the
//! control state it is handed (commit first, then apply), never by publishing tables itself.

pub mod link;
pub mod presence;
pub mod shared;
pub mod side;
pub mod store;

pub use shared::{SharedService, SharedState};
pub use side::FleetSide;
pub use store::{Commit, Store, StoreError, Versioned, Watch};
