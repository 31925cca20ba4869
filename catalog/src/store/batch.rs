//! The write of one batch ([`Catalog::transact`]) and its redo at open
//! ([`redo_last`]), and the task that carries an apply or a fence to its
//! end whether or not anyone still waits ([`to_the_end`]).
//!
//! A batch is worked out on the durable copy of the stocks, then written
//! as its batch record (`common::storage::batches`), which carries after
//! its orders the batch's [`Effects`]: the new value of every stock it
//! changed, and its epoch and leader. The stocks and the epoch follow as
//! plain inserts, and one flush makes them all durable.
//!
//! One insert is atomic in sled, and its log is recovered as a prefix: a
//! stop during the flush may keep the record and lose writes after it,
//! never the reverse. So at open the last record's effects are written
//! again ([`redo_last`]); every earlier batch was whole on disk before the
//! next one was written. A batch of more than `PER_RECORD` orders (several
//! records) is one transaction, as every batch was before: a sled
//! transaction costs a second sync of the log in its flush.

use std::collections::BTreeMap;

use common::fault::CATALOG_AFTER_RECORD;
use common::storage::batches::{PER_RECORD, decode_effects, encode_batch, encode_batch_with};
use common::storage::{Database, Format, StoreError};
use common::types::{ApplyBatch, OrderRecord, TradeOutcome};
use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{Catalog, Changed, EPOCH_KEY, LEADER_KEY, StockValue};
use crate::error::CatalogError;
use crate::rules;

/// What a batch did besides its orders, carried in its (last) record.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct Effects {
    pub epoch: u64,
    pub leader: Option<u32>,
    /// Every stock the batch changed, with its value after the batch.
    pub stocks: Changed,
}

/// A write of one key: its key and stored bytes.
type Write = (Vec<u8>, Vec<u8>);

