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
use super::records::Records;

/// The database appends go to.
pub(super) struct Tail {
    pub db: sled::Db,
    pub records: Records,
    pub keys: sled::Tree,
    /// The first order it holds (or will).
    pub first: u64,
    /// Whether it is the root database (a log with no segment yet).
    pub root: bool,
    /// The fingerprints of its keys: an append adds its keys' before it
    /// writes them, so a key that does not pass is not here and the lookup
    /// skips the database. `None` for a root too large to read at open (one
    /// written before segments): every lookup reads it.
    pub filter: Option<Arc<KeyFilter>>,
    /// The same for the root while it is not the tail.
    root_keys: Option<Arc<KeyFilter>>,
}

impl Tail {
    fn new(
        db: sled::Db,
        first: u64,
        root: bool,
        segment: u64,
        root_keys: Option<Arc<KeyFilter>>,
    ) -> Result<Tail, StoreError> {
        let records = Records::of(&db)?;
        let keys = db.open_tree("keys")?;
        let held = records.next()?.saturating_sub(first);
        Ok(Tail {
            filter: filter_of(&keys, held, segment)?,
            records,
            keys,
            db,
            first,
            root,
            root_keys,
        })
    }
}

/// A filter of the `held` keys of `keys`, sized for a segment's, or
/// `None` when they are more than a few segments' worth.
fn filter_of(
    keys: &sled::Tree,
    held: u64,
    segment: u64,
) -> Result<Option<Arc<KeyFilter>>, StoreError> {
    if held > segment.saturating_mul(4) {
        return Ok(None);
    }
    let filter = KeyFilter::new(usize::try_from(segment.max(held)).unwrap_or(usize::MAX));
    for key in keys.iter().keys() {
        filter.insert(fingerprint(&key?));
    }
    Ok(Some(Arc::new(filter)))
}

pub(super) struct Parts {
    /// The root database: the epoch, and the oldest orders.
    pub db: Database,
    pub records: Records,
    pub keys: sled::Tree,
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
        let records = Records::of(db.engine())?;
        let keys = db.tree("keys")?;
        let archive = Archive::open(path, "orders", Some("keys"))?;
        let root_next = records.next()?;
        let tail = match (archive.start(), archive.tail()) {
            (None, None) => Tail::new(db.engine().clone(), 0, true, segment, None)?,
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
                let root_keys = filter_of(&keys, root_next, segment)?;
                Tail::new(engine, first, false, segment, root_keys)?
            }
        };
        let next = tail.records.next()?.max(tail.first);
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
        let root_keys = if old.root {
            old.filter.clone()
        } else {
            old.root_keys.clone()
        };
        let new = self.db.write(|| {
            if !old.root {
                self.archive.close_tail(old.first, next, &old.db)?;
            }
            Tail::new(
                self.archive.start_tail(next)?,
                next,
                false,
                self.segment,
                root_keys,
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
            match self.segment_of(number) {
                Some(first) => self.in_segment(first, |r| r.get(format, number)),
                None => Ok(None),
            }
        }
    }

    /// The first number of the closed segment that holds `number`.
    fn segment_of(&self, number: u64) -> Option<u64> {
        self.archive
            .segments()
            .into_iter()
            .find(|&(first, end)| first <= number && number < end)
            .map(|(first, _)| first)
    }

    /// Runs `f` on the records of the closed segment from `first`.
    pub fn in_segment<T>(
        &self,
        first: u64,
        f: impl FnOnce(&Records) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.archive.with_segment(first, |db| f(&Records::of(db)?))
    }

    /// The stored index entry of `key`: the tail's, the root's, or a
    /// closed segment's.
    pub fn by_key(&self, format: Format, key: &[u8]) -> Result<Option<u64>, StoreError> {
        let tail = self.tail();
        let fp = fingerprint(key);
        let may_hold = |f: &Option<Arc<KeyFilter>>| f.as_ref().is_none_or(|f| f.may_hold(fp));
        if may_hold(&tail.filter)
            && let Some(n) = format.get_number(&tail.keys, "keys", key)?
        {
            return Ok(Some(n));
        }
        if !tail.root
            && may_hold(&tail.root_keys)
            && let Some(n) = format.get_number(&self.keys, "keys", key)?
        {
            return Ok(Some(n));
        }
        self.archive
            .find(key)?
            .map(|v| format.decode_number("keys", key, &v))
            .transpose()
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
