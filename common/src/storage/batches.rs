//! Batch records: the orders of one batch (at most [`PER_RECORD`]) in one
//! record, under the number of the last, so that a tree's last key is its
//! highest order and the record holding order `n` is the first at or after
//! `n`. sled's work is per record, so a store that writes one per batch
//! instead of one per order does a fraction of it (docs/PERFORMANCE.md).
//! The order log's databases and the catalog's record of applied orders
//! keep them.

use super::{Format, StoreError, decode_number, encode_key};
use crate::types::OrderRecord;

/// Orders per batch record at most: a batch of more is written as several,
/// so a read of one order decodes a bounded record.
pub const PER_RECORD: usize = 128;

/// The tree `name` of `db`, if it has one: opening a missing tree makes
/// it, and a closed segment is never written.
pub fn existing(db: &sled::Db, name: &str) -> Result<Option<sled::Tree>, StoreError> {
    if db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == name.as_bytes())
    {
        Ok(Some(db.open_tree(name)?))
    } else {
        Ok(None)
    }
}

/// The key and stored bytes of the batch record of `orders` (contiguous,
/// at most [`PER_RECORD`]).
pub fn encode_batch<T: serde::Serialize>(
    format: Format,
    last: u64,
    orders: &[T],
) -> ([u8; 8], Vec<u8>) {
    let key = encode_key(last);
    let value = format.encode(&key, &orders);
    (key, value)
}

/// The orders of the batch record stored under `key` in `tree`: it passes
/// its checksum, and its orders run without a gap up to the key's number.
pub fn decode_batch(
    format: Format,
    tree: &'static str,
    key: &[u8],
    stored: &[u8],
) -> Result<Vec<OrderRecord>, StoreError> {
    let last = decode_number(tree, key)?;
    let orders: Vec<OrderRecord> = format.decode(tree, key, stored)?;
    let first = u64::try_from(orders.len())
        .ok()
        .and_then(|len| len.checked_sub(1))
        .and_then(|span| last.checked_sub(span));
    let contiguous =
        first.is_some_and(|first| orders.iter().zip(first..).all(|(r, n)| r.number == n));
    if orders.is_empty() || !contiguous || orders.len() > PER_RECORD {
        let numbers: Vec<u64> = orders.iter().map(|r| r.number).collect();
        return Err(StoreError::Corrupt {
            tree,
            message: format!("key {last} holds orders {numbers:?}"),
        });
    }
    Ok(orders)
}
