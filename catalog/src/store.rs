//! The catalog database: stocks keyed by name, and the record of every
//! order the catalog applied, keyed by big-endian order number, so that a new
//! leader can reconcile the order log with what the catalog really did.
//!
//! Every change is one sled transaction over all trees and is flushed before
//! the caller hears of it.

use std::path::Path;

use common::types::{ApplyBatch, ApplyConflict, OrderRecord, StockRow, TradeKind, TradeOutcome};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::Mutex;

/// A stock as stored (the name is the key).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct StockValue {
    price: f64,
    quantity: u64,
    volume: u64,
}

const EPOCH_KEY: &[u8] = b"epoch";
/// Most records one `/applied` page returns; bounds response size and memory.
pub const MAX_RANGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] common::storage::OpenError),
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    #[error("cannot load stocks from {path}: {message}")]
    Stocks { path: String, message: String },
}

/// Serialises batches and fences: the catalog is the single point that
/// orders trades, so these run one at a time.
struct Sequencer {
    epoch: u64,
    next: u64,
}

pub struct Catalog {
    db: sled::Db,
    stocks: sled::Tree,
    applied: sled::Tree,
    meta: sled::Tree,
    seq: Mutex<Sequencer>,
}

fn decode<T: for<'a> Deserialize<'a>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain structs without failing")
}

