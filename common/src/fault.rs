//! Fault points for the crash tests. A process started with
//! `BAZAAR_FAULT=<point>:<action>` acts the first time it reaches `point`:
//! `abort` ends it at once (like `kill -9`: nothing more is flushed or
//! answered), `stop` freezes it with SIGSTOP until someone sends SIGCONT,
//! `restart` exits with [`crate::EXIT_RESTART`] as a storage failure does.
//! Without the variable every point is a no-op. This lets a test open each
//! failure window exactly, instead of hoping a timed kill lands in it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub const FAULT_ENV: &str = "BAZAAR_FAULT";

/// After the catalog applied a batch, before the leader stores it.
pub const AFTER_CATALOG_APPLY: &str = "after-catalog-apply";
/// After the leader stored a batch; its propagation to the followers runs
/// at the same time, so they may or may not have it.
pub const AFTER_LOCAL_APPEND: &str = "after-local-append";
/// After the followers confirmed a batch, before the leader answers.
pub const BEFORE_ACK: &str = "before-ack";
/// After the catalog committed a batch, before it answers the leader.
pub const CATALOG_BEFORE_REPLY: &str = "catalog-before-reply";
/// After the catalog wrote a batch, before its flush: the leader may hang
/// up here.
pub const CATALOG_BEFORE_FLUSH: &str = "catalog-before-flush";

/// After the catalog made a batch's record durable, before it writes the
/// stocks: what a stop during its flush leaves when the record reached the
/// disk and the writes after it did not.
pub const CATALOG_AFTER_RECORD: &str = "catalog-after-record";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
    Restart,
}

fn armed() -> Option<&'static (String, Action)> {
    static ARMED: OnceLock<Option<(String, Action)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(FAULT_ENV).ok()?;
            let (point, action) = spec.split_once(':')?;
            let action = match action {
                "abort" => Action::Abort,
                "stop" => Action::Stop,
                "restart" => Action::Restart,
                _ => return None,
            };
            Some((point.to_string(), action))
        })
        .as_ref()
}

static FIRED: AtomicBool = AtomicBool::new(false);

/// Whether this process was started with `point` armed and it has not
/// acted yet: for a point that first sets up what its fault leaves.
pub fn armed_at(point: &str) -> bool {
    armed().is_some_and(|(armed, _)| armed == point) && !FIRED.load(Ordering::SeqCst)
}

/// Acts if this process was started with `point` armed (once).
pub fn point(point: &str) {
    let Some((armed, action)) = armed() else {
        return;
    };
    if armed != point || FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(point, ?action, "fault point reached");
    match action {
        Action::Abort => std::process::abort(),
        Action::Stop => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        }
        Action::Restart => {
            eprintln!("fault point {point}: exiting as after a storage failure");
            std::process::exit(crate::EXIT_RESTART);
        }
    }
}
