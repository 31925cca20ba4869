//! Closed segments: the older records of a store's numbered tree (the
//! order log, the catalog's applied orders) in sled databases of their
//! own under `<db>/segments/`, never written again, so that the store's
//! open databases stay small.
//!
//! sled's memory grows with what a database holds, not with what was ever
//! written to it (docs/PERFORMANCE.md), so a store whose open databases
//! hold a bounded number of records has a bounded memory. A segment comes
//! about in one of two ways:
//!
//! - **A tail that fills up** (the order log): the store writes into
//!   `<first>-tail`, a sled database of its own ([`Archive::start_tail`]);
//!   when it holds [`Sizes::segment`] orders, the fingerprints of its index
//!   keys go to `<first>-<end>.fp64` and the directory is renamed
//!   `<first>-<end>` ([`Archive::close_tail`]), then a new tail starts at
//!   `end`. Nothing is copied. A stop between the two leaves no tail, and
//!   the store starts one at open.
//! - **A copy of a full tree** (the catalog, whose trades change its
//!   stocks and its applied orders in one transaction of one database):
//!   the store writes its records into a tree of its own database, and
//!   when that holds [`Sizes::segment`] records it starts another; the full
//!   one is copied to `<first>-<end>.new`, flushed, renamed `<first>-<end>`
//!   ([`Archive::close`]), and then dropped from the store's database; a
//!   store that finds such a tree at open (a stop between the two) drops
//!   it then.
//!
//! A directory ending in `.new` is an unfinished copy or tail and is
//! removed at open (the records it would hold are still where they were).
//! Every rename is followed by a sync of the directory. Reads below the
//! tail open the segment that holds them (one or two stay open until unread
//! for ten seconds, [`kept`]); lookups by index key open only the segments
//! whose fingerprints (64 bits of a hash per key, in the segment's file)
//! hold the key's, and search those files only when one bit array over all
//! of them ([`filter`], 2 MiB per million orders) says some segment may.
//! In memory per segment: its range and every 512th fingerprint, which
//! names the one block of its file to read (16 bytes per 1,000 orders).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use sled::IVec;

use super::{StoreError, encode_key};
use files::{
    BLOCK, io, list, name, open_segment, open_service, read_block, read_fingerprints, remove,
    sync_dir, tail_name, write_fingerprints,
};
use filter::Closed;
use kept::KeptOpen;

mod copy;
mod files;
mod filter;
mod kept;
mod sizes;

pub use copy::{Closing, Entries};
pub use files::{Fingerprint, fingerprint};
pub use filter::KeyFilter;
pub use sizes::{SEGMENT_ENV, Sizes, wait_while_closing};

/// The page cache of a closed segment.
const SEGMENT_CACHE: u64 = 1024 * 1024;

struct Segment {
    first: u64,
    end: u64,
    /// How many index keys it holds (0 without an index).
    keys: usize,
    /// Every [`BLOCK`]-th of its keys' sorted fingerprints, from the first:
    /// where each block of its fingerprint file starts.
    fences: Vec<Fingerprint>,
}

impl Segment {
    fn new(first: u64, end: u64, fps: &[Fingerprint]) -> Segment {
        Segment {
            first,
            end,
            keys: fps.len(),
            fences: fps.iter().step_by(BLOCK).copied().collect(),
        }
    }
}

/// The segments of one store: closed ones, numbered without a gap, and
/// the open tail that follows them (if the store keeps one here).
pub struct Archive {
    dir: PathBuf,
    /// The tree every segment holds the numbered records in.
    numbered: &'static str,
    /// The index tree (a key -> its record's number), if the store has one.
    index: Option<&'static str>,
    segments: RwLock<Closed>,
    /// The first number of the tail segment, when there is one.
    tail: Mutex<Option<u64>>,
    open: KeptOpen,
    /// Segments (by first number) whose fingerprint file a lookup found
    /// unreadable or damaged since open: each is logged once, not on every
    /// lookup that reaches it (its segment is searched instead meanwhile,
    /// and the next open rebuilds the file).
    damaged: Mutex<BTreeSet<u64>>,
}

