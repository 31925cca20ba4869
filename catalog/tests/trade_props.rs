//! Property tests of the catalog's trade rules, first as the pure function
//! the store's transaction calls, then through the public store API on a
//! real sled directory:
//!
//! - the rules give the outcome, quantity and volume of a plain u128 model
//!   for any stock and trade, with the 404/409 codes and messages, and
//!   conserve shares over any sequence of trades;
//! - any sequence of batches gives the outcomes, quantities and volumes of
//!   the same model: no overflow, no negative quantity, numbers
//!   contiguous over the applied trades only;
//! - trades from concurrent tasks (each retrying on a sequence conflict as
//!   a leader would) are each applied at most once, and the applied log,
//!   replayed from the initial quantities, never goes below zero and ends
//!   at the catalog's quantities (buy + sell conservation);
//! - arbitrary bytes in the database files give errors, never a panic.
//!
//! The store properties need a temp directory per case; the rule
//! properties need none. Each property prints its figures
//! (`cargo test -p catalog --test trade_props -- --nocapture`).

use std::path::Path;
use std::sync::Arc;

use catalog::CatalogError;
use catalog::rules::{self, Holding, Rejection};
use catalog::store::Catalog;
use common::storage::{Format, StoreError};
use common::types::{
    ApplyBatch, ApplyConflict, OrderRecord, TradeCommand, TradeKind, TradeOutcome,
};
use proptest::prelude::*;

#[path = "../../common/tests/support/props.rs"]
mod props;
use props::check;

const STOCKS: [&str; 2] = ["AAPL", "MSFT"];
/// A name the catalog does not hold.
const UNKNOWN: &str = "NOPE";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A catalog in `dir` holding AAPL and MSFT with the given quantities.
async fn open_catalog(dir: &Path, initial: [u64; 2]) -> Arc<Catalog> {
    let csv = dir.join("stocks.csv");
    std::fs::write(
        &csv,
        format!(
            "name,price,quantity\n{},1.5,{}\n{},2.5,{}\n",
            STOCKS[0], initial[0], STOCKS[1], initial[1]
        ),
    )
    .expect("write stocks");
    let c = Catalog::open(&dir.join("db")).expect("open catalog");
    assert_eq!(c.load_initial(&csv).await.expect("load stocks"), 2);
    Arc::new(c)
}

/// Quantities near every edge: small, huge, arbitrary.
fn any_amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=200u64,
        (0..=1000u64).prop_map(|d| u64::MAX - d),
        any::<u64>(),
    ]
}

fn trade(stock: usize, buy: bool, quantity: u64, key: String) -> TradeCommand {
    TradeCommand {
        name: STOCKS.get(stock).copied().unwrap_or(UNKNOWN).to_string(),
        kind: if buy { TradeKind::Buy } else { TradeKind::Sell },
        quantity,
        key,
    }
}

/// The rules, stated with wide integers: quantity and volume stay in u64.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Model {
    quantity: [u64; 2],
    volume: [u64; 2],
}

impl Model {
    /// `None`: unknown stock; `Some(applied)` otherwise.
    fn apply(&mut self, t: &TradeCommand) -> Option<bool> {
        let i = STOCKS.iter().position(|s| *s == t.name)?;
        let q = u128::from(t.quantity);
        let new_quantity = match t.kind {
            TradeKind::Buy => u128::from(self.quantity[i]).checked_sub(q),
            TradeKind::Sell => Some(u128::from(self.quantity[i]) + q),
        };
        let new_volume = u128::from(self.volume[i]) + q;
        match (
            new_quantity.and_then(|n| u64::try_from(n).ok()),
            u64::try_from(new_volume).ok(),
        ) {
            (Some(quantity), Some(volume)) => {
                self.quantity[i] = quantity;
                self.volume[i] = volume;
                Some(true)
            }
            _ => Some(false),
        }
    }
}

