//! The storage helpers both stores (`order::store::OrderLog` and
//! `catalog::store::Catalog`) share, and the only code besides them that
//! names the engine (sled):
//!
//! - [`Database`]: an open sled directory with its value format and its
//!   [`StorageHealth`]; every write and flush of both stores goes through
//!   it, so a failure is classified, recorded, logged once and refuses every
//!   later write ([`health`]);
//! - [`Format`]: how values are stored, with a CRC-32 per record in new
//!   databases, read as before in older ones ([`codec`]);
//! - the one [`StoreError`], big-endian number keys (so `last()` and range
//!   scans are numeric), the next number after the last key;
//! - [`scan`]: the start-up check of every record, bounded in time;
//! - [`archive`]: the older records of a log in closed segments, sled
//!   databases of their own, so that no open database grows with the log;
//! - [`dump`]: reading a stopped service's files, or asking the running
//!   service that holds their lock (`catalog dump`, `order dump`).
//!
//! Everything above the stores sees only [`StoreError`] (whose engine errors
//! are text) and the stores' own typed methods.

pub mod archive;
pub mod batches;
mod codec;
pub mod dump;
pub mod floor;
mod health;
pub mod scan;

use std::path::Path;

use sled::transaction::TransactionError;

use crate::types::{OrderRecord, StorageState};

pub use codec::{FORMAT_KEY, Format};
pub use health::{
    ERROR_BOUND, Failure, PROBE_EVERY, StorageHealth, classify, exit_after_recovery, probe,
    restart_if_failed, storage_errors, wait_until_writable,
};
pub use scan::{Bounds, EAGER_LIMIT, Scan, ScanState, TAIL};

/// The engine's name, as it appears in the names of the flush metrics
/// (`bazaar_sled_flushes_total`, ...), which dashboards and tests read.
pub const ENGINE: &str = "sled";

/// sled's page cache per database. sled's default is 1 GiB, so a replica's
/// memory would grow with its log until then. 8 MiB holds the hot end of
/// the log and the whole catalog; 32 MiB (before) cost more resident memory
/// as the log grew than the cache itself is (docs/PERFORMANCE.md).
pub const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

/// Most records one page of a range (`GET /log`, `GET /applied`) returns;
/// bounds response size and memory.
pub const MAX_RANGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the database at {path} is locked by another process ({who} is running?)")]
    Locked { path: String, who: &'static str },
    #[error("cannot open the database at {path}: {cause}")]
    Open { path: String, cause: String },
}

/// What a store's operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The engine failed (I/O, a broken file); its message as text.
    #[error("database error: {0}")]
    Engine(String),
    /// A key or value that does not decode or fails its checksum, records
    /// out of sequence, or numbers that ran out.
    #[error("corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    /// An append that does not start at, or skips past, the next number.
    #[error("append of order {first} does not follow the highest order (next expected {next})")]
    NotContiguous { first: u64, next: u64 },
    /// An earlier write or flush failed: the store serves only what is
    /// durable and refuses writes until the process restarts on it. Services
    /// answer 503 ([`StoreError::is_unavailable`]).
    #[error("{}", failed_message(*.state))]
    Failed { state: StorageState, cause: String },
    /// A setting of the store that is not valid (named in the text).
    #[error("{0}")]
    Setting(String),
}

fn failed_message(state: StorageState) -> &'static str {
    match state {
        StorageState::Full => {
            "storage full: writes are refused until space is freed and the service restarts"
        }
        _ => "storage error: writes are refused until the service restarts on what is durable",
    }
}

