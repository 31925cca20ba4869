//! Where an order log's orders live: the root database (`<db>`, which also
//! holds the epoch) holds the oldest, closed segments the ones after them
//! (`common::storage::archive`), and the tail segment the newest, where
//! appends go. A log with no segment yet (every log written before them)
//! has the root as its tail. When the tail holds `Sizes::segment` orders it
//! is closed in place and a new, empty tail follows it: nothing is copied,
//! and no open database holds more than a segment's orders (besides a root
//! written before segments).

use std::sync::{Arc, RwLock};

use common::storage::archive::{Archive, KeyFilter, fingerprint};
use common::storage::{Database, Format, StoreError};
use common::types::OrderRecord;

use super::check::corrupt;
use super::keymap::KeyMap;
use super::records::{BATCHES, Records, existing, segment_index};

/// The database appends go to.
pub(super) struct Tail {
    pub db: sled::Db,
    pub records: Records,
    /// Where its appends go (the batch records' tree, also in `records`).
    pub batches: sled::Tree,
    /// The key index tree of its orders written before batch records.
    pub keys: Option<sled::Tree>,
    /// The first order it holds (or will).
    pub first: u64,
    /// Whether it is the root database (a log with no segment yet).
    pub root: bool,
    pub index: Index,
    /// The root's while it is not the tail.
    root_index: Option<Index>,
}

/// How the keys of an open database are found.
#[derive(Clone)]
pub(super) struct Index {
    /// The fingerprints of its key index tree's keys: a key that does not
    /// pass is not in the tree, and the lookup skips it. `None` for a tree
    /// too large to read at open (a root written before segments): every
    /// lookup reads it.
    filter: Option<Arc<KeyFilter>>,
    /// The keys of its batch records; appends add theirs.
    pub batches: Arc<KeyMap>,
}

impl Index {
    /// The index of a database that holds `records` from `first` on, its
    /// tree `keys`.
    fn of(
        records: &Records,
        keys: Option<&sled::Tree>,
        first: u64,
        segment: u64,
        format: Format,
    ) -> Result<Index, StoreError> {
        let held = records.per_order_next()?.saturating_sub(first);
        Ok(Index {
            filter: filter_of(keys, held, segment)?,
            batches: Arc::new(KeyMap::of(records.batch_keys(format)?)),
        })
    }

    /// The order `key` created, among the database's: the key index tree's
    /// entry, or an order of its batch records that `names` (the log holds
    /// it, durably, created by `key`).
    fn find(
        &self,
        keys: Option<&sled::Tree>,
        format: Format,
        key: &[u8],
        names: &impl Fn(u64) -> Result<bool, StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let fp = fingerprint(key);
        for n in self.batches.numbers(fp) {
            if names(n)? {
                return Ok(Some(n));
            }
        }
        match keys {
            Some(keys) if self.filter.as_ref().is_none_or(|f| f.may_hold(fp)) => {
                format.get_number(keys, "keys", key)
            }
            _ => Ok(None),
        }
    }
}

impl Tail {
    fn new(
        db: sled::Db,
        (first, root): (u64, bool),
        segment: u64,
        format: Format,
        root_index: Option<Index>,
    ) -> Result<Tail, StoreError> {
        let batches = db.open_tree(BATCHES)?;
        let records = Records::of(&db)?;
        let keys = existing(&db, "keys")?;
        Ok(Tail {
            index: Index::of(&records, keys.as_ref(), first, segment, format)?,
            records,
            batches,
            keys,
            db,
            first,
            root,
            root_index,
        })
    }
}

/// A filter of the `held` keys of `keys`, or `None` when they are more than
/// a few segments' worth.
fn filter_of(
    keys: Option<&sled::Tree>,
    held: u64,
    segment: u64,
) -> Result<Option<Arc<KeyFilter>>, StoreError> {
    if held > segment.saturating_mul(4) {
        return Ok(None);
    }
    let filter = KeyFilter::new(usize::try_from(held).unwrap_or(usize::MAX));
    for key in keys.into_iter().flat_map(|k| k.iter().keys()) {
        filter.insert(fingerprint(&key?));
    }
    Ok(Some(Arc::new(filter)))
}

pub(super) struct Parts {
    /// The root database: the epoch, and the oldest orders.
    pub db: Database,
    pub records: Records,
    pub keys: Option<sled::Tree>,
    pub archive: Archive,
    tail: RwLock<Arc<Tail>>,
    /// Orders per closed segment (what the filters are sized for).
    segment: u64,
}

