//! The order log of one replica: orders in one record per appended batch,
//! keyed by the big-endian number of its last order (so `last()` and ranges
//! are numeric; [`records`]), which carries the orders' idempotency keys
//! (indexed in memory for the open databases, [`keymap`], and in a file for
//! each closed segment), and the highest leader epoch seen. Appends are
//! contiguous by construction (asserted), atomic, and flushed before
//! return.
//!
//! Only what is durable is served: `next` (and the epoch) move after the
//! flush, and every read stops below `next`. After a failed write or flush
//! (a full disk, an I/O error) sled still holds the write in memory, so
//! this matters: the log keeps serving what is durable, refuses writes
//! (503), reports the failure ([`OrderLog::storage`]) and the process
//! restarts once storage works again (see `common::storage`).
//!
//! Every record carries a checksum (in databases of the checksummed
//! format), and opening checks the whole log: every record, their
//! contiguity, and the key index tree of orders written before batch
//! records. [`OrderLog::open`] does it before it returns;
//! [`OrderLog::open_serving`] too for a log of up to 100,000 orders, else
//! the newest before and the rest in the background
//! (`common::storage::scan`). Either way the tail's and the root's batch
//! records are read at open for their keys, so damage there is found
//! before serving. A damaged log refuses to start (the replica names
//! `--rebuild`) rather than run with holes.
//!
//! The live database holds the newest orders; older ones move into closed
//! segments (`common::storage::archive`, [`segments`]) so that the
//! replica's memory does not grow with its log. Every read and the start-up
//! check see both; a log written before segments opens as it is and starts
//! moving its oldest orders out with its next append.
//!
//! This module and `common::storage` (the helpers both stores share) are
//! the only code of the replica that names the engine; the rest of the
//! crate sees [`OrderLog`]'s typed methods and [`StoreError`].

mod check;
mod keymap;
mod records;
mod segments;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::storage::archive::{Sizes, fingerprint};
use common::storage::{Bounds, Database, Format, Scan, ScanState, StorageHealth};
use common::types::{OrderRecord, StorageState};
use tokio::sync::Mutex;

use crate::metrics::METRICS;
use check::{Writers, verify, verify_tail};
use records::{PER_RECORD, Records, existing};
use segments::Parts;

pub use common::storage::{MAX_RANGE, StoreError};

const EPOCH_KEY: &[u8] = b"epoch";

pub struct OrderLog {
    parts: Arc<Parts>,
    /// One more than the highest durable order number (0 when empty).
    next: AtomicU64,
    /// The highest durable epoch.
    epoch: AtomicU64,
    /// Serialises appends so the contiguity check and the write are one
    /// step; a tail's roll holds it to its end (see [`Self::roll`]).
    append: Arc<Mutex<()>>,
    /// The check of every record (see `common::storage::scan`).
    scan: Scan,
    sizes: Sizes,
}

/// What to do when the background check finds damage (see
/// [`OrderLog::open_serving`]).
type OnDamage = Box<dyn FnOnce(StoreError) + Send>;

impl OrderLog {
    /// Opens the log and checks every record ([`verify`]) before it
    /// returns: for tools (`order dump`) and tests.
    pub fn open(path: &Path) -> Result<OrderLog, StoreError> {
        Self::open_with(path, "order", None, Bounds::SERVICE, Sizes::SERVICE)
    }

    /// Opens the log of the service `service` (`order-2`, named in the
    /// storage health's log lines). Every record is checked before it
    /// returns while the log holds at most [`common::storage::EAGER_LIMIT`] orders;
    /// a longer log has its newest [`common::storage::TAIL`] checked here and the
    /// rest on a background thread, which calls `on_damage` if it finds
    /// damage (see `common::storage::scan`).
    pub fn open_serving(
        path: &Path,
        service: &str,
        on_damage: impl FnOnce(StoreError) + Send + 'static,
    ) -> Result<OrderLog, StoreError> {
        let on_damage: OnDamage = Box::new(on_damage);
        let sizes = Sizes::from_env()?;
        Self::open_with(path, service, Some(on_damage), Bounds::SERVICE, sizes)
    }

