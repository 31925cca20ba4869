//! Wire types, by audience: the public REST bodies ([`public`]), the
//! messages between the front-end and the replicas and among replicas
//! ([`replication`]), between the leader and the catalog ([`catalog`]),
//! and what services report about themselves ([`status`]). Everything is
//! re-exported here, so `common::types::X` names any of them.

pub mod catalog;
pub mod public;
pub mod replication;
pub mod status;

pub use catalog::*;
pub use public::*;
pub use replication::*;
pub use status::*;
