//! The database a tail starts from, made ahead of time. Making a sled
//! database, flushing it, dropping it and opening it again took 6–22 ms
//! (docs/PERFORMANCE.md), all of it while the store's appends waited for
//! the new tail; a spare made after one roll lets the next take it by a
//! rename. A spare, and one that was being made at a stop, end in `.new`
//! like every unfinished directory, so they are removed at open.

use std::path::Path;

use super::files::{io, open_segment, remove};
use super::{Archive, StoreError};

/// A spare, made and flushed, ready to be renamed into place.
const SPARE: &str = "spare-tail.new";
/// A spare being made.
const MAKING: &str = "spare-tail.making.new";

impl Archive {
    /// Makes the spare unless there is one. Blocks (a blocking thread's
    /// work); a failure leaves the next tail to be made when it starts.
    pub fn prepare_spare(&self) -> Result<(), StoreError> {
        let _one = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if self.dir.join(SPARE).exists() {
            return Ok(());
        }
        self.make(&self.dir.join(SPARE))
    }

    /// Puts an empty, flushed database at `path`: the spare, or one made
    /// now when there is none.
    pub(super) fn take_spare(&self, path: &Path) -> Result<(), StoreError> {
        let _one = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let spare = self.dir.join(SPARE);
        if !spare.exists() {
            self.make(&spare)?;
        }
        std::fs::rename(&spare, path).map_err(io)
    }

    /// Makes an empty database under a `.new` name and renames it `to`.
    fn make(&self, to: &Path) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let making = self.dir.join(MAKING);
        if making.exists() {
            remove(&making)?;
        }
        open_segment(&making)?.flush()?;
        std::fs::rename(&making, to).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spare made ahead becomes the next tail, and a spare left at a
    /// stop is removed at open; without a spare a tail is made as it starts.
    #[test]
    fn a_tail_starts_from_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join("segments");
        {
            let a = Archive::open(dir.path(), "orders", None).unwrap();
            a.prepare_spare().unwrap();
            a.prepare_spare().unwrap();
            assert!(segments.join(SPARE).exists());
            let db = a.start_tail(0).unwrap();
            assert!(!segments.join(SPARE).exists(), "the tail took the spare");
            db.open_tree("t").unwrap().insert(b"k", b"v").unwrap();
            db.flush().unwrap();
            a.prepare_spare().unwrap();
        }
        let a = Archive::open(dir.path(), "orders", None).unwrap();
        assert!(!segments.join(SPARE).exists(), "removed at open");
        assert_eq!(a.tail(), Some(0));
        let db = a.open_tail(0).unwrap();
        assert_eq!(db.open_tree("t").unwrap().get(b"k").unwrap().unwrap(), b"v");
        drop(db);
        let other = tempfile::tempdir().unwrap();
        let a = Archive::open(other.path(), "orders", None).unwrap();
        assert!(a.start_tail(0).is_ok(), "made as it starts");
        assert!(!other.path().join("segments").join(MAKING).exists());
    }
}
