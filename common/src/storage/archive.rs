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
//!   when it holds [`Sizes::segment`] orders, its index (each key's
//!   fingerprint and the number it names, from the store's [`KeysOf`]) goes
//!   to `<first>-<end>.fpn` and the directory is renamed
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
//! for ten seconds, [`kept`]). A lookup by index key opens no segment: it
//! reads the numbers its key's fingerprint names from the files of the
//! segments whose fingerprints hold it ([`index`]), and only when one bit
//! array over all of them ([`filter`], 2 MiB per million orders) says some
//! segment may; the store then reads those records to tell its key from
//! another with the same fingerprint. In memory per segment: its range and
//! every 256th fingerprint, which names the one block of its file to read
//! (32 bytes per 1,000 orders).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use sled::IVec;

use super::{StoreError, encode_key};
use files::{BLOCK, io, list, name, open_segment, open_service, remove, sync_dir, tail_name};
use filter::Closed;
use kept::KeptOpen;

mod copy;
mod files;
mod filter;
mod index;
mod kept;
mod sizes;

pub use copy::{Closing, Entries};
pub use files::{Entry, Fingerprint, fingerprint};
pub use filter::KeyFilter;
pub use index::KeysOf;
pub use sizes::{SEGMENT_ENV, Sizes, wait_while_closing};

/// The page cache of a closed segment.
const SEGMENT_CACHE: u64 = 1024 * 1024;

struct Segment {
    first: u64,
    end: u64,
    /// How many index entries it holds (0 without an index).
    keys: usize,
    /// The fingerprint of every [`BLOCK`]-th of its sorted index entries,
    /// from the first: where each block of its fingerprint file starts.
    fences: Vec<Fingerprint>,
}

impl Segment {
    fn new(first: u64, end: u64, entries: &[Entry]) -> Segment {
        Segment {
            first,
            end,
            keys: entries.len(),
            fences: entries.iter().step_by(BLOCK).map(|e| e.0).collect(),
        }
    }
}

