//! The catalog database: stocks keyed by name, and the record of every
//! order the catalog applied, one record per batch under its last order's
//! big-endian number (`store/applied.rs`), so that a new leader can
//! reconcile the order log with what the catalog really did.
//!
//! Every change is flushed before the caller hears of it. A batch is its
//! record, which carries the stocks it changed, then their new values
//! (`store/batch.rs`: one sync of the log, not a transaction's two); the
//! open redoes the last record's. The trade arithmetic is [`crate::rules::trade`];
//! this file and `common::storage` are the only code of the catalog that
//! names the engine.
//!
//! Lookups are served from the last durable state: a copy of the stocks
//! (the catalog holds few) updated only after a flush succeeds, and applied
//! orders below the durable next number. So no lookup ever shows a trade
//! between its write and its flush, nor, after a failed flush (sled
//! keeps the failed write in memory), one that never became durable. After
//! such a failure every write is refused (503) until the process restarts
//! on what is on disk (see `common::storage`).
//!
//! Every record carries a checksum (in databases of the checksummed
//! format). Opening checks every stock and every applied order (checksums,
//! numbers from 0 without a gap): [`Catalog::open`] before it returns, and
//! [`Catalog::open_serving`] too while they are few, else the newest before
//! and the rest in the background (`common::storage::scan`). Damage refuses
//! to start, and `catalog --rebuild` rebuilds from the stocks file and the
//! order log.

mod applied;
mod batch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use common::storage::archive::Sizes;
use common::storage::{Bounds, Database, Format, Scan, ScanState, StorageHealth, StoreError};
use common::types::{ApplyBatch, ApplyConflict, OrderRecord, StockRow, StorageState, TradeOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::CatalogError;
use crate::metrics::METRICS;
use crate::rules::Holding;
use applied::Applied;
pub(crate) use batch::to_the_end;

pub use common::storage::MAX_RANGE;

/// A stock as stored (the name is the key).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct StockValue {
    price: f64,
    quantity: u64,
    volume: u64,
}

impl StockValue {
    fn held(self) -> Holding {
        Holding {
            quantity: self.quantity,
            volume: self.volume,
        }
    }

    fn row(self, name: String) -> StockRow {
        StockRow {
            name,
            price: self.price,
            quantity: self.quantity,
            volume: self.volume,
        }
    }
}

const EPOCH_KEY: &[u8] = b"epoch";
/// The replica that fenced the current epoch.
const LEADER_KEY: &[u8] = b"leader";

/// Serialises batches and fences: the catalog is the single point that
/// orders trades, so these run one at a time. Every figure is durable.
struct Sequencer {
    epoch: u64,
    /// The one replica whose batches this epoch takes (several front-ends
    /// could name two leaders of one epoch; the first to fence it wins).
    leader: Option<u32>,
    next: u64,
}

impl Sequencer {
    /// Refuses a sender of an older epoch, or another leader of this one.
    fn admit(&self, epoch: u64, leader: Option<u32>) -> Result<(), CatalogError> {
        let other_leader = epoch == self.epoch
            && matches!((self.leader, leader), (Some(held), Some(l)) if held != l);
        if epoch < self.epoch || other_leader {
            return Err(CatalogError::Conflict(ApplyConflict::StaleEpoch {
                current: self.epoch,
            }));
        }
        Ok(())
    }
}

/// The stocks a batch changed, with their new values, to copy once they
/// are durable.
type Changed = Vec<(String, StockValue)>;

pub struct Catalog {
    db: Arc<Database>,
    stocks: sled::Tree,
    applied: Arc<Applied>,
    seq: Mutex<Sequencer>,
    /// The stocks as last made durable: what lookups and dumps serve.
    durable: RwLock<BTreeMap<String, StockValue>>,
    /// One more than the highest durable applied order.
    durable_next: AtomicU64,
    /// The check of every applied order (see `common::storage::scan`).
    scan: Scan,
    sizes: Sizes,
}

impl Catalog {
    /// Opens the database and checks every record before it returns: for
    /// tools (`catalog dump`, `--rebuild`) and tests.
    pub fn open(path: &Path) -> Result<Catalog, StoreError> {
        Self::open_with(path, None, Bounds::SERVICE, Sizes::SERVICE)
    }