fn key_number(tree: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    common::storage::decode_u64(key).ok_or_else(|| StoreError::Corrupt {
        tree,
        message: format!("key of {} bytes", key.len()),
    })
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, StoreError> {
        let db = common::storage::open_db(path, "the catalog")?;
        let stocks = db.open_tree("stocks")?;
        let applied = db.open_tree("applied")?;
        let meta = db.open_tree("meta")?;
        let next =
            match applied.last()? {
                Some((k, _)) => key_number("applied", &k)?.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt {
                        tree: "applied",
                        message: "the last order number is u64::MAX; no number is left".into(),
                    }
                })?,
                None => 0,
            };
        let epoch = match meta.get(EPOCH_KEY)? {
            Some(v) => key_number("meta", &v)?,
            None => 0,
        };
        Ok(Catalog {
            db,
            stocks,
            applied,
            meta,
            seq: Mutex::new(Sequencer { epoch, next }),
        })
    }

    /// Loads `name,price,quantity` rows when the database holds no stock yet.
    /// Returns how many stocks were loaded.
    pub async fn load_initial(&self, csv_path: &Path) -> Result<usize, StoreError> {
        if !self.stocks.is_empty() {
            return Ok(0);
        }
        let err = |message: String| StoreError::Stocks {
            path: csv_path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(csv_path).map_err(|e| err(e.to_string()))?;
        let rows = parse_stocks_csv(&text).map_err(err)?;
        let mut batch = sled::Batch::default();
        for (name, price, quantity) in &rows {
            batch.insert(
                name.as_bytes(),
                encode(&StockValue {
                    price: *price,
                    quantity: *quantity,
                    volume: 0,
                }),
            );
        }
        self.stocks.apply_batch(batch)?;
        crate::metrics::METRICS.flush.flush(&self.db).await?;
        Ok(rows.len())
    }

    pub fn get(&self, name: &str) -> Result<Option<StockRow>, StoreError> {
        match self.stocks.get(name.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let s: StockValue = decode("stocks", &v)?;
                Ok(Some(StockRow {
                    name: name.to_string(),
                    price: s.price,
                    quantity: s.quantity,
                    volume: s.volume,
                }))
            }
        }
    }

    /// Every stock, ascending by name.
    pub fn dump(&self) -> Result<Vec<StockRow>, StoreError> {
        self.stocks
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let s: StockValue = decode("stocks", &v)?;
                Ok(StockRow {
                    name: String::from_utf8_lossy(&k).into_owned(),
                    price: s.price,
                    quantity: s.quantity,
                    volume: s.volume,
                })
            })
            .collect()
    }

    /// (epoch, next order number).
    pub async fn position(&self) -> (u64, u64) {
        let seq = self.seq.lock().await;
        (seq.epoch, seq.next)
    }

    /// A leader of `epoch` announces itself; older leaders are refused from
    /// now on. Returns the next order number the catalog expects.
    pub async fn fence(&self, epoch: u64) -> Result<Result<u64, ApplyConflict>, StoreError> {
        let mut seq = self.seq.lock().await;
        if epoch < seq.epoch {
            return Ok(Err(ApplyConflict::StaleEpoch { current: seq.epoch }));
        }
        if epoch > seq.epoch {
            self.meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
            crate::metrics::METRICS.flush.flush(&self.db).await?;
            seq.epoch = epoch;
        }
        Ok(Ok(seq.next))
    }

    /// Applies the trades of a batch in order, atomically and durably. The
    /// successful ones take the numbers `base`, `base + 1`, ...
    pub async fn apply(
        &self,
        batch: &ApplyBatch,
    ) -> Result<Result<Vec<TradeOutcome>, ApplyConflict>, StoreError> {
        let mut seq = self.seq.lock().await;
        if batch.epoch < seq.epoch {
            return Ok(Err(ApplyConflict::StaleEpoch { current: seq.epoch }));
        }
        if batch.base != seq.next {
            return Ok(Err(ApplyConflict::Sequence { next: seq.next }));
        }
        if batch.base.checked_add(batch.trades.len() as u64).is_none() {
            return Err(StoreError::Corrupt {
                tree: "applied",
                message: format!("order numbers from {} are exhausted", batch.base),
            });
        }
        let result =
            (&self.stocks, &self.applied, &self.meta).transaction(|(stocks, applied, meta)| {
                let mut outcomes = Vec::with_capacity(batch.trades.len());
                let mut number = batch.base;
                for t in &batch.trades {
                    let Some(raw) = stocks.get(t.name.as_bytes())? else {
                        outcomes.push(TradeOutcome::Rejected {
                            code: 404,
                            message: format!("unknown stock {}", t.name),
                        });
                        continue;
                    };
                    let mut s: StockValue = postcard::from_bytes(&raw)
                        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                    let new_quantity = match t.kind {
                        TradeKind::Buy => s.quantity.checked_sub(t.quantity),
                        TradeKind::Sell => s.quantity.checked_add(t.quantity),
                    };
                    let (Some(quantity), Some(volume)) =
                        (new_quantity, s.volume.checked_add(t.quantity))
                    else {
                        let message = match t.kind {
                            TradeKind::Buy => format!(
                                "not enough {} to buy: {} left, {} asked",
                                t.name, s.quantity, t.quantity
                            ),
                            TradeKind::Sell => format!(
                                "selling {} {} would overflow the quantity",
                                t.quantity, t.name
                            ),
                        };
                        outcomes.push(TradeOutcome::Rejected { code: 409, message });
                        continue;
                    };
                    s.quantity = quantity;
                    s.volume = volume;
                    stocks.insert(t.name.as_bytes(), encode(&s))?;
                    let record = OrderRecord {
                        number,
                        name: t.name.clone(),
                        kind: t.kind,
                        quantity: t.quantity,
                        key: t.key.clone(),
                    };
                    applied.insert(&number.to_be_bytes(), encode(&record))?;
                    outcomes.push(TradeOutcome::Applied { number });
                    // Checked above: base + batch length fits in a u64.
                    number = number.saturating_add(1);
                }
                meta.insert(EPOCH_KEY, &batch.epoch.to_be_bytes())?;
                Ok(outcomes)
            });
        let outcomes = match result {
            Ok(o) => o,
            Err(TransactionError::Abort(message)) => {
                return Err(StoreError::Corrupt {
                    tree: "stocks",
                    message,
                });
            }
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        crate::metrics::METRICS.flush.flush(&self.db).await?;
        seq.epoch = batch.epoch;
        seq.next += outcomes
            .iter()
            .filter(|o| matches!(o, TradeOutcome::Applied { .. }))
            .count() as u64;
        Ok(Ok(outcomes))
    }

    /// Applied orders `from..from+limit` (at most [`MAX_RANGE`]).
    pub fn applied_range(&self, from: u64, limit: u32) -> Result<Vec<OrderRecord>, StoreError> {
        self.applied
            .range(from.to_be_bytes()..)
            .take(limit.min(MAX_RANGE) as usize)
            .map(|kv| {
                let (k, v) = kv?;
                let record: OrderRecord = decode("applied", &v)?;
                let number = key_number("applied", &k)?;
                if record.number != number {
                    return Err(StoreError::Corrupt {
                        tree: "applied",
                        message: format!("key {number} holds order {}", record.number),
                    });
                }
                Ok(record)
            })
            .collect()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        crate::metrics::METRICS.flush.flush(&self.db).await?;
        Ok(())
    }
}

