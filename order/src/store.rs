//! The order log of one replica: orders keyed by big-endian number (so
//! `last()` and ranges are numeric), an index from idempotency key to order
//! number, and the highest leader epoch seen. Appends are contiguous by
//! construction (asserted), atomic across trees, and flushed before return.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use common::types::OrderRecord;
use sled::Transactional;
use sled::transaction::TransactionError;
use tokio::sync::Mutex;

const EPOCH_KEY: &[u8] = b"epoch";
/// Most records one `/log` page returns; bounds response size and memory.
pub const MAX_RANGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] common::storage::OpenError),
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    #[error("append of order {first} does not follow the highest order (next expected {next})")]
    NotContiguous { first: u64, next: u64 },
}

pub struct OrderLog {
    db: sled::Db,
    orders: sled::Tree,
    keys: sled::Tree,
    meta: sled::Tree,
    /// One more than the highest order number held (0 when empty).
    next: AtomicU64,
    /// Serialises appends so the contiguity check and the write are one step.
    append: Mutex<()>,
}

fn decode_number(tree: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    common::storage::decode_u64(bytes).ok_or_else(|| StoreError::Corrupt {
        tree,
        message: format!("{} bytes where 8 were expected", bytes.len()),
    })
}

fn decode_record(number: u64, bytes: &[u8]) -> Result<OrderRecord, StoreError> {
    let r: OrderRecord = postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        tree: "orders",
        message: format!("order {number}: {e}"),
    })?;
    if r.number != number {
        return Err(StoreError::Corrupt {
            tree: "orders",
            message: format!("key {number} holds order {}", r.number),
        });
    }
    Ok(r)
}

impl OrderLog {
    pub fn open(path: &Path) -> Result<OrderLog, StoreError> {
        let db = common::storage::open_db(path, "this order replica")?;
        let orders = db.open_tree("orders")?;
        let keys = db.open_tree("keys")?;
        let meta = db.open_tree("meta")?;
        let next =
            match orders.last()? {
                Some((k, _)) => decode_number("orders", &k)?.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt {
                        tree: "orders",
                        message: "the last order number is u64::MAX; no number is left".into(),
                    }
                })?,
                None => 0,
            };
        Ok(OrderLog {
            db,
            orders,
            keys,
            meta,
            next: AtomicU64::new(next),
            append: Mutex::new(()),
        })
    }

    /// One more than the highest order number held.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    pub fn highest(&self) -> Option<u64> {
        self.next().checked_sub(1)
    }

    pub fn get(&self, number: u64) -> Result<Option<OrderRecord>, StoreError> {
        self.orders
            .get(number.to_be_bytes())?
            .map(|v| decode_record(number, &v))
            .transpose()
    }

    /// The order number an idempotency key created, if any.
    pub fn by_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.keys
            .get(key.as_bytes())?
            .map(|v| decode_number("keys", &v))
            .transpose()
    }

    /// Orders `from..`, at most `limit` (capped at [`MAX_RANGE`]).
    pub fn range(&self, from: u64, limit: u32) -> Result<Vec<OrderRecord>, StoreError> {
        self.orders
            .range(from.to_be_bytes()..)
            .take(limit.min(MAX_RANGE) as usize)
            .map(|kv| {
                let (k, v) = kv?;
                decode_record(decode_number("orders", &k)?, &v)
            })
            .collect()
    }

    /// Appends records that start exactly at [`next`](Self::next) and are
    /// contiguous; records already held are skipped (they are identical by
    /// construction: only the catalog numbers orders). Flushes before it
    /// returns the new `next`.
    pub async fn append(&self, records: &[OrderRecord]) -> Result<u64, StoreError> {
        let _guard = self.append.lock().await;
        let next = self.next();
        let fresh: Vec<&OrderRecord> = records.iter().filter(|r| r.number >= next).collect();
        let Some(first) = fresh.first() else {
            return Ok(next);
        };
        if first.number != next {
            return Err(StoreError::NotContiguous {
                first: first.number,
                next,
            });
        }
        let new_next = next
            .checked_add(fresh.len() as u64)
            .ok_or_else(|| StoreError::Corrupt {
                tree: "orders",
                message: format!("order numbers from {next} are exhausted"),
            })?;
        // A sender's gap or repeat is refused, never stored (`next + i`
        // cannot overflow: it stays below `new_next`).
        for (i, r) in fresh.iter().enumerate() {
            if r.number != next + i as u64 {
                return Err(StoreError::NotContiguous {
                    first: r.number,
                    next: next + i as u64,
                });
            }
        }
        let result = (&self.orders, &self.keys).transaction(|(orders, keys)| {
            for r in &fresh {
                let value =
                    postcard::to_stdvec(r).expect("postcard encodes plain structs without failing");
                orders.insert(&r.number.to_be_bytes(), value)?;
                keys.insert(r.key.as_bytes(), &r.number.to_be_bytes())?;
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(e.into()),
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
        crate::metrics::timed_flush(&self.db).await?;
        self.next.store(new_next, Ordering::Release);
        crate::metrics::METRICS
            .highest
            .set(i64::try_from(new_next).unwrap_or(i64::MAX) - 1);
        Ok(new_next)
    }

    pub fn epoch(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(EPOCH_KEY)?
            .map(|v| decode_number("meta", &v))
            .transpose()?
            .unwrap_or(0))
    }

    /// Records a higher epoch durably.
    pub async fn set_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        self.meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
        crate::metrics::timed_flush(&self.db).await?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        crate::metrics::timed_flush(&self.db).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::types::TradeKind;

    fn rec(n: u64) -> OrderRecord {
        OrderRecord {
            number: n,
            name: "AAPL".into(),
            kind: TradeKind::Buy,
            quantity: 1,
            key: format!("k{n}"),
        }
    }

    #[tokio::test]
    async fn appends_are_contiguous_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = OrderLog::open(dir.path()).unwrap();
            assert_eq!(log.highest(), None);
            assert_eq!(log.append(&[rec(0), rec(1)]).await.unwrap(), 2);
            // Already-held records are skipped, new ones appended.
            assert_eq!(log.append(&[rec(1), rec(2)]).await.unwrap(), 3);
            assert!(matches!(
                log.append(&[rec(5)]).await,
                Err(StoreError::NotContiguous { first: 5, next: 3 })
            ));
            log.set_epoch(7).await.unwrap();
        }
        let log = OrderLog::open(dir.path()).unwrap();
        assert_eq!(log.highest(), Some(2));
        assert_eq!(log.by_key("k1").unwrap(), Some(1));
        assert_eq!(log.epoch().unwrap(), 7);
        assert_eq!(log.range(1, 10).unwrap(), vec![rec(1), rec(2)]);
    }

    #[tokio::test]
    async fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _log = OrderLog::open(dir.path()).unwrap();
        assert!(matches!(
            OrderLog::open(dir.path()),
            Err(StoreError::Open(common::storage::OpenError::Locked { .. }))
        ));
    }
}
