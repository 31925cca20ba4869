//! A catalog written before batch records, read and written on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::storage::archive::{Archive, Closing, Sizes};
use common::storage::{Bounds, Format, encode_key};
use common::types::{ApplyBatch, OrderRecord, TradeCommand, TradeKind};
use sled::IVec;

use crate::store::Catalog;

fn old(n: u64) -> Result<(IVec, IVec), common::storage::StoreError> {
    let key = encode_key(n);
    let record = OrderRecord {
        number: n,
        name: "AAPL".into(),
        kind: TradeKind::Sell,
        quantity: 1,
        key: format!("old-{n}"),
    };
    let value = Format::Checksummed.encode(&key, &record);
    Ok((IVec::from(&key), IVec::from(value)))
}

/// Orders 0..12 in a closed segment of one record per order and 12..15 in
/// the tree `applied-12`, as a catalog wrote them before batch records:
/// they read as one sequence with the batch records written after them,
/// which go to a tree of their own; both kinds move into segments and read
/// back the same after a restart.
#[tokio::test]
async fn records_of_one_order_each_read_on_with_batch_records() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("s.csv");
    std::fs::write(&csv, "name,price,quantity\nAAPL,15.99,100\n").unwrap();
    let path = dir.path().join("db");
    {
        let c = Catalog::open(&path).unwrap();
        c.load_initial(&csv).await.unwrap();
        let db = c.db.engine();
        db.drop_tree(format!("applied-batches-{:020}", 0)).unwrap();
        let archive = Archive::open(&path, "applied", None).unwrap();
        archive
            .close(Closing {
                first: 0,
                end: 12,
                trees: vec![("applied", Box::new((0..12).map(old)))],
            })
            .unwrap();
        let tree = db.open_tree(format!("applied-{:020}", 12)).unwrap();
        for n in 12..15 {
            let (k, v) = old(n).unwrap();
            tree.insert(k, v).unwrap();
        }
        db.flush().unwrap();
    }
    let open = || {
        Arc::new(
            common::storage::open_when_unlocked(|| {
                Catalog::open_with(&path, None, Bounds::SERVICE, Sizes { segment: 10 })
            })
            .unwrap(),
        )
    };
    let numbers = |c: &Catalog, from: u64, limit: u32| -> Vec<u64> {
        let records = c.applied_range(from, limit).unwrap();
        records.iter().map(|r| r.number).collect()
    };
    {
        let c = open();
        assert_eq!(numbers(&c, 0, 100), (0..15).collect::<Vec<_>>());
        assert_eq!(c.applied_range(14, 1).unwrap()[0].key, "old-14");
        for base in (15..31).step_by(4) {
            let batch = ApplyBatch {
                leader_id: None,
                epoch: 1,
                base,
                trades: (0..4)
                    .map(|i| TradeCommand {
                        name: "AAPL".into(),
                        kind: TradeKind::Buy,
                        quantity: 1,
                        key: format!("new-{}", base + i),
                    })
                    .collect(),
            };
            c.apply(&batch).await.unwrap();
            common::wait::wait_until_blocking(
                "full trees to move to segments",
                std::time::Duration::from_secs(10),
                || !c.applied.closing_flag().load(Ordering::Acquire),
            );
        }
        // The tree of one record per order and the first of batch records
        // were closed; the last one takes the appends.
        assert_eq!(
            c.applied.archive.segments(),
            vec![(0, 12), (12, 15), (15, 27)]
        );
        assert_eq!(numbers(&c, 0, 100), (0..31).collect::<Vec<_>>());
        c.applied.verify(c.format(), 0, 31).unwrap();
    }
    let c = open();
    assert_eq!(numbers(&c, 0, 100), (0..31).collect::<Vec<_>>());
    // Pages that start and end inside batch records, across segments.
    assert_eq!(numbers(&c, 13, 4), vec![13, 14, 15, 16]);
    assert_eq!(numbers(&c, 26, 3), vec![26, 27, 28]);
    let page = c.applied_range(16, 2).unwrap();
    assert_eq!(page[0].key, "new-16");
    assert_eq!(c.position().await.1, 31);
    c.applied.verify(c.format(), 0, 31).unwrap();
    assert_eq!(c.get("AAPL").unwrap().unwrap().quantity, 84);
}
