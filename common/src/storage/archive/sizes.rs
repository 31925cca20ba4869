//! How many records a segment holds, and waiting for a segment to close.

use crate::storage::StoreError;

/// How many records a store's segments hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Records per closed segment.
    pub segment: u64,
}

/// Overrides [`Sizes::SERVICE`]'s records per segment for a service (an
/// integer of at least 2): system tests make segments small so that a few
/// hundred trades cross several.
pub const SEGMENT_ENV: &str = "BAZAAR_SEGMENT_ORDERS";

impl Sizes {
    /// The default; tests make them small.
    pub const SERVICE: Sizes = Sizes { segment: 25_000 };

    /// [`Sizes::SERVICE`], with its segment size from [`SEGMENT_ENV`] when
    /// that is set; a value that is not an integer of at least 2 is an
    /// error naming it.
    pub fn from_env() -> Result<Sizes, StoreError> {
        match std::env::var(SEGMENT_ENV) {
            Err(_) => Ok(Sizes::SERVICE),
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(segment) if segment >= 2 => Ok(Sizes { segment }),
                _ => Err(StoreError::Setting(format!(
                    "{SEGMENT_ENV}={v:?}: expected a number of orders per segment, at least 2"
                ))),
            },
        }
    }
}

/// Waits (on this thread) while a segment is being closed: a store being
/// dropped lets its closing finish, so that nothing writes its files once
/// it is gone (`catalog --rebuild` moves them right after). Gives up after
/// a minute, saying so.
pub fn wait_while_closing(closing: &std::sync::atomic::AtomicBool) {
    let closed = crate::wait::try_poll_blocking(
        "a segment to close",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(2),
        || (!closing.load(std::sync::atomic::Ordering::Acquire)).then_some(()),
    );
    if let Err(e) = closed {
        tracing::error!(error = %e, "dropping a store while it still closes a segment");
    }
}