    fn open_with(
        path: &Path,
        service: &str,
        on_damage: Option<OnDamage>,
        bounds: Bounds,
        sizes: Sizes,
    ) -> Result<OrderLog, StoreError> {
        let db = Database::open(path, "this order replica", service)?;
        let (parts, next) = Parts::open(db, path, sizes.segment)?;
        let parts = Arc::new(parts);
        let format = parts.db.format();
        let epoch = format
            .get_number(parts.db.meta(), "meta", EPOCH_KEY)?
            .unwrap_or(0);
        let scan = match on_damage {
            Some(on_damage) if next > bounds.eager => {
                let tail = parts.tail();
                verify_tail(
                    format,
                    &tail.records,
                    tail.keys.as_ref(),
                    (tail.first, next),
                    bounds.tail,
                )?;
                let whole = Arc::clone(&parts);
                Scan::in_background(
                    service,
                    move || verify_all(&whole, next, Writers::Concurrent),
                    on_damage,
                )
            }
            _ => {
                verify_all(&parts, next, Writers::None)?;
                Scan::passed()
            }
        };
        Ok(OrderLog {
            parts,
            next: AtomicU64::new(next),
            epoch: AtomicU64::new(epoch),
            append: Arc::new(Mutex::new(())),
            scan,
            sizes,
        })
    }

    /// Where the check of every record stands (`Running` while a long log
    /// is checked in the background).
    pub fn scan(&self) -> ScanState {
        self.scan.state()
    }

    /// The storage state `/health` reports, and the first error's text.
    pub fn storage(&self) -> (StorageState, Option<String>) {
        self.parts.db.health().state()
    }

    /// The storage health handle (shared with the recovery watcher).
    pub fn health(&self) -> &StorageHealth {
        self.parts.db.health()
    }

    /// Whether records carry checksums (databases written before them do
    /// not, until rebuilt).
    pub fn format(&self) -> Format {
        self.parts.db.format()
    }