impl StoreError {
    /// Whether this is a failed store refusing writes: a 503 (retry on
    /// another replica, or later), not a 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Failed { .. })
    }

    /// Whether the files look damaged (a record that fails its check, an
    /// engine error, files the engine cannot read), so that rebuilding is
    /// the way out; not a lock, a full disk, or a directory that cannot be
    /// created or written for its permissions.
    pub fn is_damage(&self) -> bool {
        const NOT_DAMAGE: [&str; 5] = [
            "Permission denied",
            "Not a directory",
            "Read-only file system",
            "No such file or directory",
            "File exists",
        ];
        match self {
            StoreError::Corrupt { .. } => true,
            StoreError::Engine(cause) | StoreError::Open(OpenError::Open { cause, .. }) => {
                classify(cause) != StorageState::Full
                    && !NOT_DAMAGE.iter().any(|m| cause.contains(m))
            }
            _ => false,
        }
    }

    /// The storage failure behind this error, when it is one: a failed
    /// store, or an open or engine error for lack of space. A service that
    /// cannot start for lack of space waits for it
    /// ([`exit_after_recovery`]) instead of exiting into a crash loop.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            StoreError::Failed { state, cause } => Some(Failure {
                state: *state,
                cause: cause.clone(),
            }),
            StoreError::Open(OpenError::Open { cause, .. }) | StoreError::Engine(cause)
                if classify(cause) == StorageState::Full =>
            {
                Some(Failure {
                    state: StorageState::Full,
                    cause: cause.clone(),
                })
            }
            _ => None,
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // sled shows an I/O error's Debug form; its Display form is
            // the one people read ("No space left on device (os error 28)").
            sled::Error::Io(io) => StoreError::Engine(format!("I/O error: {io}")),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// A transaction aborts with a [`StoreError`] (a record inside it did not
/// decode) or fails in the engine.
impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

/// Runs `open` until the database's lock is free: sled lets go of its file
/// lock a moment after the last handle is dropped (once its background
/// flush work ends), so a reopen right after a drop may find it held. Any
/// other answer returns at once; after 10 s the last `Locked` is returned.
pub fn open_when_unlocked<T>(
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut locked = None;
    let opened = crate::wait::try_poll_blocking(
        "the database's lock to be released",
        std::time::Duration::from_secs(10),
        crate::wait::POLL_EVERY,
        || match open() {
            Err(e @ StoreError::Open(OpenError::Locked { .. })) => {
                locked = Some(e);
                None
            }
            other => Some(other),
        },
    );
    match opened {
        Ok(result) => result,
        Err(timed_out) => Err(locked.unwrap_or(StoreError::Engine(timed_out.to_string()))),
    }
}

/// Opens (creating if needed) the sled directory of service `who`.
pub fn open_db(path: &Path, who: &'static str) -> Result<sled::Db, OpenError> {
    open_db_with(path, who, CACHE_CAPACITY, Some(500))
}

/// [`open_db`] with its page cache and how often sled flushes by itself
/// (`None`: only when asked).
pub fn open_db_with(
    path: &Path,
    who: &'static str,
    cache: u64,
    flush_every_ms: Option<u64>,
) -> Result<sled::Db, OpenError> {
    let shown = path.display().to_string();
    sled::Config::new()
        .path(path)
        .cache_capacity(cache)
        .flush_every_ms(flush_every_ms)
        .open()
        .map_err(|e| match &e {
            // sled reports a held lock as an `Other` io error naming the lock.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                OpenError::Locked { path: shown, who }
            }
            _ => OpenError::Open {
                path: shown,
                cause: e.to_string(),
            },
        })
}

/// An open database: the engine, the format of its values, its `meta`
/// tree (format marker, epoch) and its [`StorageHealth`]. Writes and
/// flushes go through [`write`](Self::write) and [`flush`](Self::flush),
/// which refuse at once after a failure and record the first one.
pub struct Database {
    db: sled::Db,
    meta: sled::Tree,
    format: Format,
    health: StorageHealth,
}

