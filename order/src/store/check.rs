//! The start-up check of an order log: every record of the live database
//! and of every closed segment (see [`super::OrderLog`]).

use std::hash::{Hash, Hasher};

use common::storage::{Format, StoreError};

use super::records::Records;

/// Whether appends may run while a check reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writers {
    /// At open, or a closed segment: nothing else writes.
    None,
    /// In the background: appends add orders from `below` on meanwhile.
    Concurrent,
}

pub(super) fn corrupt(tree: &'static str, message: String) -> StoreError {
    StoreError::Corrupt { tree, message }
}

/// Checks the orders `first..below` of one database (the live one or a
/// closed segment): each decodes (and passes its checksum), numbers run
/// from `first` without a gap, and the key index tree holds exactly one
/// entry per order written before batch records, naming it (batch records
/// carry their keys). The index is compared in one pass over each tree
/// (a count and a sum of hashes of every (key, number) pair), not one
/// lookup per order. Index entries of orders appended since
/// (`Writers::Concurrent`) are checked against their order instead.
pub(super) fn verify(
    format: Format,
    records: &Records,
    keys: Option<&sled::Tree>,
    (first, below): (u64, u64),
    writers: Writers,
) -> Result<(), StoreError> {
    let indexed_below = records.batched_from(format)?;
    let mut from_orders = 0u64;
    let (mut held, mut indexed) = (0u64, 0u64);
    for (r, expected) in records.iter(format, 0, below).zip(first..) {
        let r = r?;
        let number = r.number;
        if number != expected {
            return Err(corrupt(
                "orders",
                format!("order {expected} is missing (the next one held is {number})"),
            ));
        }
        if number < indexed_below {
            from_orders = from_orders.wrapping_add(pair_hash(r.key.as_bytes(), number));
            indexed += 1;
        }
        held += 1;
    }
    if held != below.saturating_sub(first) {
        return Err(corrupt(
            "orders",
            format!("order {} is missing", first + held),
        ));
    }
    let mut count = 0u64;
    let mut from_keys = 0u64;
    for kv in keys.into_iter().flat_map(sled::Tree::iter) {
        let (k, v) = kv?;
        let number = format.decode_number("keys", &k, &v)?;
        if number < below {
            from_keys = from_keys.wrapping_add(pair_hash(&k, number));
            count += 1;
        } else if writers == Writers::None || !names_its_order(format, records, &k, number)? {
            return Err(corrupt(
                "keys",
                format!(
                    "key {:?} names order {number}, which does not hold it",
                    String::from_utf8_lossy(&k)
                ),
            ));
        }
    }
    if count != indexed || from_keys != from_orders {
        return Err(corrupt(
            "keys",
            format!("the key index does not match the orders ({count} keys for {indexed} orders)"),
        ));
    }
    Ok(())
}

/// Whether order `number` is held and was created by idempotency key `key`.
fn names_its_order(
    format: Format,
    records: &Records,
    key: &[u8],
    number: u64,
) -> Result<bool, StoreError> {
    let order = records.get(format, number)?;
    Ok(order.is_some_and(|r| r.key.as_bytes() == key))
}

/// The check before serving a long log: the live database's first order
/// is `first`, and the newest `tail` orders (where a torn write would be)
/// decode, run without a gap, and those written before batch records are
/// named by their index entries.
pub(super) fn verify_tail(
    format: Format,
    records: &Records,
    keys: Option<&sled::Tree>,
    (first, next): (u64, u64),
    tail: u64,
) -> Result<(), StoreError> {
    if let Some(held) = records.first(format)?
        && held != first
    {
        return Err(corrupt(
            "orders",
            format!("the log starts at order {held}, not {first}"),
        ));
    }
    let indexed_below = records.batched_from(format)?;
    let from = next.saturating_sub(tail).max(first);
    let mut expected = from..next;
    for r in records.iter(format, from, next) {
        let r = r?;
        let want = expected.next();
        if want != Some(r.number) {
            let missing = want.unwrap_or(r.number);
            return Err(corrupt("orders", format!("order {missing} is missing")));
        }
        let index = r.key.as_bytes();
        let named = match keys {
            Some(keys) => format.get_number(keys, "keys", index)?,
            None => None,
        };
        if r.number < indexed_below && named != Some(r.number) {
            return Err(corrupt(
                "keys",
                format!("order {}'s key {:?} does not name it", r.number, r.key),
            ));
        }
    }
    if let Some(missing) = expected.next() {
        return Err(corrupt("orders", format!("order {missing} is missing")));
    }
    Ok(())
}

/// A 64-bit hash of one (idempotency key, order number) pair.
fn pair_hash(key: &[u8], number: u64) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    number.hash(&mut h);
    h.finish()
}