    /// Opens the database of the running catalog: every stock is checked
    /// before it returns, and every applied order while there are at most
    /// [`storage::EAGER_LIMIT`]; past that the newest [`storage::TAIL`]
    /// are checked here and the rest on a background thread, which calls
    /// `on_damage` if it finds damage (see `common::storage::scan`).
    pub fn open_serving(
        path: &Path,
        on_damage: impl FnOnce(StoreError) + Send + 'static,
    ) -> Result<Catalog, StoreError> {
        let sizes = Sizes::from_env()?;
        Self::open_with(path, Some(Box::new(on_damage)), Bounds::SERVICE, sizes)
    }

    fn open_with(
        path: &Path,
        on_damage: Option<Box<dyn FnOnce(StoreError) + Send>>,
        bounds: Bounds,
        sizes: Sizes,
    ) -> Result<Catalog, StoreError> {
        let db = Arc::new(Database::open(path, "the catalog", "catalog")?);
        let stocks = db.tree("stocks")?;
        let applied = Arc::new(Applied::open(&db, path)?);
        if batch::redo_last(&db, &stocks, applied.last_record()?)? {
            tracing::warn!("the last batch's stocks were written again (a stop cut its flush off)");
        }
        let format = db.format();
        let next = applied.next()?;
        let epoch = format
            .get_number(db.meta(), "meta", EPOCH_KEY)?
            .unwrap_or(0);
        let leader = format
            .get_number(db.meta(), "meta", LEADER_KEY)?
            .and_then(|id| u32::try_from(id).ok());
        let mut durable = BTreeMap::new();
        for kv in stocks.iter() {
            let (k, v) = kv?;
            let value: StockValue = format.decode("stocks", &k, &v)?;
            durable.insert(String::from_utf8_lossy(&k).into_owned(), value);
        }
        let scan = match on_damage {
            Some(on_damage) if next > bounds.eager => {
                applied.verify(format, next.saturating_sub(bounds.tail), next)?;
                let whole = Arc::clone(&applied);
                Scan::in_background("catalog", move || whole.verify(format, 0, next), on_damage)
            }
            _ => {
                applied.verify(format, 0, next)?;
                Scan::passed()
            }
        };
        Ok(Catalog {
            db,
            stocks,
            applied,
            seq: Mutex::new(Sequencer {
                epoch,
                leader,
                next,
            }),
            durable: RwLock::new(durable),
            durable_next: AtomicU64::new(next),
            scan,
            sizes,
        })
    }

    /// Where the check of every applied order stands (`Running` while a
    /// long record is checked in the background).
    pub fn scan(&self) -> ScanState {
        self.scan.state()
    }

    /// The storage state `/health` reports, and the first error's text.
    pub fn storage(&self) -> (StorageState, Option<String>) {
        self.db.health().state()
    }

    /// The storage health handle (shared with the recovery watcher).
    pub fn health(&self) -> &StorageHealth {
        self.db.health()
    }

    /// Whether records carry checksums (databases written before them do
    /// not, until rebuilt).
    pub fn format(&self) -> Format {
        self.db.format()
    }

