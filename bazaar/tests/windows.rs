//! Each failure window of the exactly-once design, opened exactly: the
//! leader is made to crash (abort, like `kill -9`) or freeze (SIGSTOP) at a
//! fault point of the commit path (`BAZAAR_FAULT`, see `common::fault`),
//! or a replica is made to lag by freezing its peers. Every test then
//! retries through the front-end with the same Idempotency-Key and checks
//! that exactly one order exists, that every replica agrees, and that the
//! catalog matches the log.

mod support;

use std::time::Duration;

use bazaar::cluster::{ScratchOptions, Service};
use common::fault::{AFTER_CATALOG_APPLY, AFTER_LOCAL_APPEND, BEFORE_ACK, FAULT_ENV};
use common::types::{Order, TradeKind};
use common::wait::wait_until;
use support::*;

const LEADER: Service = Service::Order(3);

async fn number_of(t: &TestCluster, name: &str, kind: TradeKind, qty: u64, key: &str) -> u64 {
    let (status, body) = t.trade_until_done(name, kind, qty, key).await;
    assert_eq!(status, 200, "trade {key}: {body}");
    body["data"]["transaction_number"]
        .as_u64()
        .expect("a transaction number")
}

/// Heals the cluster, waits until every replica holds `last`, and checks
/// identical logs equal to `expected` and the catalog's conservation.
async fn assert_converged(t: &mut TestCluster, expected: &[Order]) {
    for s in t.cluster.services() {
        if !t.cluster.is_running(s) {
            t.cluster.set_env(s, FAULT_ENV, None);
            t.cluster.start_and_wait(s).await.unwrap();
        }
    }
    t.wait_replicas_at(expected.last().map(|o| o.number)).await;
    let logs: Vec<Vec<Order>> = (1..=3)
        .map(|id| t.cluster.dump_orders(id).unwrap())
        .collect();
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log, expected, "order-{} differs", i + 1);
    }
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &logs[0], 100);
}

fn order(number: u64, name: &str, kind: TradeKind, quantity: u64) -> Order {
    Order {
        number,
        name: name.into(),
        kind,
        quantity,
    }
}

/// The leader crashes at `point` while committing the first trade; the
/// retry with the same key must get number 0 from the new leader, and the
/// log must hold that trade once.
async fn crash_at(point: &str) {
    let fault = format!("{point}:abort");
    let mut t =
        TestCluster::start_with_env(ScratchOptions::default(), &[(LEADER, FAULT_ENV, &fault)])
            .await;
    let n = number_of(&t, "AAPL", TradeKind::Buy, 3, "window-1").await;
    assert_eq!(n, 0);
    assert!(!t.cluster.is_running(LEADER), "the fault point was reached");
    // The same key again, now on the new leader: the same number.
    assert_eq!(
        number_of(&t, "AAPL", TradeKind::Buy, 3, "window-1").await,
        0
    );
    let next = number_of(&t, "MSFT", TradeKind::Sell, 2, "window-2").await;
    assert_eq!(next, 1, "numbering continues after the reconciled order");
    assert_eq!(t.quantity("AAPL").await, 97, "applied once");
    assert_converged(
        &mut t,
        &[
            order(0, "AAPL", TradeKind::Buy, 3),
            order(1, "MSFT", TradeKind::Sell, 2),
        ],
    )
    .await;
}

/// Window 4: the catalog applied the trade, the leader died before storing
/// the order. The new leader reconciles with the catalog's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_after_the_catalog_applied() {
    crash_at(AFTER_CATALOG_APPLY).await;
}

/// Window 1: the leader stored the order, died before any follower had it
/// and before it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_before_propagating() {
    crash_at(AFTER_LOCAL_APPEND).await;
}

/// Window 5: every replica holds the order, but the answer was lost; the
/// client's retry must not create a second order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dies_before_answering() {
    crash_at(BEFORE_ACK).await;
}