/// Parses `name,price,quantity` lines (a header line is allowed).
pub fn parse_stocks_csv(text: &str) -> Result<Vec<(String, f64, u64)>, String> {
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("name")) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, price, quantity] = fields.as_slice() else {
            return Err(format!("line {}: expected name,price,quantity", i + 1));
        };
        common::types::validate_stock_name(name).map_err(|e| format!("line {}: {e}", i + 1))?;
        let price: f64 = price
            .parse()
            .map_err(|_| format!("line {}: bad price {price:?}", i + 1))?;
        if !price.is_finite() || price < 0.0 {
            return Err(format!(
                "line {}: price must be a non-negative number",
                i + 1
            ));
        }
        let quantity: u64 = quantity
            .parse()
            .map_err(|_| format!("line {}: bad quantity {quantity:?}", i + 1))?;
        if !seen.insert(name.to_string()) {
            return Err(format!("line {}: stock {name} listed twice", i + 1));
        }
        rows.push((name.to_string(), price, quantity));
    }
    if rows.is_empty() {
        return Err("no stocks listed".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::types::TradeCommand;

    fn trade(name: &str, kind: TradeKind, quantity: u64) -> TradeCommand {
        TradeCommand {
            name: name.into(),
            kind,
            quantity,
            key: format!("k-{name}-{quantity}"),
        }
    }

    async fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "name,price,quantity\nAAPL,15.99,100\nMSFT,1.5,10\n").unwrap();
        let c = Catalog::open(&dir.path().join("db")).unwrap();
        assert_eq!(c.load_initial(&csv).await.unwrap(), 2);
        (dir, c)
    }

    #[tokio::test]
    async fn batch_applies_in_order_and_numbers_only_successes() {
        let (_d, c) = catalog().await;
        let batch = ApplyBatch {
            epoch: 1,
            base: 0,
            trades: vec![
                trade("AAPL", TradeKind::Buy, 60),
                trade("AAPL", TradeKind::Buy, 60),
                trade("NOPE", TradeKind::Sell, 1),
                trade("AAPL", TradeKind::Sell, 5),
            ],
        };
        let out = c.apply(&batch).await.unwrap().unwrap();
        assert_eq!(out[0], TradeOutcome::Applied { number: 0 });
        assert!(matches!(out[1], TradeOutcome::Rejected { code: 409, .. }));
        assert!(matches!(out[2], TradeOutcome::Rejected { code: 404, .. }));
        assert_eq!(out[3], TradeOutcome::Applied { number: 1 });
        let s = c.get("AAPL").unwrap().unwrap();
        assert_eq!((s.quantity, s.volume), (45, 65));
        assert_eq!(c.applied_range(0, 10).unwrap().len(), 2);
        assert_eq!(c.position().await, (1, 2));
    }

    #[tokio::test]
    async fn stale_epochs_and_wrong_bases_are_refused() {
        let (_d, c) = catalog().await;
        assert_eq!(c.fence(3).await.unwrap(), Ok(0));
        let mut batch = ApplyBatch {
            epoch: 2,
            base: 0,
            trades: vec![trade("MSFT", TradeKind::Buy, 1)],
        };
        assert_eq!(
            c.apply(&batch).await.unwrap(),
            Err(ApplyConflict::StaleEpoch { current: 3 })
        );
        batch.epoch = 3;
        batch.base = 5;
        assert_eq!(
            c.apply(&batch).await.unwrap(),
            Err(ApplyConflict::Sequence { next: 0 })
        );
        assert_eq!(
            c.fence(2).await.unwrap(),
            Err(ApplyConflict::StaleEpoch { current: 3 })
        );
        assert_eq!(c.get("MSFT").unwrap().unwrap().quantity, 10);
    }

    #[test]
    fn csv_errors_name_the_line() {
        assert!(
            parse_stocks_csv("name,price,quantity\nA,1,x\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(
            parse_stocks_csv("A,1,1\nA,2,2\n")
                .unwrap_err()
                .contains("twice")
        );
    }
}