    fn durable(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, StockValue>> {
        // A panic while the lock is held cannot leave the map half-updated
        // (updates are single inserts), so a poisoned lock is still good.
        self.durable.read().unwrap_or_else(|e| e.into_inner())
    }

    fn make_durable(&self, changed: Changed) {
        let mut map = self.durable.write().unwrap_or_else(|e| e.into_inner());
        map.extend(changed);
    }

    /// Loads the stocks of `csv_path` (see `common::stocks`) when the
    /// database holds no stock yet. Returns how many stocks were loaded.
    pub async fn load_initial(&self, csv_path: &Path) -> Result<usize, CatalogError> {
        if !self.durable().is_empty() {
            return Ok(0);
        }
        let err = |message: String| CatalogError::Stocks {
            path: csv_path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(csv_path).map_err(|e| err(e.to_string()))?;
        let seeds = common::stocks::parse(&text).map_err(err)?;
        let format = self.db.format();
        let mut batch = sled::Batch::default();
        let mut changed = Changed::with_capacity(seeds.len());
        for seed in &seeds {
            let value = StockValue {
                price: seed.price,
                quantity: seed.quantity,
                volume: 0,
            };
            let key = seed.name.as_bytes();
            batch.insert(key, format.encode(key, &value));
            changed.push((seed.name.clone(), value));
        }
        self.db.write(|| Ok(self.stocks.apply_batch(batch)?))?;
        self.flush().await?;
        self.make_durable(changed);
        Ok(seeds.len())
    }

    pub fn get(&self, name: &str) -> Result<Option<StockRow>, StoreError> {
        Ok(self.durable().get(name).map(|v| v.row(name.to_string())))
    }

    /// Every stock, ascending by name.
    pub fn dump(&self) -> Result<Vec<StockRow>, StoreError> {
        Ok(self
            .durable()
            .iter()
            .map(|(name, v)| v.row(name.clone()))
            .collect())
    }

    /// (epoch, next order number).
    pub async fn position(&self) -> (u64, u64) {
        let seq = self.seq.lock().await;
        (seq.epoch, seq.next)
    }

    /// `leader` announces itself as the leader of `epoch`; older leaders,
    /// and any other leader of this epoch, are refused from now on.
    /// Returns the next order number the catalog expects. Runs to the end
    /// even if the caller stops waiting (see [`apply`](Self::apply)).
    pub async fn fence(
        self: &Arc<Self>,
        epoch: u64,
        leader: Option<u32>,
    ) -> Result<u64, CatalogError> {
        let this = Arc::clone(self);
        to_the_end("fence", async move { this.fence_now(epoch, leader).await }).await
    }

    async fn fence_now(&self, epoch: u64, leader: Option<u32>) -> Result<u64, CatalogError> {
        let mut seq = self.seq.lock().await;
        seq.admit(epoch, leader)?;
        let new_leader = leader.is_some() && seq.leader != leader;
        if epoch > seq.epoch || new_leader {
            let format = self.db.format();
            let epoch_value = format.encode_number(EPOCH_KEY, epoch);
            let leader_value = leader.map(|l| format.encode_number(LEADER_KEY, u64::from(l)));
            self.db.write(|| {
                let meta = self.db.meta();
                meta.insert(EPOCH_KEY, epoch_value.clone())?;
                match &leader_value {
                    Some(v) => meta.insert(LEADER_KEY, v.clone())?,
                    None => meta.remove(LEADER_KEY)?,
                };
                Ok(())
            })?;
            self.flush().await?;
            seq.epoch = epoch;
            seq.leader = leader;
        }
        Ok(seq.next)
    }

    /// Applies the trades of a batch in order, atomically and durably, by
    /// [`crate::rules::trade`]. The successful ones take the numbers `base`,
    /// `base + 1`, ...; a refused one is an outcome, not an error.
    ///
    /// The work runs in a task of its own, to the end, even when the caller
    /// stops waiting (a leader that timed out closes its connection, and
    /// the server drops the request). Dropped between its write and
    /// the end of its flush, the batch would be in the database but not in
    /// the sequence: the next batch would take the same numbers, overwrite
    /// its record and apply on top of its stock changes.
    pub async fn apply(
        self: &Arc<Self>,
        batch: &ApplyBatch,
    ) -> Result<Vec<TradeOutcome>, CatalogError> {
        self.apply_shared(Arc::new(batch.clone())).await
    }

    /// [`apply`](Self::apply) of a batch the caller shares with the task
    /// (the route's, which reads the batch again afterwards), not copied.
    pub async fn apply_shared(
        self: &Arc<Self>,
        batch: Arc<ApplyBatch>,
    ) -> Result<Vec<TradeOutcome>, CatalogError> {
        let this = Arc::clone(self);
        to_the_end("apply", async move { this.apply_now(&batch).await }).await
    }

    async fn apply_now(&self, batch: &ApplyBatch) -> Result<Vec<TradeOutcome>, CatalogError> {
        let mut seq = self.seq.lock().await;
        seq.admit(batch.epoch, batch.leader_id)?;
        if batch.base != seq.next {
            return Err(CatalogError::Conflict(ApplyConflict::Sequence {
                next: seq.next,
            }));
        }
        let exhausted = || StoreError::Corrupt {
            tree: "applied",
            message: format!("order numbers from {} are exhausted", batch.base),
        };
        let count = u64::try_from(batch.trades.len()).map_err(|_| exhausted())?;
        batch.base.checked_add(count).ok_or_else(exhausted)?;
        let (outcomes, next, changed) = self.db.write(|| self.transact(batch))?;
        common::fault::point(common::fault::CATALOG_BEFORE_FLUSH);
        self.flush().await?;
        self.make_durable(changed);
        self.durable_next.store(next, Ordering::Release);
        if batch.epoch > seq.epoch || batch.leader_id.is_some() {
            // A batch of a newer epoch that was never fenced names its
            // leader itself (or none, from an older sender).
            seq.leader = batch.leader_id;
        }
        seq.epoch = batch.epoch;
        seq.next = next;
        // Not while the background check reads the record.
        // The batch is durable whatever happens here: a failure fails the
        // store (later writes are refused), not this batch.
        if self.scan.state() != ScanState::Running
            && let Err(e) = self.applied.rotate_if_due(next, self.sizes)
        {
            tracing::error!(error = %e, "starting a new tree of applied orders failed");
        }
        Ok(outcomes)
    }

    /// Applied orders `from..from+limit` (at most [`MAX_RANGE`]), durable
    /// ones only.
    pub fn applied_range(&self, from: u64, limit: u32) -> Result<Vec<OrderRecord>, StoreError> {
        let below = self.durable_next.load(Ordering::Acquire);
        let format = self.db.format();
        self.db.read(self.applied.range(format, from, below, limit))
    }

    /// Makes every write so far durable, counting and timing the flush
    /// (a refused one, after a failure, is not a flush).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.health().check()?;
        METRICS.flush.time(self.db.flush()).await
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        common::storage::archive::wait_while_closing(self.applied.closing_flag());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::storage::encode_key;
    use common::types::{TradeCommand, TradeKind};

    fn trade(name: &str, kind: TradeKind, quantity: u64) -> TradeCommand {
        TradeCommand {
            name: name.into(),
            kind,
            quantity,
            key: format!("k-{name}-{quantity}"),
        }
    }

    async fn catalog() -> (tempfile::TempDir, Arc<Catalog>) {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "name,price,quantity\nAAPL,15.99,100\nMSFT,1.5,10\n").unwrap();
        let c = Catalog::open(&dir.path().join("db")).unwrap();
        assert_eq!(c.load_initial(&csv).await.unwrap(), 2);
        (dir, Arc::new(c))
    }

    #[tokio::test]
    async fn batch_applies_in_order_and_numbers_only_successes() {
        let (_d, c) = catalog().await;
        let batch = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base: 0,
            trades: vec![
                trade("AAPL", TradeKind::Buy, 60),
                trade("AAPL", TradeKind::Buy, 60),
                trade("NOPE", TradeKind::Sell, 1),
                trade("AAPL", TradeKind::Sell, 5),
            ],
        };
        let out = c.apply(&batch).await.unwrap();
        assert_eq!(out[0], TradeOutcome::Applied { number: 0 });
        assert!(matches!(out[1], TradeOutcome::Rejected { code: 409, .. }));
        assert!(matches!(out[2], TradeOutcome::Rejected { code: 404, .. }));
        assert_eq!(out[3], TradeOutcome::Applied { number: 1 });
        let s = c.get("AAPL").unwrap().unwrap();
        assert_eq!((s.quantity, s.volume), (45, 65));
        assert_eq!(c.applied_range(0, 10).unwrap().len(), 2);
        assert_eq!(c.position().await, (1, 2));
    }