/// What the catalog holds now, in the model's shape.
fn observed(c: &Catalog) -> Model {
    let mut m = Model {
        quantity: [0; 2],
        volume: [0; 2],
    };
    for (i, name) in STOCKS.iter().enumerate() {
        let row = c.get(name).expect("read").expect("stock exists");
        m.quantity[i] = row.quantity;
        m.volume[i] = row.volume;
    }
    m
}

/// One stock's figures near every edge.
fn any_holding() -> impl Strategy<Value = Holding> {
    (any_amount(), any_amount()).prop_map(|(quantity, volume)| Holding { quantity, volume })
}

#[test]
fn the_rules_match_the_wide_integer_model() {
    let strategy = (
        proptest::option::of(any_holding()),
        any::<bool>(),
        any_amount(),
    );
    check("rules-model", 2000, strategy, |(stock, buy, quantity)| {
        let t = trade(0, buy, quantity, "k".into());
        let got = rules::trade(stock, &t);
        let Some(h) = stock else {
            let rejection = got.expect_err("an unknown stock is refused");
            prop_assert_eq!(
                &rejection,
                &Rejection::UnknownStock {
                    name: STOCKS[0].into()
                }
            );
            prop_assert_eq!(
                TradeOutcome::from(rejection),
                TradeOutcome::Rejected {
                    code: 404,
                    message: format!("unknown stock {}", STOCKS[0]),
                }
            );
            return Ok(());
        };
        let mut model = Model {
            quantity: [h.quantity, 0],
            volume: [h.volume, 0],
        };
        match (model.apply(&t), got) {
            (Some(true), Ok(new)) => {
                prop_assert_eq!(new.quantity, model.quantity[0]);
                prop_assert_eq!(new.volume, model.volume[0]);
            }
            (Some(false), Err(rejection)) => {
                let message = if buy {
                    format!(
                        "not enough {} to buy: {} left, {quantity} asked",
                        STOCKS[0], h.quantity
                    )
                } else {
                    format!(
                        "selling {quantity} {} would overflow the quantity",
                        STOCKS[0]
                    )
                };
                prop_assert_eq!(
                    TradeOutcome::from(rejection),
                    TradeOutcome::Rejected { code: 409, message }
                );
            }
            (expected, got) => {
                prop_assert!(false, "{:?}: model {:?}, rules {:?}", t, expected, got)
            }
        }
        Ok(())
    });
}

#[test]
fn the_rules_conserve_shares_over_any_sequence() {
    let one = (any::<bool>(), prop_oneof![1..=50u64, any_amount()]);
    let strategy = (any_amount(), proptest::collection::vec(one, 0..40));
    check("rules-conservation", 500, strategy, |(initial, trades)| {
        let mut held = Holding {
            quantity: initial,
            volume: 0,
        };
        let (mut bought, mut sold) = (0u128, 0u128);
        for (i, &(buy, quantity)) in trades.iter().enumerate() {
            let t = trade(0, buy, quantity, format!("k{i}"));
            match rules::trade(Some(held), &t) {
                Ok(new) => {
                    prop_assert_eq!(
                        new.volume - held.volume,
                        quantity,
                        "volume grows by the trade"
                    );
                    if buy {
                        bought += u128::from(quantity);
                    } else {
                        sold += u128::from(quantity);
                    }
                    held = new;
                }
                // A buy is refused for lack of shares or a full volume,
                // a sell only when a figure would pass u64::MAX.
                Err(Rejection::NotEnough { left, asked, .. }) => {
                    prop_assert!(buy && left == held.quantity && asked == quantity);
                    let volume_full = held.volume.checked_add(quantity).is_none();
                    prop_assert!(asked > left || volume_full, "{:?} refused", t);
                }
                Err(Rejection::Overflow { asked, .. }) => {
                    prop_assert!(!buy && asked == quantity);
                    let fits = held
                        .quantity
                        .checked_add(quantity)
                        .zip(held.volume.checked_add(quantity));
                    prop_assert!(fits.is_none(), "{:?} refused", t);
                }
                Err(e) => prop_assert!(false, "{:?}: {:?}", t, e),
            }
        }
        prop_assert_eq!(
            u128::from(held.quantity),
            u128::from(initial) + sold - bought,
            "quantity = initial + sold - bought"
        );
        prop_assert_eq!(
            u128::from(held.volume),
            bought + sold,
            "volume = bought + sold"
        );
        Ok(())
    });
}