/// The segments of one store: closed ones, numbered without a gap, and
/// the open tail that follows them (if the store keeps one here).
pub struct Archive {
    dir: PathBuf,
    /// The tree every segment holds the numbered records in.
    numbered: &'static str,
    /// How to list a segment's index, if the store keeps one.
    index: Option<KeysOf>,
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
    /// their index entries (rebuilt from the segment with `index` when
    /// their file is missing or damaged). Removes unfinished copies and
    /// tails (`.new`).
    pub fn open(
        root: &Path,
        numbered: &'static str,
        index: Option<KeysOf>,
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
    /// durable): writes its index entries, renames it
    /// `<first>-<end>`, and from then on serves its records as a closed
    /// segment. The caller starts the next tail and drops `db`; until the
    /// last handle on it is gone, a read that opens the segment waits for
    /// its lock (`open_when_unlocked`), so nothing holds a tail's handle
    /// for long (the start-up check takes one only for the tail itself).
    pub fn close_tail(&self, first: u64, end: u64, db: &sled::Db) -> Result<(), StoreError> {
        if self.tail() != Some(first) || end <= first {
            return Err(self.corrupt(format!("no tail {first}..{end} to close")));
        }
        let entries = self.write_entries_of(db, first, end)?;
        std::fs::rename(
            self.dir.join(tail_name(first)),
            self.dir.join(name(first, end)),
        )
        .map_err(io)?;
        sync_dir(&self.dir)?;
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.push(first, end, &entries)
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

    /// The first number of the closed segment that holds record `n`.
    pub fn segment_of(&self, n: u64) -> Option<u64> {
        self.read()
            .iter()
            .find(|s| s.first <= n && n < s.end)
            .map(|s| s.first)
    }

    /// The stored value of record `n` (`None` when it is not archived).
    pub fn get(&self, n: u64) -> Result<Option<IVec>, StoreError> {
        let Some(first) = self.segment_of(n) else {
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
            closed.push(first, end, &self.entries_of(first, end)?);
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
}

#[cfg(test)]
mod tests {
    use super::files::{BLOCK, keys_file, parse_fingerprints};
    use super::*;

    /// The index of the test segments: the `keys` tree's keys, naming the
    /// number each holds.
    fn keys_tree() -> Option<KeysOf> {
        Some(Box::new(|db: &sled::Db| {
            db.open_tree("keys")?
                .iter()
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((fingerprint(&k), crate::storage::decode_number("keys", &v)?))
                })
                .collect()
        }))
    }

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
            let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
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
        // rebuilt, and so are those earlier versions wrote (32-bit
        // fingerprints, `.keys`, and 64-bit ones without numbers, `.fp64`),
        // which are then removed.
        std::fs::create_dir(dir.path().join("segments/x.new")).unwrap();
        let segments = dir.path().join("segments");
        let keys = keys_file(&segments, 0, 10);
        std::fs::write(&keys, b"damaged").unwrap();
        std::fs::remove_file(keys_file(&segments, 10, 25)).unwrap();
        let old: Vec<_> = files::OLD_KEYS
            .iter()
            .map(|ext| segments.join(format!("{}.{ext}", name(10, 25))))
            .collect();
        let old_fps: Vec<u8> = (0u32..16).flat_map(u32::to_le_bytes).collect();
        let sum = crc32fast::hash(&old_fps).to_le_bytes();
        for file in &old {
            std::fs::write(file, [&old_fps[..], &sum[..]].concat()).unwrap();
        }
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
        assert!(!dir.path().join("segments/x.new").exists());
        assert!(
            old.iter().all(|f| !f.exists()),
            "the earlier versions' files are removed"
        );
        assert!(keys_file(&segments, 10, 25).exists());
        assert_eq!(a.segments(), vec![(0, 10), (10, 25)]);
        assert_eq!(a.end(), 25);
        assert_eq!(a.get(12).unwrap().unwrap().as_ref(), b"r12");
        assert_eq!(a.get(25).unwrap(), None);
        let range = a.range(8, 25, 5).unwrap();
        let got: Vec<&[u8]> = range.iter().map(|(_, v)| v.as_ref()).collect();
        assert_eq!(got, vec![&b"r8"[..], b"r9", b"r10", b"r11", b"r12"]);
        assert_eq!(a.range(3, 25, 100).unwrap().len(), 22);
        assert_eq!(a.find(b"k3").unwrap(), vec![3]);
        assert_eq!(a.find(b"k24").unwrap(), vec![24]);
        assert_eq!(a.find(b"k25").unwrap(), Vec::<u64>::new());
        assert!(parse_fingerprints(&std::fs::read(&keys).unwrap()).is_some());
    }

    /// A tail is written in place, closed by a rename, and followed by
    /// the next; a stop between the two leaves no tail.
    #[test]
    fn a_tail_closes_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
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
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
        assert_eq!(a.segments(), vec![(0, 10), (10, 14)]);
        assert_eq!(a.tail(), None);
        assert_eq!(a.find(b"k13").unwrap(), vec![13]);
        let db = a.start_tail(14).unwrap();
        drop(db);
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
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
        let segments = 6;
        {
            let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
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
                assert_eq!(found, vec![n], "k{n}");
            }
        }
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
        let last = segments * size - 1;
        assert_eq!(a.find(format!("k{last}").as_bytes()).unwrap(), vec![last]);
        assert_eq!(a.find(b"k-none").unwrap(), Vec::<u64>::new());
        // Every block of the first segment's file overwritten.
        let file = keys_file(&dir.path().join("segments"), 0, size);
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::write(&file, vec![0xa5u8; usize::try_from(len).unwrap()]).unwrap();
        for n in [0, BLOCK as u64, 2 * BLOCK as u64 + 3, size - 1] {
            let found = a.find(format!("k{n}").as_bytes()).unwrap();
            assert_eq!(found, vec![n], "k{n}");
        }
        // Four lookups met the damage; it was news once.
        assert!(!a.first_report_of_damage(0), "reported already");
        assert!(a.first_report_of_damage(size), "another segment is news");
    }

    /// Two keys whose fingerprints agree in the 32 bits an earlier version
    /// kept: a lookup of the one a segment does not hold finds no number,
    /// and no lookup opens a segment (the file names the number).
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
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
        let mut segment = closing(0, 1);
        segment.trees[1].1 = Box::new(std::iter::once(Ok((
            IVec::from(held.as_bytes()),
            IVec::from(&encode_key(0)),
        ))));
        a.close(segment).unwrap();
        let a = Archive::open(dir.path(), "orders", keys_tree()).unwrap();
        assert_eq!(a.find(other.as_bytes()).unwrap(), Vec::<u64>::new());
        assert_eq!(a.find(held.as_bytes()).unwrap(), vec![0]);
        assert_eq!(a.open.len(), 0, "a lookup opened a segment");
    }
}
