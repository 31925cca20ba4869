//! The keys of an open database's batch records (the tail's, and the
//! root's), in memory: each key's fingerprint and the number of the order
//! it created. Built from the records at open and added to by every append
//! before the log's `next` moves past it, so a lookup that sees an order as
//! durable finds its key here. A fingerprint names a candidate; the log
//! reads the order to tell its key from another with the same fingerprint.
//! 20 to 40 bytes per order (the map's table), for at most a segment's
//! orders and a few batches per database.

use std::collections::HashMap;
use std::sync::RwLock;

use common::storage::archive::{Entry, Fingerprint};

#[derive(Default)]
pub(super) struct KeyMap {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The first order under each fingerprint.
    first: HashMap<Fingerprint, u64>,
    /// Any later ones (fingerprints shared by chance, or a key stored
    /// twice): almost always empty.
    more: Vec<Entry>,
}

impl KeyMap {
    pub fn of(entries: Vec<Entry>) -> KeyMap {
        let map = KeyMap::default();
        map.insert(entries);
        map
    }

    pub fn insert(&self, entries: impl IntoIterator<Item = Entry>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (fp, number) in entries {
            if let Some(held) = inner.first.get(&fp)
                && *held != number
            {
                inner.more.push((fp, number));
            } else {
                inner.first.insert(fp, number);
            }
        }
    }

    /// The orders whose keys have the fingerprint `fp`.
    pub fn numbers(&self, fp: Fingerprint) -> Vec<u64> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let more = inner.more.iter().filter(|e| e.0 == fp).map(|e| e.1);
        inner
            .first
            .get(&fp)
            .copied()
            .into_iter()
            .chain(more)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_under_a_fingerprint_is_named() {
        let map = KeyMap::of(vec![(7, 1), (9, 2)]);
        map.insert([(7, 5), (7, 1), (3, 6)]);
        assert_eq!(map.numbers(7), vec![1, 5]);
        assert_eq!(map.numbers(9), vec![2]);
        assert_eq!(map.numbers(4), Vec::<u64>::new());
    }
}
