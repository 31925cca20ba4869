//! Batch records: the orders of one batch (at most [`PER_RECORD`]) in one
//! record, under the number of the last, so that a tree's last key is its
//! highest order and the record holding order `n` is the first at or after
//! `n`. sled's work is per record, so a store that writes one per batch
//! instead of one per order does a fraction of it (docs/PERFORMANCE.md).
//! The order log's databases and the catalog's record of applied orders
//! keep them.
//!
//! A record may carry, after its orders and under the same checksum, what
//! its batch did besides them ([`encode_batch_with`]): the catalog writes
//! a batch's stocks after its record, outside a transaction, and redoes
//! them from its last record at open ([`decode_effects`]). Readers of the
//! orders leave the rest alone.

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

/// [`encode_batch`] with `effects` after the orders, under the same
/// checksum (see [`decode_effects`]).
pub fn encode_batch_with<T: serde::Serialize, E: serde::Serialize>(
    format: Format,
    last: u64,
    orders: &[T],
    effects: &E,
) -> ([u8; 8], Vec<u8>) {
    let key = encode_key(last);
    let payload = postcard::to_stdvec(&orders)
        .and_then(|payload| postcard::to_extend(effects, payload))
        .expect("postcard encodes plain structs without failing");
    (key, format.seal(&key, payload))
}

/// The effects a record of [`encode_batch_with`] carries after its orders,
/// or `None` for a record of [`encode_batch`]. The record's checksum is
/// verified; its orders are only skipped ([`decode_batch`] checks them).
pub fn decode_effects<E: serde::de::DeserializeOwned>(
    format: Format,
    tree: &'static str,
    key: &[u8],
    stored: &[u8],
) -> Result<Option<E>, StoreError> {
    let last = decode_number(tree, key)?;
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        tree,
        message: format!("key {last}: {e}"),
    };
    let payload = format.unseal(tree, key, stored)?;
    let (_, rest): (Vec<OrderRecord>, &[u8]) =
        postcard::take_from_bytes(payload).map_err(corrupt)?;
    if rest.is_empty() {
        return Ok(None);
    }
    postcard::from_bytes(rest).map(Some).map_err(corrupt)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TradeKind;

    fn order(number: u64) -> OrderRecord {
        OrderRecord {
            number,
            name: "AAPL".into(),
            kind: TradeKind::Buy,
            quantity: 1,
            key: format!("k{number}"),
        }
    }

    #[test]
    fn effects_ride_after_the_orders_under_one_checksum() {
        let format = Format::Checksummed;
        let orders = [order(4), order(5)];
        let effects = (7u64, vec![("AAPL".to_string(), 3u64)]);
        let (key, mut value) = encode_batch_with(format, 5, &orders, &effects);
        assert_eq!(decode_batch(format, "t", &key, &value).unwrap(), orders);
        let read: Option<(u64, Vec<(String, u64)>)> =
            decode_effects(format, "t", &key, &value).unwrap();
        assert_eq!(read, Some(effects));
        // A record without them.
        let (key, plain) = encode_batch(format, 5, &orders);
        let none: Option<(u64, Vec<(String, u64)>)> =
            decode_effects(format, "t", &key, &plain).unwrap();
        assert_eq!(none, None);
        // A byte of the effects overwritten fails the record's checksum.
        let at = value.len() - 6;
        value[at] ^= 0x40;
        let damaged = decode_effects::<(u64, Vec<(String, u64)>)>(format, "t", &key, &value);
        assert!(damaged.unwrap_err().to_string().contains("checksum"));
        assert!(decode_batch(format, "t", &key, &value).is_err());
    }
}
