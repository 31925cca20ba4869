//! Whether a store's storage works, and what happens when it stops.
//!
//! The first failed write or flush is classified (`full` for lack of space,
//! else `error`), recorded in the store's [`StorageHealth`], logged once and
//! counted (`bazaar_storage_errors_total`); from then on every write is
//! refused at once (sled keeps a failed write in memory and refuses every
//! write after an I/O error, so nothing but a fresh start on what is on disk
//! recovers it). A supervised service ([`StorageHealth::supervise`]) starts
//! a watcher that writes and fsyncs a probe file in the database directory
//! every [`PROBE_EVERY`]: once that works (space freed; for other errors not
//! before [`ERROR_BOUND`]), the process says so in one line on stderr and
//! exits with [`crate::EXIT_RESTART`], and its supervisor restarts it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::StoreError;
use crate::types::StorageState;

/// How often a failed store checks that its directory takes writes again:
/// often enough that trades resume within a second or so of space coming
/// back, rarely enough to cost nothing.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A failure that is not lack of space (an I/O error) is reported for this
/// long before the restart, so health checks and the log can see it, and a
/// disk that keeps failing does not restart the service in a tight loop.
pub const ERROR_BOUND: Duration = Duration::from_secs(5);
/// The probe file, in the database directory.
const PROBE_FILE: &str = ".bazaar-storage-probe";
/// Bytes the probe writes: more than a few, so a disk with a handful of
/// bytes free does not pass for one with room to work.
const PROBE_BYTES: usize = 64 * 1024;

static ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Storage errors of this process (every failed write, flush or damaged
/// read), for `bazaar_storage_errors_total`.
pub fn storage_errors() -> Counter {
    ERRORS.clone()
}

/// How a store failed: its state and the engine's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub state: StorageState,
    pub cause: String,
}

impl Failure {
    /// "a full disk" or "a storage error", as the recovery line says it.
    fn what(&self) -> &'static str {
        match self.state {
            StorageState::Full => "a full disk",
            _ => "a storage error",
        }
    }
}

/// `full` when `cause` says the disk (or the quota) is full, else `error`.
pub fn classify(cause: &str) -> StorageState {
    let full = [
        "No space left",
        "os error 28",
        "StorageFull",
        "Disk quota exceeded",
        "os error 122",
        "QuotaExceeded",
    ];
    if full.iter().any(|m| cause.contains(m)) {
        StorageState::Full
    } else {
        StorageState::Error
    }
}

/// The storage health of one store, shared by the store, its service's
/// `/health` and the recovery watcher. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct StorageHealth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `catalog` or `order-N`: names the service in the log and the
    /// recovery line.
    service: String,
    dir: PathBuf,
    failure: OnceLock<Failure>,
    /// Whether a failure exits the process once storage works again.
    supervised: AtomicBool,
    watching: AtomicBool,
}

impl StorageHealth {
    pub fn new(service: &str, dir: &Path) -> StorageHealth {
        StorageHealth {
            inner: Arc::new(Inner {
                service: service.to_string(),
                dir: dir.to_path_buf(),
                failure: OnceLock::new(),
                supervised: AtomicBool::new(false),
                watching: AtomicBool::new(false),
            }),
        }
    }

    /// The first failure, while the store is failed.
    pub fn failure(&self) -> Option<&Failure> {
        self.inner.failure.get()
    }

    /// The state `/health` reports, and the first error's text.
    pub fn state(&self) -> (StorageState, Option<String>) {
        match self.failure() {
            Some(f) => (f.state, Some(f.cause.clone())),
            None => (StorageState::Ok, None),
        }
    }

    /// `Err` (what a refused write answers) once the store failed.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(f) => Err(StoreError::Failed {
                state: f.state,
                cause: f.cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records a failed write or flush whose engine error is `cause`, and
    /// returns the error the caller answers with.
    pub fn fail(&self, cause: &str) -> StoreError {
        self.fail_with(classify(cause), cause)
    }

    /// Records a failure of a known state (e.g. `error` for a damaged read).
    pub fn fail_with(&self, state: StorageState, cause: &str) -> StoreError {
        ERRORS.inc();
        let mut first = false;
        let recorded = self.inner.failure.get_or_init(|| {
            first = true;
            Failure {
                state,
                cause: cause.to_string(),
            }
        });
        if first {
            tracing::error!(
                service = %self.inner.service,
                storage = state.as_str(),
                error = cause,
                "storage failed: writes are refused and only what is durable is served \
                 until the service restarts"
            );
            if self.inner.supervised.load(Ordering::Acquire) {
                self.watch();
            }
        }
        StoreError::Failed {
            state: recorded.state,
            cause: recorded.cause.clone(),
        }
    }