#[test]
fn sequential_batches_match_the_wide_integer_model() {
    let rt = runtime();
    let one = (0..3usize, any::<bool>(), any_amount());
    let batches = proptest::collection::vec(proptest::collection::vec(one, 1..8), 1..6);
    let strategy = ([any_amount(), any_amount()], batches);
    check("catalog-model", 120, strategy, |(initial, batches)| {
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let c = open_catalog(dir.path(), initial).await;
            let mut model = Model {
                quantity: initial,
                volume: [0; 2],
            };
            let mut applied: Vec<TradeCommand> = Vec::new();
            for (b, trades) in batches.iter().enumerate() {
                let trades: Vec<TradeCommand> = trades
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, buy, q))| trade(s, buy, q, format!("k{b}-{i}")))
                    .collect();
                let base = c.position().await.1;
                let batch = ApplyBatch {
                    leader_id: None,
                    epoch: 1,
                    base,
                    trades: trades.clone(),
                };
                let outcomes = c
                    .apply(&batch)
                    .await
                    .expect("no storage error, no conflict");
                prop_assert_eq!(outcomes.len(), trades.len());
                let mut next = base;
                for (t, o) in trades.iter().zip(&outcomes) {
                    match (model.apply(t), o) {
                        (Some(true), TradeOutcome::Applied { number }) => {
                            prop_assert_eq!(*number, next, "numbers follow the applied trades");
                            next += 1;
                            applied.push(t.clone());
                        }
                        (Some(false), TradeOutcome::Rejected { code: 409, .. }) => {}
                        (None, TradeOutcome::Rejected { code: 404, .. }) => {}
                        (expected, got) => {
                            prop_assert!(false, "{:?}: model {:?}, catalog {:?}", t, expected, got)
                        }
                    }
                }
                prop_assert_eq!(observed(&c), model);
            }
            let n = u64::try_from(applied.len()).expect("small");
            prop_assert_eq!(c.position().await, (1, n));
            let log = c.applied_range(0, 1000).expect("read applied");
            let expected: Vec<OrderRecord> = applied
                .iter()
                .zip(0..)
                .map(|(t, number)| OrderRecord {
                    number,
                    name: t.name.clone(),
                    kind: t.kind,
                    quantity: t.quantity,
                    key: t.key.clone(),
                })
                .collect();
            prop_assert_eq!(log, expected);
            Ok(())
        })
    });
}

/// Applies `t` as a leader would: at the catalog's next number, again after
/// a sequence conflict (another task took that number).
async fn apply_one(c: &Arc<Catalog>, t: TradeCommand) -> TradeOutcome {
    for _ in 0..10_000 {
        let base = c.position().await.1;
        let batch = ApplyBatch {
            leader_id: None,
            epoch: 1,
            base,
            trades: vec![t.clone()],
        };
        match c.apply(&batch).await {
            Ok(mut outcomes) => return outcomes.remove(0),
            Err(CatalogError::Conflict(ApplyConflict::Sequence { .. })) => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("unexpected conflict or storage error {e:?}"),
        }
    }
    panic!("trade {} never got a number", t.key);
}

