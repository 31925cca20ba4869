//! Opening a sled directory with errors a person can act on, and the
//! big-endian number keys both databases use.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the database at {path} is locked by another process ({who} is running?)")]
    Locked { path: String, who: &'static str },
    #[error("cannot open the database at {path}: {cause}")]
    Open { path: String, cause: sled::Error },
}

/// sled's page cache per database. sled's default is 1 GiB, so a replica's
/// memory would grow with its log until then; 32 MiB holds the hot end of
/// the log and the whole catalog, and bounds each process.
pub const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

/// Opens (creating if needed) the sled directory of service `who`.
pub fn open_db(path: &Path, who: &'static str) -> Result<sled::Db, OpenError> {
    let shown = path.display().to_string();
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .open()
        .map_err(|e| match &e {
            // sled reports a held lock as an `Other` io error naming the lock.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                OpenError::Locked { path: shown, who }
            }
            _ => OpenError::Open {
                path: shown,
                cause: e,
            },
        })
}

/// Decodes an 8-byte big-endian number key; `None` when it is not 8 bytes.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let b: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}
