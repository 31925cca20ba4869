//! The index of the closed segments: each one's file of (fingerprint,
//! number) entries, the fences of its blocks kept in memory, and the bit
//! array over all of them (`filter`). A lookup by key reads the numbers its
//! fingerprint names; it opens no segment unless a block of a file cannot
//! be read or fails its check, and then lists that segment's index from
//! the segment itself.

use super::files::{Entry, name, open_segment, read_block, read_fingerprints, write_fingerprints};
use super::{Archive, KeyFilter, StoreError, fingerprint};

/// Lists the index of a segment's database: every key's fingerprint and
/// the number of the record it names, in any order. The store knows how it
/// keeps its keys; the archive keeps what this gives in the segment's file.
pub type KeysOf = Box<dyn Fn(&sled::Db) -> Result<Vec<Entry>, StoreError> + Send + Sync>;

impl Archive {
    /// The numbers that the closed segments' index entries under the
    /// fingerprint of `key` name, newest segment first: the records of
    /// `key`, and by chance (64 bits of a hash) of another key, which the
    /// caller tells apart by reading the record. Only blocks of the files
    /// of segments the filter and the fences do not rule out are read; a
    /// block that cannot be read or fails its check is no answer, and its
    /// segment's index is listed from the segment instead.
    pub fn find(&self, key: &[u8]) -> Result<Vec<u64>, StoreError> {
        let Some(index) = &self.index else {
            return Ok(Vec::new());
        };
        let fp = fingerprint(key);
        let candidates = self.read().candidates(fp);
        let mut numbers = Vec::new();
        for c in candidates {
            let block = match read_block(&self.dir, c.first, c.end, c.block, c.keys, c.fence) {
                Some(block) => block,
                None => {
                    if self.first_report_of_damage(c.first) {
                        tracing::warn!(
                            segment = %name(c.first, c.end),
                            "a block of the segment's fingerprint file cannot be read or is damaged; \
                             reading the segment's index from the segment instead until the next \
                             start rebuilds the file"
                        );
                    }
                    self.with_segment(c.first, |db| index(db))?
                }
            };
            numbers.extend(block.iter().filter(|e| e.0 == fp).map(|e| e.1));
        }
        Ok(numbers)
    }

    /// Whether the damage to the fingerprint file of the segment from
    /// `first` is news (not reported since open).
    pub(super) fn first_report_of_damage(&self, first: u64) -> bool {
        self.damaged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(first)
    }

    /// Adds the newest closed segment, whose sorted index entries are
    /// `entries`. When the filter would hold more keys than it is sized
    /// for, a larger one is built first from every segment's file (outside
    /// the lock: only one close runs at a time).
    pub(super) fn push(&self, first: u64, end: u64, entries: &[Entry]) -> Result<(), StoreError> {
        let grow = {
            let closed = self.read();
            closed.must_grow(entries.len()).map(|keys| {
                let ranges: Vec<(u64, u64)> = closed.iter().map(|s| (s.first, s.end)).collect();
                (ranges, keys)
            })
        };
        let grown = if let Some((ranges, keys)) = grow {
            let started = std::time::Instant::now();
            let filter = KeyFilter::new(keys);
            for &(first, end) in &ranges {
                self.entries_of(first, end)?
                    .into_iter()
                    .for_each(|e| filter.insert(e.0));
            }
            tracing::info!(
                keys,
                segments = ranges.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "key filter of the closed segments rebuilt larger"
            );
            Some(filter)
        } else {
            None
        };
        let mut closed = self.segments.write().unwrap_or_else(|e| e.into_inner());
        if let Some(filter) = grown {
            closed.replace_filter(filter);
        }
        closed.push(first, end, entries);
        Ok(())
    }

    /// The index entries of a segment: from its file, or listed from the
    /// segment and written anew when the file is missing or fails its
    /// checksum (or was written by an earlier version).
    pub(super) fn entries_of(&self, first: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        if self.index.is_none() {
            return Ok(Vec::new());
        }
        if let Some(entries) = read_fingerprints(&self.dir, first, end) {
            return Ok(entries);
        }
        let db = open_segment(&self.dir.join(name(first, end)))?;
        self.write_entries_of(&db, first, end)
    }

    /// The sorted index entries of `db` (the segment `first..end`), written
    /// to its file; none without an index.
    pub(super) fn write_entries_of(
        &self,
        db: &sled::Db,
        first: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let Some(index) = &self.index else {
            return Ok(Vec::new());
        };
        let mut entries = index(db)?;
        entries.sort_unstable();
        entries.dedup();
        write_fingerprints(&self.dir, first, end, &entries)?;
        Ok(entries)
    }
}
