//! The orders of one database of the log (the root, the tail, a closed
//! segment). An append writes one record per batch into the `batches` tree:
//! the batch's orders (at most [`PER_RECORD`]), under the number of its
//! last one, so that the tree's last key is the database's highest order
//! and the record holding order `n` is the first at or after `n`. sled's
//! work is per record, so this costs a replica a fraction of one record per
//! order (docs/PERFORMANCE.md).
//!
//! Databases written before batches hold one record per order, under its
//! number, in the `orders` tree. They are read as they are and never
//! rewritten: a database may hold both, every per-order record below every
//! batch (the log appends contiguously, and nothing writes `orders` any
//! more).

use common::storage::archive::{Entry, KeysOf, fingerprint};
use common::storage::{self, Format, StoreError, decode_number, encode_key};
use common::types::OrderRecord;

/// Orders per batch record at most: an append of more (a catch-up page)
/// writes several.
pub(super) use common::storage::batches::{PER_RECORD, existing};

/// The tree of per-order records (databases written before batches).
const ORDERS: &str = "orders";
/// The tree of batch records.
pub(super) const BATCHES: &str = "batches";

/// A database's records. A tree it does not have is `None`, not opened:
/// opening a missing tree makes it, and a closed segment is never written.
#[derive(Clone)]
pub(super) struct Records {
    /// One record per order, written before batches.
    pub orders: Option<sled::Tree>,
    /// One record per batch, under its last order's number.
    pub batches: Option<sled::Tree>,
}

impl Records {
    pub fn of(db: &sled::Db) -> Result<Records, StoreError> {
        Ok(Records {
            orders: existing(db, ORDERS)?,
            batches: existing(db, BATCHES)?,
        })
    }

    /// One more than the highest order held (0 when none).
    pub fn next(&self) -> Result<u64, StoreError> {
        match &self.batches {
            Some(batches) if !batches.is_empty() => storage::next_number(batches, BATCHES),
            _ => self.per_order_next(),
        }
    }

    /// One more than the highest per-order record (0 when none).
    pub fn per_order_next(&self) -> Result<u64, StoreError> {
        self.orders
            .as_ref()
            .map_or(Ok(0), |orders| storage::next_number(orders, ORDERS))
    }

    /// The first order of the first batch record, if there is one.
    fn first_batched(&self, format: Format) -> Result<Option<u64>, StoreError> {
        match self
            .batches
            .as_ref()
            .map(sled::Tree::first)
            .transpose()?
            .flatten()
        {
            Some((k, v)) => Ok(decode_batch(format, &k, &v)?.first().map(|r| r.number)),
            None => Ok(None),
        }
    }

    /// The lowest order held, if any.
    pub fn first(&self, format: Format) -> Result<Option<u64>, StoreError> {
        if let Some((k, _)) = self
            .orders
            .as_ref()
            .map(sled::Tree::first)
            .transpose()?
            .flatten()
        {
            return Ok(Some(decode_number(ORDERS, &k)?));
        }
        self.first_batched(format)
    }

    /// The first order held in a batch record (`u64::MAX` when none): the
    /// orders below it are per-order records, each with an entry in the
    /// database's key index tree; the batches carry their keys themselves.
    pub fn batched_from(&self, format: Format) -> Result<u64, StoreError> {
        Ok(self.first_batched(format)?.unwrap_or(u64::MAX))
    }

    /// The fingerprint of every batch record's key, with its order's
    /// number.
    pub fn batch_keys(&self, format: Format) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for kv in self.batches.iter().flat_map(sled::Tree::iter) {
            let (k, v) = kv?;
            let batch = decode_batch(format, &k, &v)?;
            entries.extend(
                batch
                    .iter()
                    .map(|r| (fingerprint(r.key.as_bytes()), r.number)),
            );
        }
        Ok(entries)
    }

    /// The stored bytes of `orders` (contiguous, at most [`PER_RECORD`]):
    /// the key and value of their batch record.
    pub fn encode(format: Format, orders: &[&OrderRecord]) -> ([u8; 8], Vec<u8>) {
        let last = orders.last().map_or(0, |r| r.number);
        storage::batches::encode_batch(format, last, orders)
    }

    /// Order `number`, if held.
    pub fn get(&self, format: Format, number: u64) -> Result<Option<OrderRecord>, StoreError> {
        if let Some(batches) = &self.batches
            && let Some(kv) = batches.range(encode_key(number)..).next()
        {
            let (k, v) = kv?;
            let batch = decode_batch(format, &k, &v)?;
            if let Some(r) = batch.into_iter().find(|r| r.number == number) {
                return Ok(Some(r));
            }
        }
        match &self.orders {
            Some(orders) => format.get_numbered(orders, ORDERS, number),
            None => Ok(None),
        }
    }

    /// Orders `from..below` in order of number, each decoded (and checked)
    /// as the iteration reaches it.
    pub fn iter(
        &self,
        format: Format,
        from: u64,
        below: u64,
    ) -> impl Iterator<Item = Result<OrderRecord, StoreError>> + use<> {
        let singles = self
            .orders
            .clone()
            .into_iter()
            .flat_map(move |orders| orders.range(encode_key(from)..encode_key(below)))
            .map(move |kv| {
                let (k, v) = kv?;
                format.decode_numbered(ORDERS, decode_number(ORDERS, &k)?, &v)
            });
        // The batch records from the one holding `from`, up to the one
        // holding `below - 1`: a record past it is never read.
        let mut reached = false;
        let batched = self
            .batches
            .clone()
            .into_iter()
            .flat_map(move |batches| batches.range(encode_key(from)..))
            .map_while(move |kv| {
                if reached {
                    return None;
                }
                let batch = kv.map_err(StoreError::from).and_then(|(k, v)| {
                    reached = decode_number(BATCHES, &k)?.saturating_add(1) >= below;
                    decode_batch(format, &k, &v)
                });
                Some(batch)
            })
            .flat_map(|batch| {
                let (orders, failed) = match batch {
                    Ok(orders) => (orders, None),
                    Err(e) => (Vec::new(), Some(Err(e))),
                };
                orders.into_iter().map(Ok).chain(failed)
            })
            .filter(move |r| r.as_ref().map_or(true, |r| r.number >= from));
        singles
            .chain(batched)
            .take_while(move |r| r.as_ref().map_or(true, |r| r.number < below))
    }

    /// Orders `from..below`, at most `limit` (capped at
    /// [`storage::MAX_RANGE`]).
    pub fn range(
        &self,
        format: Format,
        from: u64,
        below: u64,
        limit: u32,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let limit = usize::try_from(limit.min(storage::MAX_RANGE)).unwrap_or(usize::MAX);
        self.iter(format, from, below).take(limit).collect()
    }
}