impl Archive {
    /// Reads the segments of the database at `root`: their names, which
    /// must run without a gap (and the tail's start where they end), and
    /// the fingerprints of their index keys (rebuilt from the segment when
    /// their file is missing or damaged). Removes unfinished copies and
    /// tails (`.new`).
    pub fn open(
        root: &Path,
        numbered: &'static str,
        index: Option<&'static str>,
    ) -> Result<Archive, StoreError> {
        let archive = Archive {
            dir: root.join("segments"),
            numbered,
            index,
            segments: RwLock::new(Closed::new(Vec::new(), KeyFilter::new(0))),
            tail: Mutex::new(None),
            open: KeptOpen::new(kept::IDLE),
            damaged: Mutex::default(),
        };
        let Some((mut found, tails)) = list(&archive.dir, |path| archive.not_a_segment(path))?
        else {
            return Ok(archive);
        };
        found.sort_unstable();
        let mut expected = found.first().map(|&(first, _)| first);
        for &(first, end) in &found {
            if Some(first) != expected || end <= first {
                return Err(archive.gap(first, end, expected));
            }
            expected = Some(end);
        }
        let segments = archive.read_segments(&found)?;
        match tails[..] {
            [] => {}
            [first] if expected.is_none_or(|e| e == first) => {
                *archive.tail.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
            }
            _ => {
                return Err(archive.corrupt(format!(
                    "the segments' tails {tails:?} do not follow their closed segments (ending at {})",
                    expected.unwrap_or(0)
                )));
            }
        }
        *archive.segments.write().unwrap_or_else(|e| e.into_inner()) = segments;
        Ok(archive)
    }

    /// The first number of the oldest closed segment, if there is one.
    pub fn start(&self) -> Option<u64> {
        self.read().first().map(|s| s.first)
    }

    /// One more than the highest number of a closed segment (0 when there
    /// is none).
    pub fn end(&self) -> u64 {
        self.read().last().map_or(0, |s| s.end)
    }

    /// The first number of the tail segment, when there is one.
    pub fn tail(&self) -> Option<u64> {
        *self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every closed segment's `first..end`, oldest first.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        self.read().iter().map(|s| (s.first, s.end)).collect()
    }

    /// Opens the tail segment for writing.
    pub fn open_tail(&self, first: u64) -> Result<sled::Db, StoreError> {
        open_service(&self.dir.join(tail_name(first)))
    }

    /// Starts an empty tail segment at `first` (after the closed ones):
    /// made under a `.new` name, flushed, renamed into place, and opened for
    /// writing.
    pub fn start_tail(&self, first: u64) -> Result<sled::Db, StoreError> {
        let end = self.read().last().map(|s| s.end);
        if end.is_some_and(|end| end != first) || self.tail().is_some() {
            return Err(self.gap(first, first, end));
        }
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let fresh = self.dir.join(format!("{}.new", tail_name(first)));
        if fresh.exists() {
            remove(&fresh)?;
        }
        open_segment(&fresh)?.flush()?;
        let path = self.dir.join(tail_name(first));
        std::fs::rename(&fresh, &path).map_err(io)?;
        sync_dir(&self.dir)?;
        let db = open_service(&path)?;
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
        Ok(db)
    }

    /// Closes the tail segment (`db`, which holds `first..end` and is
    /// durable): writes the fingerprints of its index keys, renames it
    /// `<first>-<end>`, and from then on serves its records as a closed
    /// segment. The caller starts the next tail and drops `db`; until the
    /// last handle on it is gone, a read that opens the segment waits for
    /// its lock (`open_when_unlocked`), so nothing holds a tail's handle
    /// for long (the start-up check takes one only for the tail itself).
    pub fn close_tail(&self, first: u64, end: u64, db: &sled::Db) -> Result<(), StoreError> {
        if self.tail() != Some(first) || end <= first {
            return Err(self.corrupt(format!("no tail {first}..{end} to close")));
        }
        let fingerprints = self.write_fingerprints_of(db, first, end)?;
        std::fs::rename(
            self.dir.join(tail_name(first)),
            self.dir.join(name(first, end)),
        )
        .map_err(io)?;
        sync_dir(&self.dir)?;
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.push(first, end, &fingerprints)
    }

    /// Runs `f` on the segment that starts at `first`, opening it if it is
    /// not one of the few kept open. Opening one, or waiting for another
    /// reader's opening, may take long: it runs through
    /// [`crate::task::blocking`], so a service's other requests go on.
    pub fn with_segment<T>(
        &self,
        first: u64,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A segment kept open, with no opening under way: no other thread.
        match self.open.try_get(first) {
            Some(db) => f(&db),
            None => crate::task::blocking(|| {
                let db = self.open.get_or_open(first, || {
                    let end = self
                        .read()
                        .iter()
                        .find(|s| s.first == first)
                        .map(|s| s.end)
                        .ok_or_else(|| self.corrupt(format!("no segment starts at {first}")))?;
                    open_segment(&self.dir.join(name(first, end)))
                })?;
                f(&db)
            }),
        }
    }