#[test]
fn concurrent_trades_never_go_negative_and_conserve_quantity() {
    let rt = runtime();
    let one = (0..2usize, any::<bool>(), 1..=30u64);
    let tasks = proptest::collection::vec(proptest::collection::vec(one, 1..8), 2..5);
    let strategy = ([0..=60u64, 0..=60u64], tasks);
    check("catalog-concurrent", 60, strategy, |(initial, tasks)| {
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let c = Arc::new(open_catalog(dir.path(), initial).await);
            let mut handles = Vec::new();
            for (task, trades) in tasks.iter().enumerate() {
                let c = c.clone();
                let trades: Vec<TradeCommand> = trades
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, buy, q))| trade(s, buy, q, format!("t{task}-{i}")))
                    .collect();
                handles.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for t in trades {
                        let o = apply_one(&c, t.clone()).await;
                        out.push((t, o));
                    }
                    out
                }));
            }
            let mut results = Vec::new();
            for h in handles {
                results.extend(h.await.expect("task finished"));
            }
            let log = c.applied_range(0, 1000).expect("read applied");
            // Numbers 0..n, one per applied trade, each trade at most once.
            let applied: Vec<&TradeCommand> = results
                .iter()
                .filter(|(_, o)| matches!(o, TradeOutcome::Applied { .. }))
                .map(|(t, _)| t)
                .collect();
            prop_assert_eq!(log.len(), applied.len());
            for (i, r) in log.iter().enumerate() {
                prop_assert_eq!(r.number, u64::try_from(i).expect("small"));
            }
            let mut keys: Vec<&str> = log.iter().map(|r| r.key.as_str()).collect();
            keys.sort_unstable();
            let mut want: Vec<&str> = applied.iter().map(|t| t.key.as_str()).collect();
            want.sort_unstable();
            prop_assert_eq!(keys, want);
            // Small sells never overflow: only buys are refused, for lack of stock.
            for (t, o) in &results {
                if let TradeOutcome::Rejected { code, .. } = o {
                    prop_assert!(*code == 409 && t.kind == TradeKind::Buy, "{:?}: {:?}", t, o);
                }
            }
            // Replayed in number order, the log never needs a negative
            // quantity and ends where the catalog is.
            let mut model = Model {
                quantity: initial,
                volume: [0; 2],
            };
            for r in &log {
                let t = trade(
                    STOCKS.iter().position(|s| *s == r.name).expect("known"),
                    r.kind == TradeKind::Buy,
                    r.quantity,
                    r.key.clone(),
                );
                prop_assert_eq!(model.apply(&t), Some(true), "order {} overdraws", r.number);
            }
            prop_assert_eq!(observed(&c), model);
            for i in 0..2 {
                let delta: i128 = log
                    .iter()
                    .filter(|r| r.name == STOCKS[i])
                    .map(|r| match r.kind {
                        TradeKind::Buy => -i128::from(r.quantity),
                        TradeKind::Sell => i128::from(r.quantity),
                    })
                    .sum();
                prop_assert_eq!(
                    i128::from(model.quantity[i]),
                    i128::from(initial[i]) + delta
                );
            }
            Ok(())
        })
    });
}

/// Bytes for a sled value: arbitrary, or a well-formed encoding of `T`.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        // The stored stock value is (price, quantity, volume) in postcard.
        (any::<f64>(), any::<u64>(), any::<u64>())
            .prop_map(|v| postcard::to_stdvec(&v).expect("encodes")),
        (any::<u64>(), "[A-Z]{1,4}", any::<u64>()).prop_map(|(number, name, quantity)| {
            postcard::to_stdvec(&OrderRecord {
                number,
                name,
                kind: TradeKind::Buy,
                quantity,
                key: "k".into(),
            })
            .expect("encodes")
        }),
    ]
}