/// Window 3: the leader freezes mid-commit, a new leader is selected with a
/// higher epoch, and the old one wakes up and finishes its commit. Its
/// stale epoch is refused; it steps down and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_wakes_up_into_a_newer_epoch() {
    let fault = format!("{AFTER_CATALOG_APPLY}:stop");
    let mut t =
        TestCluster::start_with_env(ScratchOptions::default(), &[(LEADER, FAULT_ENV, &fault)])
            .await;
    // The forward to the frozen leader times out; the front-end selects
    // order-2, which reconciles the applied trade as number 0.
    assert_eq!(number_of(&t, "GOOG", TradeKind::Buy, 4, "p-0").await, 0);
    assert_eq!(number_of(&t, "GOOG", TradeKind::Sell, 1, "p-1").await, 1);
    let leader = t
        .cluster
        .health(Service::Frontend(1))
        .await
        .and_then(|h| h.id);
    assert_eq!(leader, Some(2));
    // Wake the old leader: it appends order 0 and propagates it with its
    // old epoch, which the followers refuse.
    t.cluster.resume(LEADER).unwrap();
    wait_until(
        "the old leader to step down",
        Duration::from_secs(20),
        || async {
            t.cluster
                .health(LEADER)
                .await
                .is_some_and(|h| h.role == "follower" && h.epoch >= 2)
        },
    )
    .await;
    assert_eq!(number_of(&t, "GOOG", TradeKind::Buy, 2, "p-2").await, 2);
    assert_eq!(t.quantity("GOOG").await, 100 - 4 + 1 - 2);
    assert_converged(
        &mut t,
        &[
            order(0, "GOOG", TradeKind::Buy, 4),
            order(1, "GOOG", TradeKind::Sell, 1),
            order(2, "GOOG", TradeKind::Buy, 2),
        ],
    )
    .await;
}

/// Window 2: the highest-id replica comes back while its peers are frozen,
/// so it starts with an empty log, and is then the only candidate for
/// leader. It must not reuse numbers 0..5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_made_leader_does_not_reuse_numbers() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    t.cluster.kill(LEADER).unwrap();
    let mut expected = Vec::new();
    for i in 0..5u64 {
        let n = number_of(&t, "NVDA", TradeKind::Sell, 1, &format!("l-{i}")).await;
        assert_eq!(n, i);
        expected.push(order(i, "NVDA", TradeKind::Sell, 1));
    }
    t.cluster.pause(Service::Order(1)).unwrap();
    t.cluster.pause(Service::Order(2)).unwrap();
    t.cluster.start_and_wait(LEADER).await.unwrap();
    // Order-2 dies for good while frozen; order-1 wakes up behind order-3.
    t.cluster.kill(Service::Order(2)).unwrap();
    t.cluster.resume(Service::Order(1)).unwrap();
    let n = number_of(&t, "NVDA", TradeKind::Buy, 2, "l-5").await;
    assert_eq!(n, 5, "the new leader caught up before numbering");
    expected.push(order(5, "NVDA", TradeKind::Buy, 2));
    let leader = t
        .cluster
        .health(Service::Frontend(1))
        .await
        .and_then(|h| h.id);
    assert_eq!(leader, Some(3));
    assert_converged(&mut t, &expected).await;
}

/// Window 6: a replica whose sled directory no longer opens refuses to
/// start with a hint, and `--rebuild` moves the directory aside (keeping
/// it) and rebuilds the replica from its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_replica_is_rebuilt_from_its_peers() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    let mut expected = Vec::new();
    for i in 0..4u64 {
        assert_eq!(
            number_of(&t, "AMZN", TradeKind::Buy, 1, &format!("r-{i}")).await,
            i
        );
        expected.push(order(i, "AMZN", TradeKind::Buy, 1));
    }
    t.wait_replicas_at(Some(3)).await;
    let broken = Service::Order(1);
    t.cluster.stop(broken).await.unwrap();
    let db = t.cluster.config.order(1).unwrap().db_path.clone();
    std::fs::write(db.join("conf"), b"not a sled config").unwrap();

    t.cluster.start(broken).unwrap();
    let err = t
        .cluster
        .wait_healthy(broken, Duration::from_secs(20))
        .await
        .expect_err("a replica with a broken database must not start");
    assert!(err.to_string().contains("exited"), "{err:#}");
    let log = std::fs::read_to_string(t.cluster.log_path(broken)).unwrap();
    assert!(
        log.contains("--rebuild"),
        "the error names the way out: {log}"
    );

    t.cluster.set_args(broken, &["--rebuild"]);
    t.cluster.start_and_wait(broken).await.unwrap();
    t.cluster.set_args(broken, &[]);
    let kept = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("order-1.moved-")
        });
    assert!(kept, "the broken directory is kept aside");
    assert_converged(&mut t, &expected).await;
}