/// How the archive lists a closed segment's index (`format` being the
/// log's): the entries of its key index tree (orders written before batch
/// records), and the keys its batch records carry.
pub(super) fn segment_index(format: Format) -> KeysOf {
    Box::new(move |db| {
        let mut entries = Records::of(db)?.batch_keys(format)?;
        for kv in existing(db, "keys")?.iter().flat_map(sled::Tree::iter) {
            let (k, v) = kv?;
            entries.push((fingerprint(&k), format.decode_number("keys", &k, &v)?));
        }
        Ok(entries)
    })
}

/// The orders of the batch record stored under `key` (see
/// [`storage::batches::decode_batch`]).
fn decode_batch(format: Format, key: &[u8], stored: &[u8]) -> Result<Vec<OrderRecord>, StoreError> {
    storage::batches::decode_batch(format, BATCHES, key, stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::rec;

    /// A database written before batches (orders 0..3 one by one) that
    /// then took two batches (3..5, 5..8): reads see one sequence.
    #[test]
    fn per_order_records_and_batches_read_as_one_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open_db(dir.path(), "a test").unwrap();
        let format = Format::Checksummed;
        let none = Records::of(&db).unwrap();
        assert!(none.orders.is_none() && none.batches.is_none());
        assert_eq!(
            (none.next().unwrap(), none.first(format).unwrap()),
            (0, None)
        );
        assert!(
            db.tree_names()
                .iter()
                .all(|n| n.as_ref() != BATCHES.as_bytes()),
            "nothing made"
        );
        let (orders, batches) = (
            db.open_tree(ORDERS).unwrap(),
            db.open_tree(BATCHES).unwrap(),
        );
        let records = Records::of(&db).unwrap();
        for n in 0..3 {
            let key = encode_key(n);
            orders.insert(key, format.encode(&key, &rec(n))).unwrap();
        }
        for span in [3..5, 5..8] {
            let batch: Vec<OrderRecord> = span.map(rec).collect();
            let (k, v) = Records::encode(format, &batch.iter().collect::<Vec<_>>());
            batches.insert(k, v).unwrap();
        }
        assert_eq!(records.next().unwrap(), 8);
        assert_eq!(records.first(format).unwrap(), Some(0));
        for n in 0..8 {
            assert_eq!(records.get(format, n).unwrap(), Some(rec(n)));
        }
        assert_eq!(records.get(format, 8).unwrap(), None);
        let all = |from, below, limit| records.range(format, from, below, limit).unwrap();
        assert_eq!(all(0, 100, 100), (0..8).map(rec).collect::<Vec<_>>());
        assert_eq!(all(4, 7, 100), (4..7).map(rec).collect::<Vec<_>>());
        assert_eq!(all(1, 100, 4), (1..5).map(rec).collect::<Vec<_>>());
        assert_eq!(all(6, 6, 100), vec![]);
    }

    /// A batch record that fails its checksum, or whose orders do not run
    /// up to its key, is refused, never read as orders.
    #[test]
    fn damaged_batches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::open_db(dir.path(), "a test").unwrap();
        let batches = db.open_tree(BATCHES).unwrap();
        let records = Records::of(&db).unwrap();
        let format = Format::Checksummed;
        let batch = [rec(0), rec(1), rec(2)];
        let (k, mut v) = Records::encode(format, &batch.iter().collect::<Vec<_>>());
        v[3] ^= 1;
        batches.insert(k, v).unwrap();
        let err = records.get(format, 1).unwrap_err().to_string();
        assert!(err.contains("key 2 fails its checksum"), "{err}");
        let gap = [rec(3), rec(5)];
        let (k, v) = Records::encode(format, &gap.iter().collect::<Vec<_>>());
        batches.insert(k, v).unwrap();
        let err = records.get(format, 5).unwrap_err().to_string();
        assert!(err.contains("key 5 holds orders [3, 5]"), "{err}");
        // More orders than numbers up to its key.
        let long = [rec(5), rec(0), rec(1)];
        let (k, v) = Records::encode(format, &long.iter().collect::<Vec<_>>());
        batches.insert(k, v).unwrap();
        let err = records.get(format, 0).unwrap_err().to_string();
        assert!(err.contains("key 1 holds orders [5, 0, 1]"), "{err}");
    }
}
