//! The allocator options the storage services run with (mimalloc v3;
//! docs/PERFORMANCE.md, The allocator's reclaiming off in the storage
//! services, and Freed pages go back at once in the storage services):
//!
//! - [`RECLAIM_ENV`] off: mimalloc reclaims another thread's abandoned
//!   pages when it frees into them, and under the write path that kept
//!   memory that was no longer used. With it off the replicas held about a
//!   third less after a 300,000-order fill and the CPU per trade did not
//!   move.
//! - [`PURGE_ENV`] 0: pages the allocator no longer uses go back to the
//!   system at once instead of after 1000 ms. With it, three
//!   1,000,000-order fills ended at 48-57 MiB per replica, against 79-84
//!   without, and trades cost 1.5-6.3% more CPU (five alternating
//!   rounds).
//!
//! mimalloc reads its options from the environment once, before `main`,
//! and setting one from Rust would take `unsafe` (which the workspace
//! forbids). So [`run_with_options`] starts the same program again in place
//! (`exec`: the same process id, arguments and open files) with the options
//! added to its environment. A value the caller set is kept as it is.

use std::os::unix::process::CommandExt;

/// Page reclaiming on free, and the value the services run with unless it
/// is set.
pub const RECLAIM_ENV: &str = "MIMALLOC_PAGE_RECLAIM_ON_FREE";
pub const RECLAIM_OFF: &str = "-1";
/// The delay before unused pages go back to the system, in milliseconds,
/// and the value the services run with unless it is set.
pub const PURGE_ENV: &str = "MIMALLOC_PURGE_DELAY";
pub const PURGE_AT_ONCE: &str = "0";

/// Every option the services set, with its value.
pub const OPTIONS: [(&str, &str); 2] = [(RECLAIM_ENV, RECLAIM_OFF), (PURGE_ENV, PURGE_AT_ONCE)];

/// Restarts this program in place with every one of [`OPTIONS`] set,
/// unless all are set already (by the caller, or by this function before
/// the restart). Returns only when they are set, or when the restart failed
/// (then the program goes on with the allocator's defaults, and says so).
/// Call it first thing in `main`, before any thread starts.
pub fn run_with_options(binary: &str) {
    let missing: Vec<(&str, &str)> = OPTIONS
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let err = match (std::env::current_exe(), args.next()) {
        (Ok(exe), Some(arg0)) => std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .envs(missing.iter().copied())
            .exec(),
        (Err(e), _) => e,
        (Ok(_), None) => std::io::Error::other("no program name in the arguments"),
    };
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    eprintln!(
        "{binary}: running with the allocator's defaults: cannot set {} ({err})",
        names.join(", ")
    );
}
