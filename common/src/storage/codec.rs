//! How records are stored. Values are postcard; in a database of the
//! checksummed format every value is followed by the CRC-32 (4 bytes,
//! little-endian) of its key and its bytes, so a damaged value, or a value
//! under another key, is found when it is read. The `meta` tree's `format`
//! key holds the marker (8 bytes, big-endian: 1); databases written before
//! checksums have no marker and are read as before ([`Format::Legacy`]),
//! never rewritten behind anyone's back: `--rebuild` writes the new format.
//! (Migrating in place would rewrite every record of a replica's log in one
//! transaction, which sled holds whole in memory: about 100 MB at a million
//! orders, for a one-off gain the rebuild already gives.)

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Numbered, StoreError, decode_number, encode_key};

/// Key of the format marker in a store's `meta` tree.
pub const FORMAT_KEY: &[u8] = b"format";
/// The marker of the checksummed format.
const CHECKSUMMED: u64 = 1;
const CRC_LEN: usize = 4;

/// The format of a database's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Written before checksums: bare postcard values, read as before.
    Legacy,
    /// Every value carries the CRC-32 of its key and bytes.
    Checksummed,
}

fn crc(key: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(payload);
    h.finalize()
}

impl Format {
    /// The marker's value in `meta`.
    pub fn marker(self) -> [u8; 8] {
        match self {
            Format::Legacy => 0u64.to_be_bytes(),
            Format::Checksummed => CHECKSUMMED.to_be_bytes(),
        }
    }

    /// Reads a marker; one this build does not know is refused (a newer
    /// version wrote the database, or the marker itself is damaged).
    pub fn from_marker(bytes: &[u8]) -> Result<Format, StoreError> {
        match super::decode_u64(bytes) {
            Some(CHECKSUMMED) => Ok(Format::Checksummed),
            _ => Err(StoreError::Corrupt {
                tree: "meta",
                message: format!(
                    "unknown database format marker {bytes:?} (written by a newer version?)"
                ),
            }),
        }
    }

    /// The stored bytes of `payload` under `key`.
    pub fn seal(self, key: &[u8], mut payload: Vec<u8>) -> Vec<u8> {
        if self == Format::Checksummed {
            let sum = crc(key, &payload);
            payload.extend_from_slice(&sum.to_le_bytes());
        }
        payload
    }

    /// The payload of the value stored under `key` in `tree`, its checksum
    /// verified.
    pub fn unseal<'a>(
        self,
        tree: &'static str,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<&'a [u8], StoreError> {
        if self == Format::Legacy {
            return Ok(stored);
        }
        let corrupt = |message: String| StoreError::Corrupt { tree, message };
        let split = stored.len().checked_sub(CRC_LEN).ok_or_else(|| {
            corrupt(format!(
                "{} has a value of {} bytes, too short for its checksum",
                shown(key),
                stored.len()
            ))
        })?;
        let (payload, sum) = stored.split_at(split);
        let sum: [u8; CRC_LEN] = sum.try_into().map_err(|_| corrupt("checksum".into()))?;
        if crc(key, payload) != u32::from_le_bytes(sum) {
            return Err(corrupt(format!("{} fails its checksum", shown(key))));
        }
        Ok(payload)
    }

    /// A value as stored under `key`: postcard, sealed.
    pub fn encode<T: Serialize>(self, key: &[u8], value: &T) -> Vec<u8> {
        let payload =
            postcard::to_stdvec(value).expect("postcard encodes plain structs without failing");
        self.seal(key, payload)
    }

