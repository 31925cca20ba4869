//! Closing a segment by copying a full tree into it ([`Archive::close`]).

use sled::IVec;

use super::files::{io, name, open_segment, remove, sync_dir};
use super::{Archive, StoreError};

/// Records copied into a new segment per batch. Copying 25,000 records
/// raised the RSS by 52 MiB when they were collected first and written in
/// batches of 1,000, by 14–20 MiB when read as the copy went in batches of
/// 1,000, and by 2–12 MiB in batches of 200 (docs/PERFORMANCE.md).
const COPY_CHUNK: usize = 200;

/// One segment to close: its records `first..end` and, for each tree, the
/// entries to copy as they are stored, read as the copy goes.
pub struct Closing<'a> {
    pub first: u64,
    pub end: u64,
    pub trees: Vec<(&'static str, Entries<'a>)>,
}

/// The entries of one tree of a [`Closing`], in any order.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<(IVec, IVec), StoreError>> + 'a>;

impl Archive {
    /// Writes a new closed segment by copying `closing`'s entries (under a
    /// `.new` name, flushed, renamed into place); from its return on, reads
    /// of `first..end` go to it. Its `first` must be [`end`](Self::end),
    /// and its numbered tree must hold `end - first` records.
    pub fn close(&self, closing: Closing<'_>) -> Result<(), StoreError> {
        let Closing { first, end, trees } = closing;
        let follows = self.read().last().is_none_or(|s| s.end == first);
        if !follows || end <= first || self.tail().is_some() {
            return Err(self.corrupt(format!(
                "a segment {first}..{end} cannot follow {}",
                self.end()
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let final_path = self.dir.join(name(first, end));
        let copy = self.dir.join(format!("{}.new", name(first, end)));
        if copy.exists() {
            remove(&copy)?;
        }
        let index = {
            let db = open_segment(&copy)?;
            for (tree, entries) in trees {
                let copied = copy_into(&db.open_tree(tree)?, entries)?;
                let expected = end - first;
                if tree == self.numbered && copied != expected {
                    return Err(self.corrupt(format!(
                        "{copied} records to close into segment {first}..{end}, not {expected}"
                    )));
                }
            }
            db.flush()?;
            self.write_entries_of(&db, first, end)?
        };
        std::fs::rename(&copy, &final_path).map_err(io)?;
        sync_dir(&self.dir)?;
        self.push(first, end, &index)
    }
}

/// Writes `entries` into `tree` in batches of [`COPY_CHUNK`] (one batch of
/// a whole segment is one record in sled's log, held in memory whole);
/// returns how many.
fn copy_into(tree: &sled::Tree, mut entries: Entries<'_>) -> Result<u64, StoreError> {
    let mut copied = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for kv in entries.by_ref().take(COPY_CHUNK) {
            let (k, v) = kv?;
            batch.insert(k, v);
            any = true;
            copied += 1;
        }
        if !any {
            return Ok(copied);
        }
        tree.apply_batch(batch)?;
    }
}