    /// From now on a failure ends the process (status 75) once storage
    /// works again, for its supervisor to restart it; a store that already
    /// failed starts waiting now. Services call this; tools and tests that
    /// open a store do not.
    pub fn supervise(&self) {
        self.inner.supervised.store(true, Ordering::Release);
        if self.failure().is_some() {
            self.watch();
        }
    }

    fn watch(&self) {
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("storage-watch".into())
            .spawn(move || {
                if let Some(failure) = inner.failure.get() {
                    exit_after_recovery(&inner.service, &inner.dir, failure);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the storage watcher");
        }
    }
}

/// A store that failed to open for a storage failure (a full disk while
/// it wrote its first records): waits for storage to work, then exits for
/// a restart ([`exit_after_recovery`]) instead of exiting into a crash loop
/// faster than the supervisor's backoff. Any other error is returned.
pub fn restart_if_failed(service: &str, dir: &Path, error: StoreError) -> StoreError {
    match error.failure() {
        Some(failure) => {
            tracing::error!(
                service,
                dir = %dir.display(),
                error = %failure.cause,
                "cannot open the database; waiting for storage to work again"
            );
            exit_after_recovery(service, dir, &failure)
        }
        None => error,
    }
}

/// Waits until storage works again after `failure` (see
/// [`wait_until_writable`]), then prints the one recovery line and exits
/// with [`crate::EXIT_RESTART`]. Also what a service calls when it cannot
/// start for lack of space, so it waits for space instead of crash-looping.
pub fn exit_after_recovery(service: &str, dir: &Path, failure: &Failure) -> ! {
    wait_until_writable(dir, failure, PROBE_EVERY, ERROR_BOUND);
    eprintln!(
        "{service}: storage recovered after {}: {}; exiting with status {} so the supervisor \
         restarts it on what is durable on disk",
        failure.what(),
        failure.cause,
        crate::EXIT_RESTART
    );
    std::process::exit(crate::EXIT_RESTART)
}

/// Returns once a probe write in `dir` succeeds, every `every`, and for a
/// failure that is not lack of space not before `bound` has passed.
pub fn wait_until_writable(dir: &Path, failure: &Failure, every: Duration, bound: Duration) {
    let started = Instant::now();
    let mut probes = 0u64;
    loop {
        std::thread::sleep(every);
        let waited_enough = failure.state == StorageState::Full || started.elapsed() >= bound;
        if !waited_enough {
            continue;
        }
        match probe(dir) {
            Ok(()) => return,
            Err(e) => {
                probes += 1;
                // Every 20th failed probe (10 s): alive, still waiting.
                if probes % 20 == 1 {
                    tracing::warn!(dir = %dir.display(), error = %e, "storage still refuses writes");
                }
            }
        }
    }
}

/// Writes, fsyncs and removes a probe file in `dir` (or, when `dir` does
/// not exist yet, in its nearest existing ancestor).
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let base = dir.ancestors().find(|d| d.is_dir()).unwrap_or(dir);
    let path = base.join(PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_and_one_failure() {
        assert_eq!(
            classify("IO error: No space left on device (os error 28)"),
            StorageState::Full
        );
        assert_eq!(
            classify("Disk quota exceeded (os error 122)"),
            StorageState::Full
        );
        assert_eq!(
            classify("Input/output error (os error 5)"),
            StorageState::Error
        );
        let dir = tempfile::tempdir().unwrap();
        let h = StorageHealth::new("test", dir.path());
        assert_eq!(h.state(), (StorageState::Ok, None));
        assert!(h.check().is_ok());
        let before = storage_errors().get();
        let e = h.fail("No space left on device (os error 28)");
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().starts_with("storage full"), "{e}");
        // The first failure stays; later ones are counted, not recorded.
        let _ = h.clone().fail("Input/output error (os error 5)");
        assert_eq!(storage_errors().get() - before, 2);
        let (state, cause) = h.state();
        assert_eq!(state, StorageState::Full);
        assert!(cause.unwrap().contains("No space"));
        assert!(matches!(
            h.check(),
            Err(StoreError::Failed {
                state: StorageState::Full,
                ..
            })
        ));
    }

    #[test]
    fn probes_write_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A directory not created yet probes its parent.
        probe(&dir.path().join("not/yet")).unwrap();
        let full = Failure {
            state: StorageState::Full,
            cause: "No space left".into(),
        };
        let started = Instant::now();
        wait_until_writable(dir.path(), &full, Duration::from_millis(10), ERROR_BOUND);
        assert!(
            started.elapsed() < ERROR_BOUND,
            "a full disk waits for space only"
        );
        let error = Failure {
            state: StorageState::Error,
            cause: "Input/output error".into(),
        };
        let started = Instant::now();
        let bound = Duration::from_millis(100);
        wait_until_writable(dir.path(), &error, Duration::from_millis(10), bound);
        assert!(
            started.elapsed() >= bound,
            "an I/O error waits for the bound"
        );
    }
}
