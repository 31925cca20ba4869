//! The order log and the catalog's applied orders in segments, end to end:
//! with segments of 50 orders (`BAZAAR_SEGMENT_ORDERS`), a few hundred
//! trades cross many of them. A follower and then the leader are killed
//! with kill -9 under load and restarted (catching up across segments); an
//! idempotency key used before the first segment closed still names its
//! order at the end; every guarantee holds on the dumps, which read every
//! segment.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use common::storage::archive::SEGMENT_ENV;
use common::types::TradeKind;
use support::*;

const SEGMENT: &str = "50";

/// Closed segments under a database directory.
fn closed_segments(db: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(db.join("segments")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            e.path().is_dir() && !name.ends_with("-tail") && !name.ends_with(".new")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_survive_kill_9_catch_up_and_old_keys() {
    let env = [
        Service::Catalog,
        Service::Order(1),
        Service::Order(2),
        Service::Order(3),
    ]
    .map(|s| (s, SEGMENT_ENV, SEGMENT));
    let mut t = TestCluster::start_with_env(ScratchOptions::default(), &env).await;
    t.wait_first_leader().await;
    // The trickle's trade 100 (key `trickle-100`: sell 1 AAPL) lands in
    // the first closed segment after the root's 50 orders.
    let trickle = Trickle::start(&t.base, Duration::from_millis(2));
    trickle.wait_acked(120, None, "trades before a kill").await;
    t.cluster.kill(Service::Order(1)).unwrap();
    trickle
        .wait_acked(240, None, "trades while order-1 is down")
        .await;
    t.cluster
        .start_and_wait(Service::Order(1))
        .await
        .expect("order-1 restarts and catches up across segments");
    trickle
        .wait_acked(360, None, "trades after order-1 is back")
        .await;
    let since = Instant::now();
    t.cluster.kill(Service::Order(3)).unwrap();
    t.wait_leader_moved_from(3, since, "kill -9 of the leader")
        .await;
    trickle
        .wait_acked(480, None, "trades under the new leader")
        .await;
    t.cluster
        .start_and_wait(Service::Order(3))
        .await
        .expect("order-3 restarts and catches up across segments");
    trickle
        .wait_acked(600, None, "trades after order-3 is back")
        .await;

    // Segments later, its key still names its order, found through the
    // fingerprints of a closed segment (a second order would show as a
    // duplicate in the checks below), and the order reads back from there.
    let (status, again) = t
        .trade_until_done("AAPL", TradeKind::Sell, 1, "trickle-100")
        .await;
    assert_eq!(status, 200, "{again}");
    let early = again["data"]["transaction_number"].as_u64().unwrap();
    assert!((50..400).contains(&early), "trickle-100 got order {early}");
    let (status, order) = t.get(&format!("/orders/{early}")).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["data"]["name"], "AAPL");
    assert_eq!(order["data"]["type"], "sell");

    let verified = stop_and_verify(&mut t, trickle, "after the kills").await;
    let highest = verified.highest.expect("orders were made");
    assert!(highest >= 600, "{highest}");
    // Every store holds most of its orders in closed segments (of at
    // least 50 orders: a batch or a catch-up page is never split).
    let config = &t.cluster.config;
    for o in &config.orders {
        let closed = closed_segments(&o.db_path);
        assert!(closed >= 5, "order-{}: {closed} closed segments", o.id);
    }
    let closed = closed_segments(&config.catalog.db_path);
    assert!(closed >= 5, "catalog: {closed} closed segments");
}