impl Catalog {
    /// The write of [`apply`](Self::apply): outcomes, the next number,
    /// and the stocks it changed, with their values after the batch.
    ///
    /// Batches run one at a time (under the sequencer) and each one's
    /// stocks enter the durable copy after its flush; a failed flush
    /// refuses every later write. So the copy is the database's state.
    pub(super) fn transact(
        &self,
        batch: &ApplyBatch,
    ) -> Result<(Vec<TradeOutcome>, u64, Changed), StoreError> {
        let format = self.db.format();
        let (outcomes, orders, effects) = self.work_out(batch);
        let next = orders.last().map_or(batch.base, |r| r.number + 1);
        let chunks: Vec<&[OrderRecord]> = orders.chunks(PER_RECORD).collect();
        let records: Vec<([u8; 8], Vec<u8>)> = chunks
            .iter()
            .enumerate()
            .map(|(i, orders)| {
                let last = orders.last().map_or(0, |r| r.number);
                if i + 1 == chunks.len() {
                    encode_batch_with(format, last, orders, &effects)
                } else {
                    encode_batch(format, last, orders)
                }
            })
            .collect();
        let stocks: Vec<Write> = effects
            .stocks
            .iter()
            .map(|(name, value)| {
                let key = name.as_bytes();
                (key.to_vec(), format.encode(key, value))
            })
            .collect();
        let meta = meta_writes(&self.db, format, &effects)?;
        let current = self.applied.current();
        if let [record] = &records[..] {
            // The record first: what follows it, the open can redo.
            current.tree.insert(record.0, record.1.as_slice())?;
            if common::fault::armed_at(CATALOG_AFTER_RECORD) {
                self.db.engine().flush()?;
            }
            common::fault::point(CATALOG_AFTER_RECORD);
        }
        if records.len() <= 1 {
            for (key, value) in &stocks {
                self.stocks.insert(key.as_slice(), value.as_slice())?;
            }
            for (key, value) in &meta {
                self.db.meta().insert(key.as_slice(), value.as_slice())?;
            }
            return Ok((outcomes, next, effects.stocks));
        }
        (&self.stocks, &current.tree, self.db.meta()).transaction(|(s, applied, m)| {
            for (key, value) in &records {
                applied.insert(&key[..], value.as_slice())?;
            }
            for (key, value) in &stocks {
                s.insert(key.as_slice(), value.as_slice())?;
            }
            for (key, value) in &meta {
                m.insert(key.as_slice(), value.as_slice())?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        Ok((outcomes, next, effects.stocks))
    }

    /// The batch applied by [`crate::rules::trade`] to the durable stocks:
    /// each trade's outcome, the orders it numbers, and its effects.
    fn work_out(&self, batch: &ApplyBatch) -> (Vec<TradeOutcome>, Vec<OrderRecord>, Effects) {
        let durable = self.durable();
        let mut now: BTreeMap<&str, StockValue> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(batch.trades.len());
        let mut orders = Vec::new();
        let mut number = batch.base;
        for t in &batch.trades {
            let stock = now.get(t.name.as_str()).or_else(|| durable.get(&t.name));
            let stock = stock.copied();
            match (stock, rules::trade(stock.map(StockValue::held), t)) {
                (_, Err(rejection)) => outcomes.push(rejection.into()),
                (None, Ok(_)) => unreachable!("the rules refuse trades on unknown stocks"),
                (Some(stock), Ok(held)) => {
                    let value = StockValue {
                        quantity: held.quantity,
                        volume: held.volume,
                        ..stock
                    };
                    now.insert(&t.name, value);
                    orders.push(OrderRecord {
                        number,
                        name: t.name.clone(),
                        kind: t.kind,
                        quantity: t.quantity,
                        key: t.key.clone(),
                    });
                    outcomes.push(TradeOutcome::Applied { number });
                    // The caller checked that base + batch length fits.
                    number = number.saturating_add(1);
                }
            }
        }
        let effects = Effects {
            epoch: batch.epoch,
            leader: batch.leader_id,
            stocks: now.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
        };
        (outcomes, orders, effects)
    }
}

/// The epoch and the leader as `effects` leave them, where they differ
/// from what `meta` holds (a batch names its leader, or none, from an older
/// sender, which leaves the one held).
fn meta_writes(db: &Database, format: Format, effects: &Effects) -> Result<Vec<Write>, StoreError> {
    let mut writes = vec![(EPOCH_KEY, format.encode_number(EPOCH_KEY, effects.epoch))];
    if let Some(leader) = effects.leader {
        writes.push((
            LEADER_KEY,
            format.encode_number(LEADER_KEY, u64::from(leader)),
        ));
    }
    let mut out = Vec::new();
    for (key, value) in writes {
        if db.meta().get(key)?.as_deref() != Some(value.as_slice()) {
            out.push((key.to_vec(), value));
        }
    }
    Ok(out)
}

/// Writes again what the last batch record says its batch did, where the
/// stocks or the meta lack it (a stop during its flush), and flushes.
/// Returns whether anything was written. A fence of a later epoch than the
/// record's keeps its epoch and leader.
pub(super) fn redo_last(
    db: &Database,
    stocks: &sled::Tree,
    last: Option<(sled::IVec, sled::IVec)>,
) -> Result<bool, StoreError> {
    let format = db.format();
    let Some((key, value)) = last else {
        return Ok(false);
    };
    let Some(effects) = decode_effects::<Effects>(format, "applied batches", &key, &value)? else {
        return Ok(false);
    };
    let fenced = format.get_number(db.meta(), "meta", EPOCH_KEY)?;
    let meta = if fenced.is_some_and(|epoch| epoch > effects.epoch) {
        Vec::new()
    } else {
        meta_writes(db, format, &effects)?
    };
    let mut written = false;
    for (name, value) in &effects.stocks {
        let key = name.as_bytes();
        let stored = format.encode(key, value);
        let held = stocks.get(key)?;
        if let Some(held) = &held {
            // Damage is refused, not written over.
            format.decode::<StockValue>("stocks", key, held)?;
        }
        if held.as_deref() != Some(stored.as_slice()) {
            db.write(|| Ok(stocks.insert(key, stored)?))?;
            written = true;
        }
    }
    for (key, value) in meta {
        db.write(|| Ok(db.meta().insert(key, value)?))?;
        written = true;
    }
    if written {
        db.flush_blocking()?;
    }
    Ok(written)
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
