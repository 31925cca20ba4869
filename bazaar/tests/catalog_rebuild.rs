//! Finding 5 for the catalog, which has no peer: a catalog whose sled file
//! is damaged while it is stopped refuses to start, naming `--rebuild`, and
//! `catalog --rebuild` rebuilds it from the stocks file and the order log of
//! the running replicas: the same stocks, quantities and volumes as before
//! the damage, the old directory kept aside, and trades go on numbering
//! where they stopped.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use bazaar::cluster::{ScratchOptions, Service};
use common::types::TradeKind;
use support::*;

async fn number_of(t: &TestCluster, name: &str, kind: TradeKind, qty: u64, key: &str) -> u64 {
    let (status, body) = t.trade_until_done(name, kind, qty, key).await;
    assert_eq!(status, 200, "trade {key}: {body}");
    body["data"]["transaction_number"]
        .as_u64()
        .expect("a transaction number")
}

/// Overwrites `len` bytes in the middle of the file's written part with a
/// pattern no sled record holds, as a bad sector or a stray write would.
fn damage_middle(file: &Path, len: u64) -> u64 {
    let size = std::fs::metadata(file).expect("db file").len();
    assert!(size > len, "{} is only {size} bytes", file.display());
    let at = (size - len) / 2;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open db file");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ 0xa5).collect();
    f.write_all(&pattern).expect("overwrite");
    f.sync_all().expect("sync");
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_catalog_refuses_to_start_and_is_rebuilt_from_the_log() {
    let mut t = TestCluster::start(ScratchOptions {
        token: Some("catalog-rebuild-test-token".into()),
        ..ScratchOptions::default()
    })
    .await;
    let trades = [
        ("AAPL", TradeKind::Buy, 3),
        ("MSFT", TradeKind::Sell, 2),
        ("AAPL", TradeKind::Sell, 1),
        ("AMZN", TradeKind::Buy, 2),
    ];
    let mut n = 0u64;
    for round in 0..40u64 {
        for (name, kind, qty) in trades {
            let got = number_of(&t, name, kind, qty, &format!("rb-{n}")).await;
            assert_eq!(got, n, "round {round}");
            n += 1;
        }
    }
    t.wait_replicas_at(Some(n - 1)).await;
    let before = t
        .cluster
        .dump_catalog()
        .expect("dump of the running catalog");

    t.cluster.stop(Service::Catalog).await.unwrap();
    let db = t.cluster.config.catalog.db_path.clone();
    let at = damage_middle(&db.join("db"), 4096);

    // The damage is found before anything is served: `dump` reads the
    // files of the stopped catalog, and a start refuses, both naming the
    // way out.
    let dumped = t.cluster.dump_catalog();
    let err = dumped.expect_err("a damaged catalog must not dump as if whole");
    eprintln!("dump after damage at byte {at}: {err:#}");
    assert!(
        err.to_string().contains("--rebuild"),
        "damage at byte {at}: {err:#}"
    );
    t.cluster.start(Service::Catalog).unwrap();
    let refused = t
        .cluster
        .wait_healthy(Service::Catalog, Duration::from_secs(20))
        .await
        .expect_err("a damaged catalog must not start");
    assert!(refused.to_string().contains("exited"), "{refused:#}");
    let log = std::fs::read_to_string(t.cluster.log_path(Service::Catalog)).unwrap();
    assert!(
        log.contains("--rebuild"),
        "the error names the way out: {log}"
    );

    let started = std::time::Instant::now();
    t.cluster.set_args(Service::Catalog, &["--rebuild"]);
    t.cluster.start_and_wait(Service::Catalog).await.unwrap();
    t.cluster.set_args(Service::Catalog, &[]);
    let took = started.elapsed();
    let log = std::fs::read_to_string(t.cluster.log_path(Service::Catalog)).unwrap();
    assert!(
        log.contains("rebuilt the catalog from the stocks file")
            && log.contains(&format!("({n} orders replayed")),
        "one line says what the rebuild did: {log}"
    );
    let kept = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".moved-"));
    assert!(kept, "the damaged directory is kept aside");

    let after = t
        .cluster
        .dump_catalog()
        .expect("dump of the rebuilt catalog");
    assert_eq!(
        after, before,
        "the rebuilt catalog is the one before the damage"
    );
    // Trades go on from the next number, on the rebuilt catalog.
    assert_eq!(
        number_of(&t, "MSFT", TradeKind::Buy, 1, "after-rebuild").await,
        n
    );
    let orders = t.cluster.dump_orders(1).unwrap();
    assert_contiguous(&orders);
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &orders, 100);
    eprintln!("catalog rebuilt from {n} orders in {took:?} (start to healthy)");
}