    /// The stored value of record `n` (`None` when it is not archived).
    pub fn get(&self, n: u64) -> Result<Option<IVec>, StoreError> {
        let Some(first) = self
            .read()
            .iter()
            .find(|s| s.first <= n && n < s.end)
            .map(|s| s.first)
        else {
            return Ok(None);
        };
        self.with_segment(first, |db| {
            Ok(db.open_tree(self.numbered)?.get(encode_key(n))?)
        })
    }

    /// Archived records `from..below` as stored, at most `limit`, walking
    /// the segments in order.
    pub fn range(
        &self,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        let spans: Vec<(u64, u64)> = self
            .read()
            .iter()
            .filter(|s| s.end > from && s.first < below)
            .map(|s| (s.first, s.end))
            .collect();
        let mut out = Vec::new();
        for (first, end) in spans {
            if out.len() >= limit {
                break;
            }
            let (start, stop) = (from.max(first), below.min(end));
            self.with_segment(first, |db| {
                let tree = db.open_tree(self.numbered)?;
                for kv in tree
                    .range(encode_key(start)..encode_key(stop))
                    .take(limit - out.len())
                {
                    out.push(kv?);
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// The stored index value of `key` in the newest segment that holds it;
    /// only segments whose fingerprint files hold the key's are opened. A
    /// block of a file that cannot be read or fails its check is no
    /// answer: its segment is searched.
    pub fn find(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let Some(index) = self.index else {
            return Ok(None);
        };
        let fp = fingerprint(key);
        let candidates = self.read().candidates(fp);
        for c in candidates {
            let held = match read_block(&self.dir, c.first, c.end, c.block, c.keys, c.fence) {
                Some(block) => block.binary_search(&fp).is_ok(),
                None => {
                    if self.first_report_of_damage(c.first) {
                        tracing::warn!(
                            segment = %name(c.first, c.end),
                            "a block of the segment's fingerprint file cannot be read or is damaged; \
                             searching the segment instead until the next start rebuilds the file"
                        );
                    }
                    true
                }
            };
            if !held {
                continue;
            }
            let found = self.with_segment(c.first, |db| Ok(db.open_tree(index)?.get(key)?))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Whether the damage to the fingerprint file of the segment from
    /// `first` is news (not reported since open).
    fn first_report_of_damage(&self, first: u64) -> bool {
        self.damaged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(first)
    }

    /// Adds the newest closed segment, whose sorted fingerprints are `fps`.
    /// When the filter would hold more keys than it is sized for, a larger
    /// one is built first from every segment's file (outside the lock:
    /// only one close runs at a time).
    fn push(&self, first: u64, end: u64, fps: &[Fingerprint]) -> Result<(), StoreError> {
        let grow = {
            let closed = self.read();
            closed.must_grow(fps.len()).map(|keys| {
                let ranges: Vec<(u64, u64)> = closed.iter().map(|s| (s.first, s.end)).collect();
                (ranges, keys)
            })
        };
        let grown = if let Some((ranges, keys)) = grow {
            let filter = KeyFilter::new(keys);
            for &(first, end) in &ranges {
                self.fingerprints_of(first, end)?
                    .into_iter()
                    .for_each(|fp| filter.insert(fp));
            }
            Some(filter)
        } else {
            None
        };
        let mut closed = self.segments.write().unwrap_or_else(|e| e.into_inner());
        if let Some(filter) = grown {
            closed.replace_filter(filter);
        }
        closed.push(first, end, fps);
        Ok(())
    }

    /// The closed segments `found` (sorted, without a gap), their keys in a
    /// filter sized for one key per record: each fingerprint file is read
    /// once, and only its fences are kept.
    fn read_segments(&self, found: &[(u64, u64)]) -> Result<Closed, StoreError> {
        let records: u64 = found.iter().map(|&(first, end)| end - first).sum();
        let keys = if self.index.is_some() { records } else { 0 };
        let mut closed = Closed::new(
            Vec::with_capacity(found.len()),
            KeyFilter::new(usize::try_from(keys).unwrap_or(usize::MAX)),
        );
        for &(first, end) in found {
            closed.push(first, end, &self.fingerprints_of(first, end)?);
        }
        Ok(closed)
    }

    fn not_a_segment(&self, path: &Path) -> StoreError {
        self.corrupt(format!("{} is not a segment's name", path.display()))
    }

    fn gap(&self, first: u64, end: u64, expected: Option<u64>) -> StoreError {
        self.corrupt(format!(
            "the segments hold records {first}..{end} where {} comes next",
            expected.unwrap_or(0)
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Closed> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            tree: self.numbered,
            message,
        }
    }

    /// The fingerprints of a segment's index keys: from its file, or read
    /// from the segment and written anew when the file is missing or fails
    /// its checksum.
    fn fingerprints_of(&self, first: u64, end: u64) -> Result<Vec<Fingerprint>, StoreError> {
        if self.index.is_none() {
            return Ok(Vec::new());
        }
        if let Some(fps) = read_fingerprints(&self.dir, first, end) {
            return Ok(fps);
        }
        let db = open_segment(&self.dir.join(name(first, end)))?;
        self.write_fingerprints_of(&db, first, end)
    }

    /// The sorted fingerprints of the index keys in `db` (the segment
    /// `first..end`), written to its file; none without an index.
    fn write_fingerprints_of(
        &self,
        db: &sled::Db,
        first: u64,
        end: u64,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        let Some(index) = self.index else {
            return Ok(Vec::new());
        };
        // One key per order: sized once, not grown by doubling.
        let mut fps = Vec::with_capacity(usize::try_from(end.saturating_sub(first)).unwrap_or(0));
        for kv in db.open_tree(index)?.iter() {
            fps.push(fingerprint(&kv?.0));
        }
        fps.sort_unstable();
        fps.dedup();
        write_fingerprints(&self.dir, first, end, &fps)?;
        Ok(fps)
    }
}

#[cfg(test)]
mod tests {
    use super::files::{BLOCK, keys_file, parse_fingerprints};
    use super::*;

    fn closing(first: u64, end: u64) -> Closing<'static> {
        let records = (first..end).map(|n| {
            Ok((
                IVec::from(&encode_key(n)),
                IVec::from(format!("r{n}").as_bytes()),
            ))
        });
        let keys = (first..end).map(|n| {
            Ok((
                IVec::from(format!("k{n}").as_bytes()),
                IVec::from(&encode_key(n)),
            ))
        });
        Closing {
            first,
            end,
            trees: vec![("orders", Box::new(records)), ("keys", Box::new(keys))],
        }
    }

    #[test]
    fn segments_are_read_across_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
            assert_eq!(a.end(), 0);
            a.close(closing(0, 10)).unwrap();
            a.close(closing(10, 25)).unwrap();
            assert!(a.close(closing(30, 40)).is_err(), "a gap is refused");
            let mut short = closing(25, 30);
            short.trees[0].1 = Box::new(closing(25, 29).trees.remove(0).1);
            assert!(a.close(short).is_err(), "a record missing is refused");
            assert_eq!(a.end(), 25);
        }
        // An unfinished copy is removed; a damaged fingerprint file is
        // rebuilt, and so is one an earlier version wrote (32-bit
        // fingerprints, `.keys`), which is then removed.
        std::fs::create_dir(dir.path().join("segments/x.new")).unwrap();
        let segments = dir.path().join("segments");
        let keys = keys_file(&segments, 0, 10);
        std::fs::write(&keys, b"damaged").unwrap();
        std::fs::remove_file(keys_file(&segments, 10, 25)).unwrap();
        let old = segments.join(format!("{}.{}", name(10, 25), files::OLD_KEYS));
        let old_fps: Vec<u8> = (0u32..16).flat_map(u32::to_le_bytes).collect();
        let sum = crc32fast::hash(&old_fps).to_le_bytes();
        std::fs::write(&old, [&old_fps[..], &sum[..]].concat()).unwrap();
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        assert!(!dir.path().join("segments/x.new").exists());
        assert!(!old.exists(), "the earlier version's file is removed");
        assert!(keys_file(&segments, 10, 25).exists());
        assert_eq!(a.segments(), vec![(0, 10), (10, 25)]);
        assert_eq!(a.end(), 25);
        assert_eq!(a.get(12).unwrap().unwrap().as_ref(), b"r12");
        assert_eq!(a.get(25).unwrap(), None);
        let range = a.range(8, 25, 5).unwrap();
        let got: Vec<&[u8]> = range.iter().map(|(_, v)| v.as_ref()).collect();
        assert_eq!(got, vec![&b"r8"[..], b"r9", b"r10", b"r11", b"r12"]);
        assert_eq!(a.range(3, 25, 100).unwrap().len(), 22);
        assert_eq!(a.find(b"k3").unwrap().unwrap().as_ref(), &encode_key(3));
        assert_eq!(a.find(b"k24").unwrap().unwrap().as_ref(), &encode_key(24));
        assert_eq!(a.find(b"k25").unwrap(), None);
        assert!(parse_fingerprints(&std::fs::read(&keys).unwrap()).is_some());
    }

    /// A tail is written in place, closed by a rename, and followed by
    /// the next; a stop between the two leaves no tail.
    #[test]
    fn a_tail_closes_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
            a.close(closing(0, 10)).unwrap();
            assert!(
                a.start_tail(12).is_err(),
                "a tail follows the closed segments"
            );
            let db = a.start_tail(10).unwrap();
            for (tree, entries) in closing(10, 14).trees {
                for kv in entries {
                    let (k, v) = kv.unwrap();
                    db.open_tree(tree).unwrap().insert(k, v).unwrap();
                }
            }
            db.flush().unwrap();
            assert_eq!(a.tail(), Some(10));
            a.close_tail(10, 14, &db).unwrap();
            assert_eq!((a.tail(), a.end()), (None, 14));
        }
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        assert_eq!(a.segments(), vec![(0, 10), (10, 14)]);
        assert_eq!(a.tail(), None);
        assert_eq!(a.find(b"k13").unwrap().unwrap().as_ref(), &encode_key(13));
        let db = a.start_tail(14).unwrap();
        drop(db);
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        assert_eq!(a.tail(), Some(14));
        assert!(
            a.open_tail(14)
                .unwrap()
                .open_tree("orders")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_missing_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Archive::open(dir.path(), "orders", None).unwrap();
            a.close(closing(0, 10)).unwrap();
            a.close(closing(10, 20)).unwrap();
            a.close(closing(20, 30)).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("segments").join(name(10, 20))).unwrap();
        let err = Archive::open(dir.path(), "orders", None).err().unwrap();
        assert!(
            err.to_string().contains("20..30 where 10 comes next"),
            "{err}"
        );
    }

    /// Segments of several blocks of fingerprints, enough of them that the
    /// filter is rebuilt larger from their files: every key is found, in
    /// every block, before and after a reopen; a block damaged on disk is
    /// no answer, its segment is searched instead.
    #[test]
    fn keys_are_found_in_every_block_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * BLOCK as u64 + 7;
        let segments = 4;
        {
            let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
            let bits = a.read().filter_bits();
            for s in 0..segments {
                a.close(closing(s * size, (s + 1) * size)).unwrap();
            }
            assert!(
                a.read().filter_bits() > bits,
                "the filter was rebuilt larger"
            );
            assert_eq!(a.read().keys() as u64, segments * size);
            for n in (0..segments * size).step_by(97) {
                let found = a.find(format!("k{n}").as_bytes()).unwrap();
                assert_eq!(found.unwrap().as_ref(), &encode_key(n), "k{n}");
            }
        }
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        let last = segments * size - 1;
        assert!(a.find(format!("k{last}").as_bytes()).unwrap().is_some());
        assert_eq!(a.find(b"k-none").unwrap(), None);
        // Every block of the first segment's file overwritten.
        let file = keys_file(&dir.path().join("segments"), 0, size);
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::write(&file, vec![0xa5u8; usize::try_from(len).unwrap()]).unwrap();
        for n in [0, BLOCK as u64, 2 * BLOCK as u64 + 3, size - 1] {
            let found = a.find(format!("k{n}").as_bytes()).unwrap();
            assert_eq!(found.unwrap().as_ref(), &encode_key(n), "k{n}");
        }
        // Four lookups met the damage; it was news once.
        assert!(!a.first_report_of_damage(0), "reported already");
        assert!(a.first_report_of_damage(size), "another segment is news");
    }

    /// Two keys whose fingerprints agree in the 32 bits an earlier version
    /// kept: a lookup of the one a segment does not hold opens no segment.
    #[test]
    fn a_key_that_only_shares_32_bits_opens_no_segment() {
        let fold = |fp: Fingerprint| (fp >> 32) ^ (fp & 0xffff_ffff);
        let mut seen = std::collections::HashMap::new();
        let (held, other) = (0u64..)
            .find_map(|i| {
                let key = format!("key-{i}");
                seen.insert(fold(fingerprint(key.as_bytes())), key.clone())
                    .map(|first| (first, key))
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        let mut segment = closing(0, 1);
        segment.trees[1].1 = Box::new(std::iter::once(Ok((
            IVec::from(held.as_bytes()),
            IVec::from(&encode_key(0)),
        ))));
        a.close(segment).unwrap();
        let a = Archive::open(dir.path(), "orders", Some("keys")).unwrap();
        assert_eq!(a.find(other.as_bytes()).unwrap(), None);
        assert_eq!(a.open.len(), 0, "{other} opened a segment");
        assert!(a.find(held.as_bytes()).unwrap().is_some());
        assert_eq!(a.open.len(), 1);
    }
}