    /// Decodes the value stored under `key` in `tree`.
    pub fn decode<T: DeserializeOwned>(
        self,
        tree: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, StoreError> {
        postcard::from_bytes(self.unseal(tree, key, stored)?).map_err(|e| StoreError::Corrupt {
            tree,
            message: format!("{}: {e}", shown(key)),
        })
    }

    /// A number kept as a value under `key` (8 bytes big-endian, sealed).
    pub fn encode_number(self, key: &[u8], n: u64) -> Vec<u8> {
        self.seal(key, encode_key(n).to_vec())
    }

    /// Decodes a number kept as a value.
    pub fn decode_number(
        self,
        tree: &'static str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<u64, StoreError> {
        decode_number(tree, self.unseal(tree, key, stored)?)
    }

    /// The number stored under `key` in `tree` (named `name` in errors).
    pub fn get_number(
        self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        tree.get(key)?
            .map(|v| self.decode_number(name, key, &v))
            .transpose()
    }

    /// Decodes the record under key `number` and checks it is that record.
    pub fn decode_numbered<T: Numbered + DeserializeOwned>(
        self,
        tree: &'static str,
        number: u64,
        stored: &[u8],
    ) -> Result<T, StoreError> {
        let record: T = self.decode(tree, &encode_key(number), stored)?;
        if record.number() != number {
            return Err(StoreError::Corrupt {
                tree,
                message: format!("key {number} holds order {}", record.number()),
            });
        }
        Ok(record)
    }

    /// The record numbered `number` in `tree`, if held.
    pub fn get_numbered<T: Numbered + DeserializeOwned>(
        self,
        tree: &sled::Tree,
        name: &'static str,
        number: u64,
    ) -> Result<Option<T>, StoreError> {
        tree.get(encode_key(number))?
            .map(|v| self.decode_numbered(name, number, &v))
            .transpose()
    }

    /// Records of `tree` numbered `from` up to (not including) `below`, at
    /// most `limit` (capped at [`super::MAX_RANGE`]), ascending. `below` is
    /// the store's durable end: what lies past it is not served.
    pub fn range<T: Numbered + DeserializeOwned>(
        self,
        tree: &sled::Tree,
        name: &'static str,
        from: u64,
        below: u64,
        limit: u32,
    ) -> Result<Vec<T>, StoreError> {
        if from >= below {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(limit.min(super::MAX_RANGE)).unwrap_or(usize::MAX);
        tree.range(encode_key(from)..encode_key(below))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                self.decode_numbered(name, decode_number(name, &k)?, &v)
            })
            .collect()
    }
}

/// A key as errors show it: its number when it is 8 bytes, else its text.
fn shown(key: &[u8]) -> String {
    match super::decode_u64(key) {
        Some(n) => format!("key {n}"),
        None => format!("key {:?}", String::from_utf8_lossy(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{OrderRecord, TradeKind};

    fn rec(number: u64) -> OrderRecord {
        OrderRecord {
            number,
            name: "AAPL".into(),
            kind: TradeKind::Sell,
            quantity: 2,
            key: format!("k{number}"),
        }
    }

    #[test]
    fn numbers_ranges_and_corruption() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let f = Format::Checksummed;
        assert_eq!(super::super::next_number(&tree, "t").unwrap(), 0);
        for n in [3u64, 4, 300] {
            tree.insert(encode_key(n), f.encode(&encode_key(n), &rec(n)))
                .unwrap();
        }
        assert_eq!(super::super::next_number(&tree, "t").unwrap(), 301);
        let page: Vec<OrderRecord> = f.range(&tree, "t", 4, 301, 10).unwrap();
        assert_eq!(page, vec![rec(4), rec(300)]);
        // The durable end caps the range.
        let capped: Vec<OrderRecord> = f.range(&tree, "t", 0, 300, 10).unwrap();
        assert_eq!(capped, vec![rec(3), rec(4)]);
        assert!(
            f.range::<OrderRecord>(&tree, "t", 9, 5, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(f.get_numbered::<OrderRecord>(&tree, "t", 5).unwrap(), None);
        // A record under the wrong key fails its checksum (the key is in
        // it); in a legacy database it is caught by its number.
        tree.insert(encode_key(7), f.encode(&encode_key(8), &rec(8)))
            .unwrap();
        let err = f.get_numbered::<OrderRecord>(&tree, "t", 7).unwrap_err();
        assert!(
            err.to_string().contains("key 7 fails its checksum"),
            "{err}"
        );
        let legacy = Format::Legacy;
        tree.insert(encode_key(9), legacy.encode(&encode_key(9), &rec(8)))
            .unwrap();
        assert!(matches!(
            legacy.get_numbered::<OrderRecord>(&tree, "t", 9),
            Err(StoreError::Corrupt { tree: "t", .. })
        ));
        tree.insert(b"short", b"x").unwrap();
        assert!(f.get_number(&tree, "t", b"short").is_err());
        assert!(legacy.get_number(&tree, "t", b"short").is_err());
        assert!(f.decode::<OrderRecord>("t", b"k", b"").is_err());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let f = Format::Checksummed;
        let key = encode_key(42);
        let sealed = f.encode(&key, &rec(42));
        assert_eq!(
            f.decode::<OrderRecord>("t", &key, &sealed).unwrap(),
            rec(42)
        );
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(f.decode::<OrderRecord>("t", &key, &bad).is_err(), "bit {i}");
        }
        let n = f.encode_number(b"epoch", 7);
        assert_eq!(f.decode_number("meta", b"epoch", &n).unwrap(), 7);
        assert!(f.decode_number("meta", b"other", &n).is_err());
        assert_eq!(Format::from_marker(&f.marker()).unwrap(), f);
        assert!(Format::from_marker(&2u64.to_be_bytes()).is_err());
    }
}
