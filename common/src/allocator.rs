//! The allocator option the storage services run with: mimalloc (v3)
//! reclaims another thread's abandoned pages when it frees into them, and
//! under the write path that kept memory that was no longer used. With
//! reclaiming off (`MIMALLOC_PAGE_RECLAIM_ON_FREE=-1`) the replicas held
//! about a third less after a 300,000-order fill and the CPU per trade did
//! not move (docs/PERFORMANCE.md, The allocator's reclaiming off in the
//! storage services).
//!
//! mimalloc reads its options from the environment once, before `main`,
//! and setting one from Rust would take `unsafe` (which the workspace
//! forbids). So [`run_with_options`] starts the same program again in place
//! (`exec`: the same process id, arguments and open files) with the option
//! added to its environment. A value the caller set is kept as it is.

use std::os::unix::process::CommandExt;

/// The option, and the value the services run with unless it is set.
pub const RECLAIM_ENV: &str = "MIMALLOC_PAGE_RECLAIM_ON_FREE";
pub const RECLAIM_OFF: &str = "-1";

/// Restarts this program in place with [`RECLAIM_ENV`] set, unless it is
/// set already (by the caller, or by this function before the restart).
/// Returns only when it is set, or when the restart failed (then the
/// program goes on with the allocator's defaults, and says so). Call it
/// first thing in `main`, before any thread starts.
pub fn run_with_options(binary: &str) {
    if std::env::var_os(RECLAIM_ENV).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let err = match (std::env::current_exe(), args.next()) {
        (Ok(exe), Some(arg0)) => std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env(RECLAIM_ENV, RECLAIM_OFF)
            .exec(),
        (Err(e), _) => e,
        (Ok(_), None) => std::io::Error::other("no program name in the arguments"),
    };
    eprintln!("{binary}: running with the allocator's defaults: cannot set {RECLAIM_ENV} ({err})");
}
