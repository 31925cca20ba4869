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

/// `println!` and `print!` for every command's output: a closed pipe
/// (`bazaar status | head`) ends the process quietly with status 0, where
/// std's versions panic. Declared first, so every module below uses them.
#[macro_use]
mod out {
    macro_rules! println {
        () => { $crate::write_stdout(format_args!("\n")) };
        ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
    }
    macro_rules! print {
        ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
    }
}

/// Writes to stdout; see the `out` module.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("bazaar: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

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
