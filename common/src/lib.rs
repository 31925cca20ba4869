//! Types, configuration and small helpers shared by every Stock Bazaar service.
//!
//! Nothing here is the business logic of one service: it is the wire format
//! (`types`), the cluster configuration (`config`), the error body every
//! endpoint answers with (`error`), and the HTTP plumbing that gives every
//! server the same limits and shutdown behaviour (`http`, `telemetry`).

pub mod config;
pub mod error;
pub mod fault;
pub mod http;
pub mod metrics;
pub mod request_id;
pub mod storage;
pub mod telemetry;
pub mod types;

pub use error::ApiError;