/// Keys of the `applied` tree: big-endian numbers or bytes of the wrong
/// length. The last two numbers of the range are left to
/// [`highest_possible_order_numbers_are_errors_not_panics`].
fn applied_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..10u64).prop_map(|n| n.to_be_bytes().to_vec()),
        any::<u64>().prop_map(|n| n.to_be_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

#[derive(Debug, Clone)]
struct Garbage {
    stocks: Vec<(String, Vec<u8>)>,
    applied: Vec<(Vec<u8>, Vec<u8>)>,
    epoch: Option<Vec<u8>>,
}

#[test]
fn corrupt_database_files_give_errors_not_panics() {
    let rt = runtime();
    let garbage = (
        proptest::collection::vec(("[A-Z]{1,4}", value_bytes()), 0..4),
        proptest::collection::vec((applied_key(), value_bytes()), 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
    )
        .prop_map(|(stocks, applied, epoch)| Garbage {
            stocks,
            applied,
            epoch,
        });
    check("catalog-corrupt-db", 100, garbage, |g| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let db = sled::open(&path).expect("sled");
            let stocks = db.open_tree("stocks").expect("tree");
            for (k, v) in &g.stocks {
                stocks.insert(k.as_bytes(), v.as_slice()).expect("insert");
            }
            let applied = db.open_tree("applied").expect("tree");
            for (k, v) in &g.applied {
                applied.insert(k.as_slice(), v.as_slice()).expect("insert");
            }
            if let Some(e) = &g.epoch {
                db.open_tree("meta")
                    .expect("tree")
                    .insert("epoch", e.as_slice())
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        rt.block_on(async {
            // Open may refuse the files; whatever it accepts must be
            // readable without a panic, and a trade on it fails cleanly.
            let Ok(c) = Catalog::open(&path).map(Arc::new) else {
                return;
            };
            for (name, _) in &g.stocks {
                let _ = c.get(name);
            }
            let _ = c.dump();
            let _ = c.applied_range(0, 100);
            let (epoch, next) = c.position().await;
            let batch = ApplyBatch {
                leader_id: None,
                epoch,
                base: next,
                trades: g
                    .stocks
                    .iter()
                    .map(|(name, _)| TradeCommand {
                        name: name.clone(),
                        kind: TradeKind::Buy,
                        quantity: 1,
                        key: format!("g-{name}"),
                    })
                    .collect(),
            };
            let _ = c.apply(&batch).await;
        });
        Ok(())
    });
}

/// An `applied` tree whose last key is `u64::MAX - 1` or `u64::MAX` (only a
/// corrupt or forged database holds one) must give an error, not an
/// overflow panic: `Catalog::open` adds 1 to the last key (and `apply` adds
/// 1 to each number it hands out). The forged record carries a valid
/// checksum, so what refuses it is the numbering: `u64::MAX` leaves no next
/// number, and below it the orders before it are missing (the start-up
/// check reads every applied order from 0).
#[test]
fn highest_possible_order_numbers_are_errors_not_panics() {
    let rt = runtime();
    for last in [u64::MAX - 1, u64::MAX] {
        let dir = tempfile::tempdir().expect("temp dir");
        rt.block_on(async {
            drop(open_catalog(dir.path(), [10, 10]).await);
        });
        let path = dir.path().join("db");
        {
            let db = open_when_unlocked(&path);
            let record = OrderRecord {
                number: last,
                name: STOCKS[0].into(),
                kind: TradeKind::Buy,
                quantity: 1,
                key: "forged".into(),
            };
            let key = last.to_be_bytes();
            db.open_tree("applied")
                .expect("tree")
                .insert(key, Format::Checksummed.encode(&key, &record))
                .expect("insert");
            db.flush().expect("flush");
        }
        let err = reopen(&path)
            .err()
            .expect("a forged last number is refused");
        if last == u64::MAX {
            assert!(err.to_string().contains("u64::MAX"), "{err}");
        } else {
            assert!(err.to_string().contains("order 0 is missing"), "{err}");
        }
    }
}

/// `Catalog::open` once the lock of a just-dropped handle is released.
fn reopen(path: &Path) -> Result<Arc<Catalog>, StoreError> {
    common::storage::open_when_unlocked(|| Catalog::open(path)).map(Arc::new)
}

/// Opens the sled directory a just-dropped catalog used, once its lock is
/// released.
fn open_when_unlocked(path: &Path) -> sled::Db {
    common::storage::open_when_unlocked(|| Ok(common::storage::open_db(path, "a test")?))
        .expect("the database opens")
}
