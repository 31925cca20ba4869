//! The flush floor `bazaar bench` measures the trade path against: a write
//! of one trade's size, then a flush, in a fresh database opened as the
//! services open theirs, on the disk the cluster uses. A durable trade can
//! not be faster than its flushes; this is what one costs here and now.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{StoreError, encode_key, open_db};

/// Bytes written to each tree per flush: a replica's batch record of one
/// order with a front-end generated key is about 50 bytes, the catalog's
/// applied order about 49, so this covers either, and a caller's key of
/// some 80 characters.
pub const TRADE_RECORD_BYTES: usize = 96;

/// Times `count` flushes, each after inserting one record of
/// [`TRADE_RECORD_BYTES`] into each of `trees` trees (a replica's single
/// trade writes one: the batch record, which carries the key; the
/// catalog's two: the batch record and the stock, its epoch and leader
/// being written only when they change). Blocks; the database at `dir` is
/// created for this and removed by the caller.
pub fn flush_times(dir: &Path, trees: usize, count: usize) -> Result<Vec<Duration>, StoreError> {
    let db = open_db(dir, "bazaar bench")?;
    let trees: Vec<sled::Tree> = (0..trees.max(1))
        .map(|i| db.open_tree(format!("t{i}")))
        .collect::<Result<_, _>>()?;
    let value = vec![0x5a; TRADE_RECORD_BYTES];
    let mut times = Vec::with_capacity(count);
    for n in 0..count as u64 {
        for t in &trees {
            t.insert(encode_key(n), value.as_slice())?;
        }
        let started = Instant::now();
        db.flush()?;
        times.push(started.elapsed());
    }
    Ok(times)
}
