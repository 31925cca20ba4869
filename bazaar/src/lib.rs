//! The `bazaar` launcher: local clusters of the service binaries.