    /// A caller that gives up (its connection closes, the request times
    /// out) drops the apply future. A batch whose write ran must still
    /// take its numbers, or the next batch would apply on top of it under
    /// the same numbers and the stocks would count both.
    #[tokio::test]
    async fn an_apply_dropped_while_it_flushes_still_takes_its_numbers() {
        let (d, c) = catalog().await;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let (mut dropped, mut applied) = (0, 0);
        for round in 0..50 {
            let (epoch, next) = c.position().await;
            let batch = ApplyBatch {
                leader_id: Some(1),
                epoch: epoch.max(1),
                base: next,
                // Large enough that the flush is still running when the
                // first poll returns.
                trades: (0..2000)
                    .map(|i| TradeCommand {
                        key: format!("r{round}-{i}"),
                        ..trade("AAPL", [TradeKind::Buy, TradeKind::Sell][i % 2], 1)
                    })
                    .collect(),
            };
            let mut apply = std::pin::pin!(c.apply(&batch));
            match apply.as_mut().poll(&mut cx) {
                std::task::Poll::Pending => dropped += 1,
                std::task::Poll::Ready(Ok(_)) => applied += 1,
                // The dropped batch before took this base.
                std::task::Poll::Ready(Err(CatalogError::Conflict(ApplyConflict::Sequence {
                    ..
                }))) => {}
                std::task::Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
        assert!(dropped > 0, "no apply was dropped mid-way ({applied} ran)");
        let (epoch, next) = c.position().await;
        let mut last = ApplyBatch {
            leader_id: Some(1),
            epoch: epoch.max(1),
            base: next,
            trades: vec![trade("AAPL", TradeKind::Buy, 1)],
        };
        // The dropped batches may still be running: they come first.
        while let Err(e) = c.apply(&last).await {
            let CatalogError::Conflict(ApplyConflict::Sequence { next }) = e else {
                panic!("{e}");
            };
            last.base = next;
        }
        // Every batch that ran is durable and numbered once: the volume the
        // stocks show, also after a restart, is the sum of the orders on
        // record.
        drop(c);
        let c = reopen(&d.path().join("db")).unwrap();
        let (_, next) = c.position().await;
        let mut on_record = 0;
        let mut from = 0;
        while from < next {
            let page = c.applied_range(from, 1000).unwrap();
            assert!(!page.is_empty(), "orders from {from} are missing");
            from += page.len() as u64;
            on_record += page.iter().map(|o| o.quantity).sum::<u64>();
        }
        let s = c.get("AAPL").unwrap().unwrap();
        assert_eq!(
            s.volume, on_record,
            "{dropped} applies dropped, {applied} ran"
        );
    }

    #[tokio::test]
    async fn stale_epochs_and_wrong_bases_are_refused() {
        let (_d, c) = catalog().await;
        assert_eq!(c.fence(3, None).await.unwrap(), 0);
        let mut batch = ApplyBatch {
            leader_id: None,
            epoch: 2,
            base: 0,
            trades: vec![trade("MSFT", TradeKind::Buy, 1)],
        };
        assert!(matches!(
            c.apply(&batch).await,
            Err(CatalogError::Conflict(ApplyConflict::StaleEpoch {
                current: 3
            }))
        ));
        batch.epoch = 3;
        batch.base = 5;
        assert!(matches!(
            c.apply(&batch).await,
            Err(CatalogError::Conflict(ApplyConflict::Sequence { next: 0 }))
        ));
        assert!(matches!(
            c.fence(2, None).await,
            Err(CatalogError::Conflict(ApplyConflict::StaleEpoch {
                current: 3
            }))
        ));
        assert_eq!(c.get("MSFT").unwrap().unwrap().quantity, 10);
    }

    #[tokio::test]
    async fn a_bad_stocks_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "name,price,quantity\nA,1,x\n").unwrap();
        let c = Catalog::open(&dir.path().join("db")).unwrap();
        let err = c.load_initial(&csv).await.unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    /// After a failed flush sled still holds the batch in memory: lookups,
    /// the dump and `/applied` show only what is durable, and every later
    /// write is refused as unavailable.
    #[tokio::test]
    async fn after_a_failure_only_durable_state_is_served() {
        let (_d, c) = catalog().await;
        let batch = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base: 0,
            trades: vec![trade("AAPL", TradeKind::Buy, 10)],
        };
        c.apply(&batch).await.unwrap();
        // A batch the engine took but could not make durable.
        let next = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base: 1,
            trades: vec![trade("AAPL", TradeKind::Buy, 5)],
        };
        c.transact(&next).unwrap();
        let failed = c
            .health()
            .fail("IO error: No space left on device (os error 28)");
        assert!(failed.is_unavailable());
        let aapl = c.get("AAPL").unwrap().unwrap();
        assert_eq!((aapl.quantity, aapl.volume), (90, 10));
        assert_eq!(c.dump().unwrap()[0].quantity, 90);
        assert_eq!(c.applied_range(0, 10).unwrap().len(), 1);
        assert_eq!(c.position().await, (1, 1));
        let refused = c.apply(&next).await.unwrap_err();
        assert!(
            matches!(&refused, CatalogError::Store(e) if e.is_unavailable()),
            "{refused}"
        );
        assert!(
            matches!(c.fence(5, None).await, Err(CatalogError::Store(e)) if e.is_unavailable())
        );
        assert_eq!(c.storage().0, StorageState::Full);
    }

    /// A lookup during an apply shows the stock before or after it, never
    /// the written state before its flush: the copy moves after it.
    #[tokio::test]
    async fn lookups_move_only_after_the_flush() {
        let (_d, c) = catalog().await;
        let batch = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base: 0,
            trades: vec![trade("MSFT", TradeKind::Buy, 3)],
        };
        c.transact(&batch).unwrap();
        assert_eq!(c.get("MSFT").unwrap().unwrap().quantity, 10);
        assert!(c.applied_range(0, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn damaged_records_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "name,price,quantity\nAAPL,15.99,100\n").unwrap();
        let path = dir.path().join("db");
        {
            let c = Arc::new(Catalog::open(&path).unwrap());
            c.load_initial(&csv).await.unwrap();
            // Two batches: two batch records, under keys 0 and 1.
            for (base, t) in [
                trade("AAPL", TradeKind::Buy, 1),
                trade("AAPL", TradeKind::Sell, 2),
            ]
            .into_iter()
            .enumerate()
            {
                let batch = ApplyBatch {
                    leader_id: None,
                    epoch: 1,
                    base: base as u64,
                    trades: vec![t],
                };
                c.apply(&batch).await.unwrap();
            }
        }
        let applied = format!("applied-batches-{:020}", 0);
        let damage = |tree: &str, key: &[u8], expected: &str| {
            let db = open_when_unlocked(&path);
            let t = db.open_tree(tree).unwrap();
            let good = t.get(key).unwrap().unwrap();
            let mut bad = good.to_vec();
            bad[1] ^= 0x40;
            t.insert(key, bad).unwrap();
            db.flush().unwrap();
            drop((t, db));
            let err = reopen(&path).err().unwrap();
            assert!(err.to_string().contains(expected), "{err}");
            let db = open_when_unlocked(&path);
            db.open_tree(tree).unwrap().insert(key, good).unwrap();
            db.flush().unwrap();
        };
        damage("stocks", b"AAPL", "key \"AAPL\" fails its checksum");
        damage(&applied, &encode_key(1), "key 1 fails its checksum");
        damage("meta", EPOCH_KEY, "fails its checksum");
        let db = open_when_unlocked(&path);
        db.open_tree(&applied)
            .unwrap()
            .remove(encode_key(0))
            .unwrap();
        db.flush().unwrap();
        drop(db);
        let err = reopen(&path).err().unwrap();
        assert!(err.to_string().contains("order 0 is missing"), "{err}");
    }

    /// A stop during a batch's flush may keep its record and lose the
    /// stocks and the epoch written after it (sled recovers a prefix of
    /// its log): the open writes them again from the record, and a fence
    /// of a later epoch keeps its own.
    #[tokio::test]
    async fn the_open_redoes_the_last_batch_from_its_record() {
        let (d, c) = catalog().await;
        let path = d.path().join("db");
        let format = c.format();
        let batch = ApplyBatch {
            leader_id: Some(2),
            epoch: 3,
            base: 0,
            trades: vec![
                trade("AAPL", TradeKind::Buy, 7),
                trade("MSFT", TradeKind::Buy, 2),
                trade("AAPL", TradeKind::Sell, 1),
            ],
        };
        c.apply(&batch).await.unwrap();
        let after = c.dump().unwrap();
        assert_eq!((after[0].quantity, after[0].volume), (94, 8));
        drop(c);
        let lose = |epoch: bool| {
            let db = open_when_unlocked(&path);
            let stocks = db.open_tree("stocks").unwrap();
            for (name, price, quantity) in [("AAPL", 15.99, 100), ("MSFT", 1.5, 10)] {
                let before = StockValue {
                    price,
                    quantity,
                    volume: 0,
                };
                let key = name.as_bytes();
                stocks.insert(key, format.encode(key, &before)).unwrap();
            }
            if epoch {
                let meta = db.open_tree("meta").unwrap();
                meta.remove(EPOCH_KEY).unwrap();
                meta.remove(LEADER_KEY).unwrap();
            }
            db.flush().unwrap();
        };
        lose(true);
        let c = reopen(&path).unwrap();
        assert_eq!(c.dump().unwrap(), after);
        assert_eq!(c.position().await, (3, 3));
        // The leader of epoch 3 is back: another one is refused.
        assert!(matches!(
            c.fence(3, Some(1)).await,
            Err(CatalogError::Conflict(ApplyConflict::StaleEpoch {
                current: 3
            }))
        ));
        // An open after a whole flush writes nothing.
        let last = c.applied.last_record().unwrap();
        assert!(!batch::redo_last(&c.db, &c.stocks, last).unwrap());
        assert_eq!(c.fence(5, Some(1)).await.unwrap(), 3);
        drop(c);
        lose(false);
        let c = reopen(&path).unwrap();
        assert_eq!(c.dump().unwrap(), after);
        assert_eq!(c.position().await, (5, 3));
        assert_eq!(c.fence(5, Some(1)).await.unwrap(), 3);
    }

    /// A database written before checksums opens and trades as before.
    #[tokio::test]
    async fn a_legacy_database_is_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let value = StockValue {
                price: 2.0,
                quantity: 7,
                volume: 1,
            };
            db.open_tree("stocks")
                .unwrap()
                .insert("AAPL", postcard::to_stdvec(&value).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let c = reopen(dir.path()).unwrap();
        assert_eq!(c.format(), Format::Legacy);
        assert_eq!(c.get("AAPL").unwrap().unwrap().quantity, 7);
        let batch = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base: 0,
            trades: vec![trade("AAPL", TradeKind::Buy, 2)],
        };
        assert_eq!(
            c.apply(&batch).await.unwrap()[0],
            TradeOutcome::Applied { number: 0 }
        );
        drop(c);
        let c = reopen(dir.path()).unwrap();
        assert_eq!(c.get("AAPL").unwrap().unwrap().quantity, 5);
        assert_eq!(c.applied_range(0, 10).unwrap().len(), 1);
    }

    /// Older applied orders move into closed segments; ranges read across
    /// them, also after a stop between a segment's copy and the drop of its
    /// tree, and the stocks are untouched by it.
    #[tokio::test]
    async fn old_applied_orders_move_to_closed_segments() {
        let sizes = Sizes { segment: 10 };
        let (dir, c) = catalog().await;
        drop(c);
        let path = dir.path().join("db");
        let open = || {
            Arc::new(
                common::storage::open_when_unlocked(|| {
                    Catalog::open_with(&path, None, Bounds::SERVICE, sizes)
                })
                .unwrap(),
            )
        };
        let numbers = |c: &Catalog| -> Vec<u64> {
            let records = c.applied_range(0, 1000).unwrap();
            records.iter().map(|r| r.number).collect()
        };
        let trees = |c: &Catalog| -> Vec<String> {
            let names = c.db.engine().tree_names();
            let names = names
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned());
            names.filter(|n| n.starts_with("applied")).collect()
        };
        {
            let c = open();
            for base in (0..32).step_by(4) {
                let batch = ApplyBatch {
                    leader_id: None,
                    epoch: 1,
                    base,
                    trades: (0..4).map(|_| trade("AAPL", TradeKind::Sell, 1)).collect(),
                };
                c.apply(&batch).await.unwrap();
                common::wait::wait_until_blocking(
                    "full trees to move to segments",
                    std::time::Duration::from_secs(10),
                    || !c.applied.closing_flag().load(Ordering::Acquire),
                );
            }
            assert_eq!(c.applied.archive.segments(), vec![(0, 12), (12, 24)]);
            assert_eq!(trees(&c), vec![format!("applied-batches-{:020}", 24)]);
            assert_eq!(numbers(&c), (0..32).collect::<Vec<_>>());
            assert_eq!(c.applied_range(10, 4).unwrap()[3].number, 13);
            // A stop after the tree 24..32 was copied, before its drop.
            let copied = c.applied.current().tree.iter().map(|kv| Ok(kv?));
            c.applied
                .archive
                .close(common::storage::archive::Closing {
                    first: 24,
                    end: 32,
                    trees: vec![("batches", Box::new(copied))],
                })
                .unwrap();
        }
        let c = open();
        assert_eq!(c.applied.archive.end(), 32);
        assert_eq!(trees(&c), vec![format!("applied-batches-{:020}", 32)]);
        assert_eq!(numbers(&c), (0..32).collect::<Vec<_>>());
        assert_eq!(c.position().await.1, 32);
        assert_eq!(c.get("AAPL").unwrap().unwrap().quantity, 132);
        c.applied.verify(c.format(), 0, 32).unwrap();
    }

    /// A long record of applied orders is served once its newest orders
    /// are checked; damage further back is found in the background. Damage
    /// in the newest refuses to open.
    #[tokio::test]
    async fn a_long_record_is_checked_in_the_background() {
        let small = Bounds { eager: 3, tail: 2 };
        let (dir, c) = catalog().await;
        let path = dir.path().join("db");
        // One batch record per order, to damage them one by one.
        for q in 0..6 {
            let batch = ApplyBatch {
                leader_id: None,
                epoch: 1,
                base: q,
                trades: vec![trade("AAPL", TradeKind::Buy, q + 1)],
            };
            c.apply(&batch).await.unwrap();
        }
        drop(c);
        let flip = |number: u64| {
            let db = open_when_unlocked(&path);
            let applied = db.open_tree(format!("applied-batches-{:020}", 0)).unwrap();
            let mut v = applied.get(encode_key(number)).unwrap().unwrap().to_vec();
            v[0] ^= 1;
            applied.insert(encode_key(number), v).unwrap();
            db.flush().unwrap();
        };
        flip(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let c = wait_unlocked(|| {
            let tx = tx.clone();
            let damage: Box<dyn FnOnce(StoreError) + Send> =
                Box::new(move |e| tx.send(e.to_string()).unwrap());
            Catalog::open_with(&path, Some(damage), small, Sizes::SERVICE)
        })
        .unwrap();
        let found = rx.recv().unwrap();
        assert!(found.contains("key 1 fails its checksum"), "{found}");
        assert_eq!(c.scan(), ScanState::Damaged);
        assert_eq!(c.applied_range(4, 10).unwrap().len(), 2);
        drop(c);
        flip(1);
        flip(5);
        let err = wait_unlocked(|| {
            let damage: Box<dyn FnOnce(StoreError) + Send> =
                Box::new(|e| panic!("not reached: {e}"));
            Catalog::open_with(&path, Some(damage), small, Sizes::SERVICE)
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("key 5 fails its checksum"),
            "{err}"
        );
    }

    /// The start-up check's cost at a million applied orders:
    /// `cargo test --release -p catalog --lib -- --ignored million`.
    #[tokio::test]
    #[ignore = "a release-mode measurement; takes about a minute"]
    async fn start_up_check_of_a_million_orders() {
        const ORDERS: u64 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("s.csv");
        std::fs::write(&csv, "name,price,quantity\nAAPL,15.99,100\n").unwrap();
        let path = dir.path().join("db");
        {
            let c = Arc::new(Catalog::open(&path).unwrap());
            c.load_initial(&csv).await.unwrap();
            let mut base = 0;
            while base < ORDERS {
                let trades = (base..ORDERS.min(base + 4096))
                    .map(|n| TradeCommand {
                        name: "AAPL".into(),
                        kind: if n % 2 == 0 {
                            TradeKind::Buy
                        } else {
                            TradeKind::Sell
                        },
                        quantity: 1,
                        key: format!("g:{n:032x}"),
                    })
                    .collect();
                let batch = ApplyBatch {
                    leader_id: None,
                    epoch: 1,
                    base,
                    trades,
                };
                base += c.apply(&batch).await.unwrap().len() as u64;
            }
        }
        for attempt in 1..=3 {
            let (c, opened, started) = loop {
                let started = std::time::Instant::now();
                match Catalog::open_serving(&path, |e| panic!("{e}")) {
                    Ok(c) => break (c, started.elapsed(), started),
                    Err(StoreError::Open(common::storage::OpenError::Locked { .. })) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(c.position().await.1, ORDERS);
            while c.scan() == ScanState::Running {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(c.scan(), ScanState::Passed);
            let background = started.elapsed();
            let eager = std::time::Instant::now();
            c.applied.verify(c.format(), 0, ORDERS).unwrap();
            println!(
                "catalog with {ORDERS} applied orders, open #{attempt}: serving after \
                 {opened:?} (stocks and tail checked), every record checked in the background \
                 after {background:?}; the whole check before serving would take {:?}",
                eager.elapsed()
            );
        }
    }

    /// sled releases its lock a moment after the last handle is dropped.
    fn wait_unlocked<T>(mut open: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Err(StoreError::Open(common::storage::OpenError::Locked { .. }))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn reopen(path: &Path) -> Result<Arc<Catalog>, StoreError> {
        wait_unlocked(|| Catalog::open(path)).map(Arc::new)
    }

    fn open_when_unlocked(path: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::open(path) {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