impl Parts {
    /// Finds the log's parts under `path` (whose root is `db`), starting a
    /// tail after the closed segments if a stop left none, and returns them
    /// with the log's next number.
    pub fn open(
        db: Database,
        path: &std::path::Path,
        segment: u64,
    ) -> Result<(Parts, u64), StoreError> {
        let format = db.format();
        let records = Records::of(db.engine())?;
        let keys = existing(db.engine(), "keys")?;
        let archive = Archive::open(path, "orders", Some(segment_index(format)))?;
        let root_next = records.next()?;
        let tail = match (archive.start(), archive.tail()) {
            (None, None) => Tail::new(db.engine().clone(), (0, true), segment, format, None)?,
            (start, tail) => {
                let first_segment = start.or(tail).unwrap_or(root_next);
                if first_segment != root_next {
                    return Err(corrupt(
                        "orders",
                        format!(
                            "the root database holds orders below {root_next}, \
                             but its segments start at {first_segment}"
                        ),
                    ));
                }
                let first = tail.unwrap_or(archive.end());
                let engine = match tail {
                    Some(first) => archive.open_tail(first)?,
                    None => db.write(|| archive.start_tail(first))?,
                };
                let root_index = Index::of(&records, keys.as_ref(), 0, segment, format)?;
                Tail::new(engine, (first, false), segment, format, Some(root_index))?
            }
        };
        let next = tail.records.next()?.max(tail.first);
        // A root that is the tail has its batch records' tree now.
        let records = if tail.root {
            tail.records.clone()
        } else {
            records
        };
        let parts = Parts {
            db,
            records,
            keys,
            archive,
            tail: RwLock::new(Arc::new(tail)),
            segment,
        };
        Ok((parts, next))
    }

    pub fn tail(&self) -> Arc<Tail> {
        Arc::clone(&self.tail.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// One more than the root's highest order while it is not the tail.
    fn root_end(&self, tail: &Tail) -> u64 {
        self.archive.start().unwrap_or(tail.first)
    }

    /// Closes the tail, which holds orders up to `next` (durably), and
    /// starts a new one at `next`. Failures fail the store.
    pub fn roll(&self, next: u64) -> Result<(), StoreError> {
        let old = self.tail();
        let root_index = if old.root {
            Some(old.index.clone())
        } else {
            old.root_index.clone()
        };
        let new = self.db.write(|| {
            if !old.root {
                self.archive.close_tail(old.first, next, &old.db)?;
            }
            Tail::new(
                self.archive.start_tail(next)?,
                (next, false),
                self.segment,
                self.db.format(),
                root_index,
            )
        })?;
        *self.tail.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// Order `number` (below the log's next), from the part that holds it.
    pub fn get(&self, format: Format, number: u64) -> Result<Option<OrderRecord>, StoreError> {
        let tail = self.tail();
        if number >= tail.first {
            tail.records.get(format, number)
        } else if number < self.root_end(&tail) {
            self.records.get(format, number)
        } else {
            match self.archive.segment_of(number) {
                Some(first) => self.in_segment(first, |r| r.get(format, number)),
                None => Ok(None),
            }
        }
    }

    /// Runs `f` on the records of the closed segment from `first`.
    fn in_segment<T>(
        &self,
        first: u64,
        f: impl FnOnce(&Records) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.archive.with_segment(first, |db| f(&Records::of(db)?))
    }

    /// The order `key` created, if the log holds it below `next`: from the
    /// tail's index, the root's, or a closed segment's. An order found by
    /// its key's fingerprint is read to check its key.
    pub fn by_key(&self, format: Format, key: &[u8], next: u64) -> Result<Option<u64>, StoreError> {
        let tail = self.tail();
        let names = |n: u64| -> Result<bool, StoreError> {
            Ok(n < next
                && self
                    .get(format, n)?
                    .is_some_and(|r| r.key.as_bytes() == key))
        };
        if let Some(n) = tail.index.find(tail.keys.as_ref(), format, key, &names)? {
            return Ok(Some(n));
        }
        if let Some(root) = &tail.root_index
            && let Some(n) = root.find(self.keys.as_ref(), format, key, &names)?
        {
            return Ok(Some(n));
        }
        for n in self.archive.find(key)? {
            if names(n)? {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Orders `from..next`, at most `limit`, walking the parts in order.
    pub fn range(
        &self,
        format: Format,
        from: u64,
        next: u64,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let tail = self.tail();
        let mut out = Vec::new();
        let left = |out: &Vec<OrderRecord>| {
            limit.saturating_sub(u32::try_from(out.len()).unwrap_or(u32::MAX))
        };
        if !tail.root {
            let root_end = self.root_end(&tail);
            out = self
                .records
                .range(format, from, root_end.min(next), limit)?;
            for (first, end) in self.archive.segments() {
                let (start, stop) = (from.max(first), end.min(tail.first).min(next));
                if left(&out) == 0 || start >= stop {
                    continue;
                }
                let more = self.in_segment(first, |r| r.range(format, start, stop, left(&out)))?;
                out.extend(more);
            }
        }
        let start = from.max(tail.first);
        out.extend(tail.records.range(format, start, next, left(&out))?);
        Ok(out)
    }
}
