//! The load-generating, self-verifying client (CONTRACT.md §4).