impl Database {
    /// Opens the directory of service `who` (named `service` in the health
    /// handle and its log lines) and settles its format: the marker's, or
    /// for a database that holds nothing yet, the checksummed format, whose
    /// marker is written and flushed here. A database with records and no
    /// marker was written before checksums and is read as it is
    /// ([`Format::Legacy`]).
    pub fn open(path: &Path, who: &'static str, service: &str) -> Result<Database, StoreError> {
        let db = open_db(path, who)?;
        let meta = db.open_tree("meta")?;
        let health = StorageHealth::new(service, path);
        let format = match meta.get(FORMAT_KEY)? {
            Some(marker) => Format::from_marker(&marker)?,
            None if is_empty(&db)? => {
                let marked = meta
                    .insert(FORMAT_KEY, &Format::Checksummed.marker())
                    .map_err(StoreError::from)
                    .and_then(|_| Ok(db.flush()?));
                if let Err(e) = marked {
                    return Err(health.fail(&e.to_string()));
                }
                Format::Checksummed
            }
            None => Format::Legacy,
        };
        Ok(Database {
            db,
            meta,
            format,
            health,
        })
    }

    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The engine's handle (for a store whose log continues in other
    /// databases, see [`archive`]).
    pub fn engine(&self) -> &sled::Db {
        &self.db
    }

    pub fn meta(&self) -> &sled::Tree {
        &self.meta
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Runs a write (an insert, a batch, a transaction): refused at once
    /// when the store failed before; an engine failure fails the store.
    /// A transaction's own abort (a record that did not decode) is
    /// returned as it is.
    pub fn write<T>(&self, op: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.health.check()?;
        op().map_err(|e| match e {
            StoreError::Engine(cause) => self.health.fail(&cause),
            other => other,
        })
    }

    /// Makes every write so far durable; refused after a failure, and a
    /// failure fails the store. (The store counts and times it, with its
    /// `common::metrics::FlushMetrics`.)
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_also(&self.db).await
    }

    /// [`flush`](Self::flush) of another database of the same store (a
    /// segment of its log), under this one's health.
    pub async fn flush_also(&self, db: &sled::Db) -> Result<(), StoreError> {
        self.health.check()?;
        match db.flush_async().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.health.fail(&StoreError::from(e).to_string())),
        }
    }

    /// [`flush`](Self::flush) on the calling thread (at open, before
    /// anything is served).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.write(|| Ok(self.db.flush().map(|_| ())?))
    }

    /// Passes a read's result on; an engine error or a record that fails
    /// its checksum is a storage failure (corruption on disk), recorded so
    /// the service reports it and restarts, where the start-up check
    /// refuses the damaged files.
    pub fn read<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result.inspect_err(|e| {
            if let StoreError::Engine(cause) | StoreError::Corrupt { message: cause, .. } = e {
                self.health.fail_with(StorageState::Error, cause);
            }
        })
    }
}

/// Whether no tree of `db` holds a record.
fn is_empty(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if !db.open_tree(name)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The key of number `n`: 8 bytes, big-endian, so keys sort as numbers.
pub fn encode_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Decodes an 8-byte big-endian number key; `None` when it is not 8 bytes.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let b: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Decodes a number key of `tree`.
pub fn decode_number(tree: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    decode_u64(bytes).ok_or_else(|| StoreError::Corrupt {
        tree,
        message: format!("{} bytes where 8 were expected", bytes.len()),
    })
}

/// One more than the number of the last key of `tree` (0 when empty): the
/// next number to hand out. A last key of `u64::MAX` is corruption.
pub fn next_number(tree: &sled::Tree, name: &'static str) -> Result<u64, StoreError> {
    match tree.last()? {
        Some((k, _)) => {
            decode_number(name, &k)?
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt {
                    tree: name,
                    message: "the last order number is u64::MAX; no number is left".into(),
                })
        }
        None => Ok(0),
    }
}

/// A record kept under its own number.
pub trait Numbered {
    fn number(&self) -> u64;
}

impl Numbered for OrderRecord {
    fn number(&self) -> u64 {
        self.number
    }
}

/// Moves a database directory aside, to `<path>.moved-<unix time>` (never
/// deleted: it may hold what a person wants back), for `--rebuild`.
/// Returns where it went; `None` when there was nothing at `path`.
pub fn move_aside(path: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".moved-{secs}"));
    let target = std::path::PathBuf::from(target);
    std::fs::rename(path, &target).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot move {} aside to {}: {e}",
                path.display(),
                target.display()
            ),
        )
    })?;
    Ok(Some(target))
}
