//! The `bazaar` launcher: local clusters of the service binaries, and the
//! commands built on them.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod control;
pub mod eval;
pub mod status;
pub mod up;
pub mod verify;
