//! The `bazaar` launcher: local clusters of the service binaries, and the
//! commands built on them.

pub mod cluster;
