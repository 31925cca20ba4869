//! Types, configuration and small helpers shared by every Stock Bazaar service.
//!
//! Nothing here is the business logic of one service: it is the wire format
//! (`types`), the cluster configuration (`config`), the error body every
//! endpoint answers with (`error`), the one client every caller uses
//! (`client`), the HTTP plumbing that gives every server the same limits and
//! shutdown behaviour (`http`, `telemetry`, `request_id`, `metrics`), the
//! shared storage helpers of both stores (`storage`), the stocks file
//! (`stocks`), fault points (`fault`), what `/proc` says of a process
//! (`proc_stat`), the allocator option the storage
//! services run with (`allocator`) and the one wait-until helper of every
//! test (`wait`).

pub mod allocator;
pub mod client;
pub mod config;
pub mod error;
pub mod fault;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod proc_stat;
pub mod request_id;
pub mod stocks;
pub mod storage;
pub mod task;
pub mod telemetry;
pub mod types;
pub mod wait;

pub use error::ApiError;

/// Exit code of a service that stopped because its storage failed (a full
/// disk, an I/O error): what is on disk is intact, and a fresh start on it
/// recovers. `bazaar up` and the compose stack restart a service that exits
/// with it; any other non-zero exit is left for a person to look at.
pub const EXIT_RESTART: i32 = 75;
