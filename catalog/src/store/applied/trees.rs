//! One tree of applied orders, of either kind: one record per order (the
//! trees written before batch records, `applied` and `applied-<first>`,
//! and the segments closed from them) or one record per batch
//! (`applied-batches-<first>`, and the `batches` tree of the segments
//! closed from them; see `common::storage::batches`).

use common::storage::batches::decode_batch;
use common::storage::{self, Format, StoreError, encode_key};
use common::types::OrderRecord;

use super::corrupt;

/// The name errors give a tree of batch records.
const BATCHES: &str = "applied batches";

/// A tree of applied orders and its kind.
#[derive(Clone)]
pub(in crate::store) struct Kind {
    pub tree: sled::Tree,
    pub batched: bool,
}

impl Kind {
    /// Orders `start..end`, at most `limit`, appended to `out`.
    pub fn read(
        &self,
        format: Format,
        start: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<OrderRecord>,
    ) -> Result<(), StoreError> {
        if start >= end || limit == 0 {
            return Ok(());
        }
        if !self.batched {
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            out.extend(format.range(&self.tree, "applied", start, end, limit)?);
            return Ok(());
        }
        let stop = out.len().saturating_add(limit);
        for kv in self.tree.range(encode_key(start)..) {
            let (k, v) = kv?;
            for r in decode_batch(format, BATCHES, &k, &v)? {
                if r.number >= end || out.len() >= stop {
                    return Ok(());
                }
                if r.number >= start {
                    out.push(r);
                }
            }
        }
        Ok(())
    }

    /// The first order the tree holds, if any.
    fn first(&self, format: Format) -> Result<Option<u64>, StoreError> {
        let Some((k, v)) = self.tree.first()? else {
            return Ok(None);
        };
        if self.batched {
            Ok(decode_batch(format, BATCHES, &k, &v)?
                .first()
                .map(|r| r.number))
        } else {
            Ok(Some(storage::decode_number("applied", &k)?))
        }
    }

    /// Checks the orders `from..below` of a tree whose first order is
    /// `first`: each record decodes (and passes its checksum), and the
    /// numbers run without a gap. Orders applied since (from `below` on)
    /// are left alone.
    pub fn verify(
        &self,
        format: Format,
        (first, from): (u64, u64),
        below: u64,
    ) -> Result<(), StoreError> {
        if let Some(held) = self.first(format)?
            && held != first
        {
            return Err(corrupt(format!(
                "order {first} is missing (the first one held is {held})"
            )));
        }
        let mut expected = from;
        // The first record read may start before `from` (a batch record
        // holding it); every later one starts where the last one ended.
        let mut started = false;
        for kv in self.tree.range(encode_key(from)..) {
            let (k, v) = kv?;
            let (lo, hi) = if self.batched {
                let batch = decode_batch(format, BATCHES, &k, &v)?;
                // decode_batch refuses an empty record.
                let (Some(lo), Some(hi)) = (batch.first(), batch.last()) else {
                    continue;
                };
                (lo.number, hi.number)
            } else {
                let number = storage::decode_number("applied", &k)?;
                format.decode_numbered::<OrderRecord>("applied", number, &v)?;
                (number, number)
            };
            if lo >= below {
                break;
            }
            if lo > expected || (started && lo != expected) {
                return Err(corrupt(format!(
                    "order {expected} is missing (the next one held is {lo})"
                )));
            }
            started = true;
            expected = hi.saturating_add(1);
        }
        if expected < below {
            return Err(corrupt(format!("order {expected} is missing")));
        }
        Ok(())
    }
}
