//! The write of one batch: the transaction that applies its trades to the
//! stocks and records them, in one batch record
//! (`common::storage::batches`; [`Catalog::transact`]), and the task that
//! carries an apply or a fence to its end whether or not anyone still waits
//! ([`to_the_end`]).

use common::storage::batches::{PER_RECORD, encode_batch};
use common::storage::{StoreError, encode_key};
use common::types::{ApplyBatch, OrderRecord, TradeOutcome};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{Catalog, Changed, EPOCH_KEY, LEADER_KEY, StockValue};
use crate::error::CatalogError;
use crate::rules;

impl Catalog {
    /// The transaction of [`apply`](Self::apply): outcomes, the next
    /// number, and the stocks it changed (in order; a later change of the
    /// same stock comes later).
    pub(super) fn transact(
        &self,
        batch: &ApplyBatch,
    ) -> Result<(Vec<TradeOutcome>, u64, Changed), StoreError> {
        let format = self.db.format();
        let current = self.applied.current();
        let result =
            (&self.stocks, &current.tree, self.db.meta()).transaction(|(stocks, applied, meta)| {
                let abort = ConflictableTransactionError::Abort;
                let mut outcomes = Vec::with_capacity(batch.trades.len());
                let mut changed = Changed::new();
                let mut records = Vec::new();
                let mut number = batch.base;
                for t in &batch.trades {
                    let key = t.name.as_bytes();
                    let stock = match stocks.get(key)? {
                        Some(raw) => Some(
                            format
                                .decode::<StockValue>("stocks", key, &raw)
                                .map_err(abort)?,
                        ),
                        None => None,
                    };
                    let (stock, held) = match (stock, rules::trade(stock.map(StockValue::held), t))
                    {
                        (_, Err(rejection)) => {
                            outcomes.push(rejection.into());
                            continue;
                        }
                        (Some(stock), Ok(held)) => (stock, held),
                        (None, Ok(_)) => unreachable!("the rules refuse trades on unknown stocks"),
                    };
                    let value = StockValue {
                        quantity: held.quantity,
                        volume: held.volume,
                        ..stock
                    };
                    stocks.insert(key, format.encode(key, &value))?;
                    changed.push((t.name.clone(), value));
                    let record = OrderRecord {
                        number,
                        name: t.name.clone(),
                        kind: t.kind,
                        quantity: t.quantity,
                        key: t.key.clone(),
                    };
                    if current.batched {
                        records.push(record);
                    } else {
                        let number_key = encode_key(number);
                        applied.insert(&number_key, format.encode(&number_key, &record))?;
                    }
                    outcomes.push(TradeOutcome::Applied { number });
                    // Checked above: base + batch length fits in a u64.
                    number = number.saturating_add(1);
                }
                // One record per batch (of at most PER_RECORD orders), not
                // one per order: sled's work is per record.
                for orders in records.chunks(PER_RECORD) {
                    let last = orders.last().map_or(0, |r| r.number);
                    let (key, value) = encode_batch(format, last, orders);
                    applied.insert(&key, value)?;
                }
                meta.insert(EPOCH_KEY, format.encode_number(EPOCH_KEY, batch.epoch))?;
                if let Some(leader) = batch.leader_id {
                    meta.insert(
                        LEADER_KEY,
                        format.encode_number(LEADER_KEY, u64::from(leader)),
                    )?;
                }
                Ok((outcomes, number, changed))
            });
        Ok(result?)
    }
}

/// [`common::task::to_the_end`] for the catalog's work (an apply, a fence,
/// a batch with its invalidations): it ends whole even when its request is
/// dropped.
pub(crate) async fn to_the_end<T: Send + 'static>(
    what: &'static str,
    work: impl Future<Output = Result<T, CatalogError>> + Send + 'static,
) -> Result<T, CatalogError> {
    common::task::to_the_end(what, work)
        .await
        .unwrap_or_else(|stopped| Err(StoreError::Engine(stopped).into()))
}
