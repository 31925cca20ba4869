//! The start-up check of a whole store, bounded in time. Reading every
//! record of a log of 1,000,000 orders takes 1.5 to 3.5 s (measured in
//! release mode; most of it is the engine's iteration), which would add to
//! every restart of a service (after a full disk, for instance). So a
//! service checks every record before it serves only while its store holds
//! at most [`EAGER_LIMIT`] numbered records (about 0.3 s); past that it
//! checks the newest [`TAIL`] before it serves (where torn writes are) and
//! the whole store on a background thread, while every read verifies the
//! checksum of what it returns. Damage found in the background ends the
//! process as a failed start-up check would (the caller's `on_damage`:
//! one line naming `--rebuild`, exit status 1, so no supervisor loops on
//! it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::StoreError;

/// Records a service checks before it serves; larger stores are checked
/// in the background.
pub const EAGER_LIMIT: u64 = 100_000;
/// Newest records checked before serving when the rest is checked in the
/// background.
pub const TAIL: u64 = 1_000;

/// How much a service checks before it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Stores of up to this many numbered records are checked whole.
    pub eager: u64,
    /// Newest records checked before serving a larger store.
    pub tail: u64,
}

impl Bounds {
    /// What the services use ([`EAGER_LIMIT`], [`TAIL`]); tests make them
    /// small.
    pub const SERVICE: Bounds = Bounds {
        eager: EAGER_LIMIT,
        tail: TAIL,
    };
}

const RUNNING: u8 = 0;
const PASSED: u8 = 1;
const DAMAGED: u8 = 2;

/// Where the check of the whole store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanState {
    Running,
    Passed,
    Damaged,
}

/// A handle on the check of the whole store (cheap to clone).
#[derive(Debug, Clone)]
pub struct Scan {
    state: Arc<AtomicU8>,
}

impl Scan {
    /// A check already done, before serving.
    pub fn passed() -> Scan {
        Scan {
            state: Arc::new(AtomicU8::new(PASSED)),
        }
    }

    /// Runs `check` on a thread of its own; on damage calls `on_damage`
    /// (there, or here if the thread cannot start).
    pub fn in_background(
        name: &str,
        check: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
        on_damage: impl FnOnce(StoreError) + Send + 'static,
    ) -> Scan {
        let scan = Scan {
            state: Arc::new(AtomicU8::new(RUNNING)),
        };
        let state = scan.state.clone();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("store-scan".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match check() {
                    Ok(()) => {
                        state.store(PASSED, Ordering::Release);
                        tracing::info!(
                            store = %name,
                            ms = started.elapsed().as_millis(),
                            "every record checked"
                        );
                    }
                    Err(e) => {
                        state.store(DAMAGED, Ordering::Release);
                        on_damage(e);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the background check; records are still \
                verified as they are read");
        }
        scan
    }

    pub fn state(&self) -> ScanState {
        match self.state.load(Ordering::Acquire) {
            RUNNING => ScanState::Running,
            PASSED => ScanState::Passed,
            _ => ScanState::Damaged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_checks_report_their_outcome() {
        assert_eq!(Scan::passed().state(), ScanState::Passed);
        let ok = Scan::in_background("t", || Ok(()), |_| panic!("no damage"));
        let (tx, rx) = std::sync::mpsc::channel();
        let bad = Scan::in_background(
            "t",
            || Err(StoreError::Engine("broken".into())),
            move |e| tx.send(e.to_string()).unwrap(),
        );
        assert!(rx.recv().unwrap().contains("broken"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ok.state() == ScanState::Running || bad.state() == ScanState::Running {
            assert!(
                std::time::Instant::now() < deadline,
                "the checks never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(ok.state(), ScanState::Passed);
        assert_eq!(bad.state(), ScanState::Damaged);
    }
}