    /// One more than the highest durable order number.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    pub fn highest(&self) -> Option<u64> {
        self.next().checked_sub(1)
    }

    pub fn get(&self, number: u64) -> Result<Option<OrderRecord>, StoreError> {
        if number >= self.next() {
            return Ok(None);
        }
        self.parts.db.read(self.parts.get(self.format(), number))
    }

    /// The order number an idempotency key created, if any (and durable).
    pub fn by_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let next = self.next();
        let number = self
            .parts
            .db
            .read(self.parts.by_key(self.format(), key.as_bytes(), next))?;
        Ok(number.filter(|&n| n < next))
    }

    /// Orders `from..`, at most `limit` (capped at [`MAX_RANGE`]), durable
    /// ones only.
    pub fn range(&self, from: u64, limit: u32) -> Result<Vec<OrderRecord>, StoreError> {
        let next = self.next();
        let limit = limit.min(MAX_RANGE);
        self.parts
            .db
            .read(self.parts.range(self.format(), from, next, limit))
    }

    /// Appends records that start exactly at [`next`](Self::next) and are
    /// contiguous; records already held are skipped (they are identical by
    /// construction: only the catalog numbers orders). Flushes before it
    /// returns the new `next`. Refused at once after a storage failure.
    /// Once the tail segment holds [`Sizes::segment`] orders, a new one
    /// follows it.
    pub async fn append(&self, records: &[OrderRecord]) -> Result<u64, StoreError> {
        let guard = Arc::clone(&self.append).lock_owned().await;
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
        let new_next = u64::try_from(fresh.len())
            .ok()
            .and_then(|n| next.checked_add(n))
            .ok_or_else(|| StoreError::Corrupt {
                tree: "orders",
                message: format!("order numbers from {next} are exhausted"),
            })?;
        // A sender's gap or repeat is refused, never stored (`expected`
        // stays below `new_next`, so it does not overflow).
        for (r, expected) in fresh.iter().zip(next..) {
            if r.number != expected {
                return Err(StoreError::NotContiguous {
                    first: r.number,
                    next: expected,
                });
            }
        }
        let format = self.format();
        let tail = self.parts.tail();
        self.parts.db.write(|| {
            // One record (a batch of up to `PER_RECORD` orders, every batch
            // of a single trade) is one plain insert, atomic by itself. A
            // sled batch or transaction also writes a manifest in a log
            // buffer of its own, and its sync and the record's then write
            // the same page one after the other (a follower's flush took
            // 385-389 µs against 122-131 with one insert while syncs were
            // slow: docs/PERFORMANCE.md, "A replica's batch record in one
            // insert").
            if fresh.len() <= PER_RECORD {
                let (key, value) = Records::encode(format, &fresh);
                tail.batches.insert(key, value)?;
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for orders in fresh.chunks(PER_RECORD) {
                let (key, value) = Records::encode(format, orders);
                batch.insert(&key, value);
            }
            Ok(tail.batches.apply_batch(batch)?)
        })?;
        // Before `next` moves: a lookup that sees an order as durable finds
        // its key.
        let keys = fresh
            .iter()
            .map(|r| (fingerprint(r.key.as_bytes()), r.number));
        tail.index.batches.insert(keys);
        self.flush_of(&tail.db).await?;
        self.next.store(new_next, Ordering::Release);
        METRICS
            .highest
            .set(i64::try_from(new_next).unwrap_or(i64::MAX) - 1);
        if new_next - tail.first >= self.sizes.segment {
            drop(tail);
            self.roll(new_next, guard).await;
        }
        Ok(new_next)
    }

    /// Closes the full tail and starts the next one at `next`, on a thread
    /// of the blocking pool, holding the append lock (`guard`) until it is
    /// done, even when the append that called it is dropped meanwhile.
    ///
    /// Not `block_in_place`: that moves the runtime's one worker to another
    /// thread at every roll, spreading the worker's allocations over the
    /// pages of one more thread's heap (with this, in two pairs of steady
    /// trade runs, the leader's median RSS was 3-4 MiB lower and the
    /// replicas' highest 62-68 MiB against 66-73; docs/PERFORMANCE.md). The
    /// full tail is dropped there too (its last handle, unless a reader
    /// holds one).
    ///
    /// The orders are durable whatever happens here: a failure fails the
    /// store (later writes are refused), not the append.
    async fn roll(&self, next: u64, guard: tokio::sync::OwnedMutexGuard<()>) {
        let parts = Arc::clone(&self.parts);
        let rolled = tokio::task::spawn_blocking(move || {
            let rolled = parts.roll(next);
            drop(guard);
            rolled
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Engine(format!(
                "the tail's roll did not end: {e}"
            )))
        });
        if let Err(e) = rolled {
            tracing::error!(error = %e, next, "starting a new tail segment failed");
        }
    }

    /// The highest durable epoch.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        Ok(self.epoch.load(Ordering::Acquire))
    }

    /// Records a higher epoch durably.
    pub async fn set_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        let db = &self.parts.db;
        let value = db.format().encode_number(EPOCH_KEY, epoch);
        db.write(|| Ok(db.meta().insert(EPOCH_KEY, value)?))?;
        self.flush_of(db.engine()).await?;
        self.epoch.store(epoch, Ordering::Release);
        Ok(())
    }

    /// Makes every write so far durable, the tail's and the root's (at
    /// shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let tail = self.parts.tail();
        if !tail.root {
            self.flush_of(&tail.db).await?;
        }
        self.flush_of(self.parts.db.engine()).await
    }

    /// Flushes one of the log's databases, counting and timing it (a
    /// refused one, after a failure, is not a flush).
    async fn flush_of(&self, db: &sled::Db) -> Result<(), StoreError> {
        self.parts.db.health().check()?;
        METRICS.flush.time(self.parts.db.flush_also(db)).await
    }
}

