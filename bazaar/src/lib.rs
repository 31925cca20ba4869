//! The `bazaar` launcher: local clusters of the service binaries, and the
//! commands built on them.
//!
//! The parts:
//! - [`cluster`]: the service binaries as child processes (start, wait
//!   until healthy, kill, pause, dump); [`scratch`]: a throw-away cluster
//!   in a temporary directory.
//! - [`up`] and [`control`]: `bazaar up` and the socket through which
//!   `bazaar kill`, `resume` & co. reach it from another terminal.
//! - [`status`]: `bazaar status`, every service's health.
//! - [`eval`], [`bench`](mod@bench), [`chaos`]: the measurements and the fault
//!   injection; [`verify`]: the end-of-run checks they share.
//! - [`report`]: what the commands print; [`tmpfs`]: the small disks the
//!   full-disk faults fill.
//!
//! The load itself is the `client` crate's ([`client::run`]).

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod control;
pub mod eval;
pub mod proxy;
pub mod report;
pub mod scratch;
pub mod status;
pub mod tmpfs;
pub mod up;
pub mod verify;