/// Checks every order below `below`: the root's and each closed segment's
/// whole, then the tail's. Segments closed while it runs are checked too;
/// no handle on a tail is held while the segments are read (a closed
/// tail's directory opens once its last handle is gone).
fn verify_all(parts: &Parts, below: u64, writers: Writers) -> Result<(), StoreError> {
    let format = parts.db.format();
    let mut done = 0;
    {
        let tail = parts.tail();
        if !tail.root {
            done = parts.archive.start().unwrap_or(tail.first);
            verify(
                format,
                &parts.records,
                parts.keys.as_ref(),
                (0, done),
                Writers::None,
            )?;
        }
    }
    loop {
        for (first, end) in parts.archive.segments() {
            if first >= done {
                parts.archive.with_segment(first, |db| {
                    let (records, keys) = (Records::of(db)?, existing(db, "keys")?);
                    verify(format, &records, keys.as_ref(), (first, end), Writers::None)
                })?;
                done = end;
            }
        }
        let tail = parts.tail();
        if tail.first <= done {
            return verify(
                format,
                &tail.records,
                tail.keys.as_ref(),
                (tail.first, below),
                writers,
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use common::storage::{self, encode_key};
    use common::types::TradeKind;

    /// Order `n`, created by key `k{n}`.
    pub(super) fn rec(n: u64) -> OrderRecord {
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
            assert_eq!(log.format(), Format::Checksummed);
            assert_eq!(log.highest(), None);
            assert_eq!(log.append(&[rec(0), rec(1)]).await.unwrap(), 2);
            // Already-held records are skipped, new ones appended.
            assert_eq!(log.append(&[rec(1), rec(2)]).await.unwrap(), 3);
            assert!(matches!(
                log.append(&[rec(5)]).await,
                Err(StoreError::NotContiguous { first: 5, next: 3 })
            ));
            // More than one record's worth: a sled batch of three records
            // (the appends above were one plain insert each).
            let many: Vec<OrderRecord> = (3..3 + 2 * PER_RECORD as u64 + 5).map(rec).collect();
            assert_eq!(
                log.append(&many).await.unwrap(),
                3 + 2 * PER_RECORD as u64 + 5
            );
            log.set_epoch(7).await.unwrap();
        }
        // sled lets go of its lock a moment after the last handle is dropped.
        let log = storage::open_when_unlocked(|| OrderLog::open(dir.path())).unwrap();
        let last = 2 + 2 * PER_RECORD as u64 + 5;
        assert_eq!(log.highest(), Some(last));
        assert_eq!(log.by_key("k1").unwrap(), Some(1));
        assert_eq!(log.by_key(&format!("k{last}")).unwrap(), Some(last));
        assert_eq!(log.epoch().unwrap(), 7);
        assert_eq!(log.range(1, 3).unwrap(), vec![rec(1), rec(2), rec(3)]);
        let whole = log.range(0, 1000).unwrap();
        assert_eq!(whole, (0..=last).map(rec).collect::<Vec<_>>());
        assert_eq!(log.storage(), (StorageState::Ok, None));
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

    /// After a failed flush sled still holds the write in memory: no read
    /// shows it, and every later write is refused as unavailable.
    #[tokio::test]
    async fn after_a_failure_only_durable_orders_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let log = OrderLog::open(dir.path()).unwrap();
        log.append(&[rec(0), rec(1)]).await.unwrap();
        // A write the engine took but could not make durable.
        let format = log.format();
        let (key, value) = Records::encode(format, &[&rec(2)]);
        let tail = log.parts.tail();
        tail.batches.insert(key, value).unwrap();
        tail.index.batches.insert([(fingerprint(b"k2"), 2)]);
        let failed = log
            .health()
            .fail("IO error: No space left on device (os error 28)");
        assert!(failed.is_unavailable());
        assert_eq!(log.get(2).unwrap(), None);
        assert_eq!(log.by_key("k2").unwrap(), None);
        assert_eq!(log.range(0, 10).unwrap(), vec![rec(0), rec(1)]);
        assert_eq!(log.highest(), Some(1));
        let refused = log.append(&[rec(2)]).await.unwrap_err();
        assert!(refused.is_unavailable(), "{refused}");
        assert!(log.set_epoch(3).await.unwrap_err().is_unavailable());
        assert_eq!(log.epoch().unwrap(), 0);
        let (state, cause) = log.storage();
        assert_eq!(state, StorageState::Full);
        assert!(cause.unwrap().contains("No space left"));
    }

    /// Writes orders `numbers` as versions before batch records did: one
    /// record per order, and a key index entry for each.
    fn write_per_order(db: &sled::Db, numbers: std::ops::Range<u64>) {
        let format = Format::Checksummed;
        let (orders, keys) = (
            db.open_tree("orders").unwrap(),
            db.open_tree("keys").unwrap(),
        );
        for n in numbers {
            let key = encode_key(n);
            orders.insert(key, format.encode(&key, &rec(n))).unwrap();
            let index = format!("k{n}");
            keys.insert(&index, format.encode_number(index.as_bytes(), n))
                .unwrap();
        }
        db.flush().unwrap();
    }

    /// Damage found by the start-up check: a value that fails its checksum,
    /// a gap, and (in a log written before batch records) an index entry
    /// that is missing or names another order.
    #[tokio::test]
    async fn damaged_logs_refuse_to_open() {
        type Damage = fn(&sled::Db);
        fn flip(db: &sled::Db, tree: &str) {
            let tree = db.open_tree(tree).unwrap();
            let mut v = tree.get(encode_key(1)).unwrap().unwrap().to_vec();
            v[0] ^= 1;
            tree.insert(encode_key(1), v).unwrap();
        }
        let cases: [(&str, bool, Damage); 5] = [
            ("key 1 fails its checksum", false, |db| flip(db, "batches")),
            ("order 1 is missing", false, |db| {
                db.open_tree("batches")
                    .unwrap()
                    .remove(encode_key(1))
                    .unwrap();
            }),
            ("key 1 fails its checksum", true, |db| flip(db, "orders")),
            ("2 keys for 3 orders", true, |db| {
                db.open_tree("keys").unwrap().remove(b"k1").unwrap();
            }),
            ("does not match", true, |db| {
                let keys = db.open_tree("keys").unwrap();
                keys.insert(b"k1", Format::Checksummed.encode_number(b"k1", 2))
                    .unwrap();
            }),
        ];
        for (expected, per_order, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            {
                // One batch record per order, so that one can be damaged.
                let log = OrderLog::open(&path).unwrap();
                for n in (0..3).filter(|_| !per_order) {
                    log.append(&[rec(n)]).await.unwrap();
                }
            }
            {
                let db = open_when_unlocked(&path);
                if per_order {
                    write_per_order(&db, 0..3);
                }
                damage(&db);
                db.flush().unwrap();
            }
            let err = storage::open_when_unlocked(|| OrderLog::open(&path))
                .err()
                .unwrap();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    /// A long log is served once its newest orders are checked; damage
    /// further back (here in a closed segment) is found by the background
    /// check, which reports it (the service then exits naming
    /// `--rebuild`). Damage in the tail refuses to open: its batch records
    /// are read at open for their keys.
    #[tokio::test]
    async fn a_long_log_is_checked_in_the_background() {
        let small = Bounds { eager: 3, tail: 2 };
        let sizes = Sizes { segment: 2 };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = |on_damage: OnDamage| {
            OrderLog::open_with(&path, "order-1", Some(on_damage), small, sizes)
        };
        {
            let log = storage::open_when_unlocked(|| open(Box::new(|e| panic!("{e}")))).unwrap();
            for n in 0..7 {
                log.append(&[rec(n)]).await.unwrap();
            }
            assert_eq!(log.parts.archive.segments(), vec![(2, 4), (4, 6)]);
            assert_eq!(log.parts.tail().first, 6);
        }
        let segments = path.join("segments");
        let flip = |db: &Path, number: u64| {
            let db = open_when_unlocked(db);
            let orders = db.open_tree("batches").unwrap();
            let mut v = orders.get(encode_key(number)).unwrap().unwrap().to_vec();
            v[0] ^= 1;
            orders.insert(encode_key(number), v).unwrap();
            db.flush().unwrap();
        };
        let closed = segments.join(format!("{:020}-{:020}", 2, 4));
        flip(&closed, 3);
        let (tx, rx) = std::sync::mpsc::channel();
        let log = storage::open_when_unlocked(|| {
            let tx = tx.clone();
            open(Box::new(move |e| tx.send(e.to_string()).unwrap()))
        })
        .unwrap();
        let found = rx.recv().unwrap();
        assert!(found.contains("key 3 fails its checksum"), "{found}");
        assert_eq!(log.scan(), ScanState::Damaged);
        assert_eq!(log.get(5).unwrap(), Some(rec(5)));
        assert!(log.get(3).is_err(), "a damaged record is never served");
        drop(log);
        flip(&closed, 3);
        flip(&segments.join(format!("{:020}-tail", 6)), 6);
        let err = storage::open_when_unlocked(|| open(Box::new(|e| panic!("not reached: {e}"))))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("key 6 fails its checksum"),
            "{err}"
        );
    }

    const SEGMENTS_OF_TEN: Sizes = Sizes { segment: 10 };

    /// The log at `path`, in segments of ten orders.
    fn open_in_segments_of_ten(path: &Path) -> OrderLog {
        storage::open_when_unlocked(|| {
            OrderLog::open_with(path, "order-1", None, Bounds::SERVICE, SEGMENTS_OF_TEN)
        })
        .unwrap()
    }

    /// An append whose tail rolls, dropped while the roll runs (its caller
    /// hung up), holds the next append until the roll is done: the next
    /// orders go to the new tail, not into the segment being closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_append_dropped_during_its_roll_holds_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || open_in_segments_of_ten(&path);
        {
            let log = open();
            for base in (0..20).step_by(4) {
                let batch: Vec<_> = (base..base + 4).map(rec).collect();
                log.append(&batch).await.unwrap();
            }
            assert_eq!(log.parts.tail().first, 12);
            // 20..24 fills the tail 12..: polled until its orders are
            // durable (the roll starts in that same poll), then dropped.
            let batch: Vec<_> = (20..24).map(rec).collect();
            let mut append = Box::pin(log.append(&batch));
            std::future::poll_fn(|cx| match append.as_mut().poll(cx) {
                std::task::Poll::Pending if log.next() < 24 => std::task::Poll::Pending,
                _ => std::task::Poll::Ready(()),
            })
            .await;
            drop(append);
            log.append(&[rec(24), rec(25)]).await.unwrap();
            assert_eq!(log.parts.archive.segments(), vec![(12, 24)]);
            assert_eq!(log.parts.tail().first, 24);
            assert_eq!(log.get(25).unwrap(), Some(rec(25)));
        }
        let log = open();
        assert_eq!(
            log.range(0, 1000).unwrap(),
            (0..26).map(rec).collect::<Vec<_>>()
        );
    }

    /// The log continues in segments as it grows: the root holds the first
    /// orders, closed segments the next, the tail the newest. Reads, key
    /// lookups, reopening and the start-up check see every part; a stop
    /// that left no tail gets a new one.
    #[tokio::test]
    async fn the_log_continues_in_segments() {
        let sizes = SEGMENTS_OF_TEN;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || open_in_segments_of_ten(&path);
        {
            let log = open();
            for base in (0..47).step_by(4) {
                let batch: Vec<_> = (base..(base + 4).min(47)).map(rec).collect();
                log.append(&batch).await.unwrap();
            }
            assert_eq!(
                log.parts
                    .records
                    .range(Format::Checksummed, 0, 100, 100)
                    .unwrap(),
                (0..12).map(rec).collect::<Vec<_>>(),
                "the root holds 0..12"
            );
            assert_eq!(
                log.parts.records.batches.as_ref().unwrap().len(),
                3,
                "in a record per batch"
            );
            assert_eq!(
                log.parts.archive.segments(),
                vec![(12, 24), (24, 36), (36, 47)]
            );
            assert_eq!(log.parts.tail().first, 47);
            for n in [3, 30, 46] {
                assert_eq!(log.get(n).unwrap(), Some(rec(n)));
            }
            // Every part's keys pass its filter (the root's, the closed
            // segments', the tail's as they are appended).
            for n in 0..47 {
                assert_eq!(log.by_key(&format!("k{n}")).unwrap(), Some(n));
            }
            assert_eq!(log.by_key("k47").unwrap(), None);
            // Read and searched, and never written: no tree of per-order
            // records or keys was made in a closed segment (seen through
            // the handle the read just used, kept open).
            assert_eq!(log.by_key("k15").unwrap(), Some(15));
            let names = log
                .parts
                .archive
                .with_segment(12, |db| Ok(db.tree_names()))
                .unwrap();
            let names: Vec<_> = names.iter().map(|n| String::from_utf8_lossy(n)).collect();
            assert!(
                names.iter().all(|n| n != "orders" && n != "keys"),
                "{names:?}"
            );
            assert_eq!(
                log.range(0, 1000).unwrap(),
                (0..47).map(rec).collect::<Vec<_>>()
            );
            assert_eq!(
                log.range(10, 5).unwrap(),
                (10..15).map(rec).collect::<Vec<_>>()
            );
            log.append(&(47..50).map(rec).collect::<Vec<_>>())
                .await
                .unwrap();
            log.set_epoch(3).await.unwrap();
        }
        {
            let log = open();
            assert_eq!((log.next(), log.epoch().unwrap()), (50, 3));
            assert_eq!(
                log.range(0, 1000).unwrap(),
                (0..50).map(rec).collect::<Vec<_>>()
            );
            // The filters are rebuilt at open from what the parts hold.
            for n in 0..50 {
                assert_eq!(log.by_key(&format!("k{n}")).unwrap(), Some(n));
            }
            assert_eq!(log.by_key("k50").unwrap(), None);
            log.append(&(50..57).map(rec).collect::<Vec<_>>())
                .await
                .unwrap();
            assert_eq!(log.parts.tail().first, 57);
        }
        // A stop after the tail 47..57 was closed, before the next started.
        let tail = path.join("segments").join(format!("{:020}-tail", 57));
        std::fs::remove_dir_all(&tail).unwrap();
        {
            let log = open();
            assert!(tail.exists());
            assert_eq!(log.next(), 57);
            log.append(&[rec(57)]).await.unwrap();
            assert_eq!(
                log.range(0, 1000).unwrap(),
                (0..58).map(rec).collect::<Vec<_>>()
            );
        }
        // A closed segment that fails its check refuses to open.
        {
            let seg = path.join("segments").join(format!("{:020}-{:020}", 12, 24));
            let db = open_when_unlocked(&seg);
            let orders = db.open_tree("batches").unwrap();
            let mut v = orders.get(encode_key(15)).unwrap().unwrap().to_vec();
            v[0] ^= 1;
            orders.insert(encode_key(15), v).unwrap();
            db.flush().unwrap();
        }
        let err = storage::open_when_unlocked(|| {
            OrderLog::open_with(&path, "order-1", None, Bounds::SERVICE, sizes)
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("key 15 fails its checksum"),
            "{err}"
        );
    }

    /// A log written before batch records (one record per order, as an
    /// earlier version wrote it) goes on in batches: its root holds both,
    /// the segments after it batches alone, and reads, key lookups, the
    /// start-up check and reopening see one log.
    #[tokio::test]
    async fn a_log_of_per_order_records_goes_on_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_in_segments_of_ten(&path));
        write_per_order(&open_when_unlocked(&path), 0..15);
        {
            let log = open_in_segments_of_ten(&path);
            assert_eq!(log.next(), 15);
            for base in (15..40).step_by(5) {
                log.append(&(base..base + 5).map(rec).collect::<Vec<_>>())
                    .await
                    .unwrap();
            }
            assert_eq!(log.parts.records.orders.as_ref().unwrap().len(), 15);
            assert_eq!(
                log.parts.records.batches.as_ref().unwrap().len(),
                1,
                "15..20 went to the root"
            );
            assert_eq!(log.parts.archive.segments(), vec![(20, 30), (30, 40)]);
        }
        let log = open_in_segments_of_ten(&path);
        assert_eq!(
            log.range(0, 1000).unwrap(),
            (0..40).map(rec).collect::<Vec<_>>()
        );
        assert_eq!(
            log.range(13, 4).unwrap(),
            (13..17).map(rec).collect::<Vec<_>>()
        );
        for n in 0..40 {
            assert_eq!(log.get(n).unwrap(), Some(rec(n)));
            assert_eq!(log.by_key(&format!("k{n}")).unwrap(), Some(n));
        }
    }

    /// A closed segment an earlier version wrote (one record per order, a
    /// key index tree, and a file of fingerprints without numbers): its
    /// file is rebuilt at open from the segment's index tree, the earlier
    /// file removed, and its orders are read and found by key.
    #[tokio::test]
    async fn a_closed_segment_of_an_earlier_version_is_indexed_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_in_segments_of_ten(&path));
        write_per_order(&open_when_unlocked(&path), 0..5);
        let segments = path.join("segments");
        let name = format!("{:020}-{:020}", 5, 15);
        std::fs::create_dir_all(&segments).unwrap();
        write_per_order(&open_when_unlocked(&segments.join(&name)), 5..15);
        let earlier = segments.join(format!("{name}.fp64"));
        std::fs::write(&earlier, b"64-bit fingerprints, no numbers").unwrap();
        let log = open_in_segments_of_ten(&path);
        assert!(!earlier.exists(), "the earlier file is removed");
        assert!(segments.join(format!("{name}.fpn")).exists());
        assert_eq!((log.next(), log.parts.tail().first), (15, 15));
        log.append(&(15..20).map(rec).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(
            log.range(0, 1000).unwrap(),
            (0..20).map(rec).collect::<Vec<_>>()
        );
        for n in 0..20 {
            assert_eq!(log.by_key(&format!("k{n}")).unwrap(), Some(n), "k{n}");
        }
        assert_eq!(log.by_key("k20").unwrap(), None);
    }

    /// A log written before checksums (bare postcard values, no format
    /// marker) opens, reads and appends as before, without being rewritten.
    #[tokio::test]
    async fn a_legacy_log_is_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let orders = db.open_tree("orders").unwrap();
            let keys = db.open_tree("keys").unwrap();
            for n in 0..2 {
                orders
                    .insert(encode_key(n), postcard::to_stdvec(&rec(n)).unwrap())
                    .unwrap();
                keys.insert(format!("k{n}"), &encode_key(n)).unwrap();
            }
            db.open_tree("meta")
                .unwrap()
                .insert(EPOCH_KEY, &encode_key(4))
                .unwrap();
            db.flush().unwrap();
        }
        let log = storage::open_when_unlocked(|| OrderLog::open(dir.path())).unwrap();
        assert_eq!(log.format(), Format::Legacy);
        assert_eq!(log.epoch().unwrap(), 4);
        assert_eq!(log.by_key("k1").unwrap(), Some(1));
        assert_eq!(log.append(&[rec(2)]).await.unwrap(), 3);
        assert_eq!(log.range(0, 10).unwrap(), vec![rec(0), rec(1), rec(2)]);
        assert_eq!(
            log.parts
                .records
                .orders
                .as_ref()
                .unwrap()
                .get(encode_key(0))
                .unwrap()
                .unwrap()
                .len(),
            { postcard::to_stdvec(&rec(0)).unwrap().len() }
        );
    }

    /// The start-up check's cost at a million orders:
    /// `cargo test --release -p order --lib -- --ignored million`.
    /// The service checks the newest orders before serving and the rest in
    /// the background; `order dump` and tests check everything first.
    #[tokio::test]
    #[ignore = "a release-mode measurement; takes about a minute"]
    async fn start_up_check_of_a_million_orders() {
        const ORDERS: u64 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        {
            let log = OrderLog::open(dir.path()).unwrap();
            for base in (0..ORDERS).step_by(1000) {
                let page: Vec<OrderRecord> = (base..base + 1000)
                    .map(|n| OrderRecord {
                        key: format!("g:{n:032x}"),
                        ..rec(n)
                    })
                    .collect();
                log.append(&page).await.unwrap();
            }
        }
        for attempt in 1..=3 {
            let (log, opened, started) = loop {
                let started = std::time::Instant::now();
                match OrderLog::open_serving(dir.path(), "order-1", |e| panic!("{e}")) {
                    Ok(log) => break (log, started.elapsed(), started),
                    Err(StoreError::Open(common::storage::OpenError::Locked { .. })) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(log.next(), ORDERS);
            while log.scan() == ScanState::Running {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(log.scan(), ScanState::Passed);
            let background = started.elapsed();
            let eager = std::time::Instant::now();
            verify_all(&log.parts, ORDERS, Writers::None).unwrap();
            println!(
                "{ORDERS} orders, open #{attempt}: serving after {opened:?} (tail checked), \
                 every record checked in the background after {background:?}; \
                 the whole check before serving would take {:?}",
                eager.elapsed()
            );
        }
    }

    fn open_when_unlocked(path: &Path) -> sled::Db {
        storage::open_when_unlocked(|| Ok(storage::open_db(path, "a test")?))
            .expect("the database opens")
    }
}
