//! Gray failures on the real binaries (issue 14): faults where a process
//! keeps running but cannot do its job, or a client does something unusual.
//!
//! - Finding 1: the leader's link to the catalog is cut (a black-holing
//!   [`FaultProxy`] on that one link) under a steady trickle of trades: the
//!   leader reports itself not ready, the front-end moves the leadership
//!   within 5 s and does not move it back while the cut lasts, nothing
//!   acknowledged is lost, and after healing the old leader is ready again
//!   and identical to the others.
//! - Finding 6: an Idempotency-Key reused for a different trade is refused
//!   with 422 and changes nothing, also across a fail-over.
//! - Finding 7: a client that writes a whole oversized body before reading
//!   receives the 413, from the front-end and from internal services.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use bazaar::proxy::{FaultProxy, LinkMode};
use common::types::TradeKind;
use common::wait::poll;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bound: trades succeed again within this long of a fault.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// How long the test watches that the leadership stays away from the cut
/// replica: many health-check intervals (100 ms in a scratch cluster).
const STAY_AWAY_FOR: Duration = Duration::from_secs(2);

fn catalog_addr(t: &TestCluster) -> SocketAddr {
    let c = &t.cluster.config.catalog;
    format!("{}:{}", c.host, c.port)
        .parse()
        .expect("the scratch catalog listens on an IP address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_from_the_catalog_steps_aside_and_heals() {
    let mut t = TestCluster::prepare(ScratchOptions::default());
    let proxy = FaultProxy::start(catalog_addr(&t))
        .await
        .expect("fault proxy");
    let port = proxy.port().to_string();
    // Only order-3's link to the catalog goes through the proxy.
    t.cluster
        .set_env(Service::Order(3), "BAZAAR_CATALOG__PORT", Some(&port));
    t.launch().await;
    t.wait_first_leader().await;
    assert!(
        proxy.accepted() > 0,
        "order-3 reaches the catalog through the proxy"
    );

    let trickle = Trickle::start(&t.base, Duration::from_millis(50));
    trickle.wait_acked(20, None, " before the cut").await;

    let cut = Instant::now();
    proxy.set(LinkMode::Blackhole);
    let recovered = trickle.wait_recovered(cut, "the cut").await;
    eprintln!("leader cut from the catalog: trades succeed again {recovered:?} after the cut");
    assert!(
        recovered <= RECOVERY_BOUND,
        "trades succeeded again only {recovered:?} after the cut (bound {RECOVERY_BOUND:?})"
    );

    t.wait_leader_moved_from(3, cut, "the cut").await;
    let h = t
        .cluster
        .health(Service::Order(3))
        .await
        .expect("order-3 still answers /health");
    assert!(
        !h.ready,
        "order-3 cannot reach the catalog yet says ready: {h:?}"
    );
    let reason = h.reason.clone().unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "order-3 is not ready without a reason: {h:?}"
    );
    eprintln!("order-3 /health: ready false, reason {reason:?}");

    // The leadership stays away while the cut lasts: check every 100 ms
    // (a health-check interval) for many intervals.
    t.watch_leader(STAY_AWAY_FOR, async |leader| {
        assert!(
            leader.is_some_and(|id| id != 3),
            "the leadership came back to order-3 (or was lost: {leader:?}) during the cut"
        );
        let h = t.cluster.health(Service::Order(3)).await;
        assert!(
            h.as_ref().is_some_and(|h| !h.ready),
            "order-3 says ready during the cut: {h:?}"
        );
    })
    .await;
    // The front-end's /status shows the same.
    let (status, body) = t.get("/status").await;
    assert_eq!(status, 200, "{body}");
    let order3 = body["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "order-3"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        order3["health"]["ready"], false,
        "/status of order-3: {order3}"
    );
    assert!(
        order3["health"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "/status of order-3 names no reason: {order3}"
    );
    let during = trickle.successes_since(cut + recovered);
    assert!(during > 0, "trades keep succeeding during the cut");

    let heal = Instant::now();
    proxy.set(LinkMode::Pass);
    wait_health(
        &t,
        Service::Order(3),
        "ready after healing",
        Duration::from_secs(15),
        |h| h.ready,
    )
    .await;
    eprintln!("order-3 ready again {:?} after healing", heal.elapsed());
    let healed = Instant::now();
    trickle.wait_acked(10, Some(healed), " after healing").await;

    assert_longest_gap(
        &trickle,
        cut,
        RECOVERY_BOUND,
        "leader cut from the catalog, from the cut to after healing",
    );
    let Verified {
        outcome,
        highest,
        verdict,
    } = stop_and_verify(&mut t, trickle, "after healing").await;
    eprintln!("replicas converged at {highest:?}");
    assert!(verdict.orders_in_log >= outcome.acked.len() as u64);
}

/// Finding 6: a key bound to one trade refuses every other trade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_with_another_trade_is_refused() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 1, Some("key-6")).await;
    assert_eq!(status, 200, "{body}");
    let number = body["data"]["transaction_number"].as_u64().expect("number");
    let before = (t.quantity("AAPL").await, t.quantity("TSLA").await);

    let refused = async |t: &TestCluster, name: &str, kind: TradeKind, q: u64| {
        let (status, body) = t.trade_until_done(name, kind, q, "key-6").await;
        assert_error(status, &body, 422);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("key-6"),
            "the 422 does not name the key: {body}"
        );
        eprintln!("{} {} {q} under key-6: {message}", kind.as_str(), name);
    };
    let unchanged = async |t: &TestCluster| {
        assert_eq!(
            (t.quantity("AAPL").await, t.quantity("TSLA").await),
            before,
            "a refused trade changed the catalog"
        );
        let (status, body) = t.get(&format!("/orders/{}", number + 1)).await;
        assert_error(status, &body, 404);
    };
    // Another name and type, another type, another quantity.
    refused(&t, "TSLA", TradeKind::Sell, 100).await;
    refused(&t, "AAPL", TradeKind::Sell, 1).await;
    refused(&t, "AAPL", TradeKind::Buy, 2).await;
    unchanged(&t).await;
    t.wait_replicas_at(Some(number)).await;
    // The original trade under its key still gets its number.
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 1, Some("key-6")).await;
    assert_eq!(
        (status, body["data"]["transaction_number"].as_u64()),
        (200, Some(number)),
        "{body}"
    );

    // Two different trades under one new key at once: one wins, the other
    // is refused, and only the winner changed the catalog.
    let before_race = (t.quantity("AAPL").await, t.quantity("TSLA").await);
    let (a, b) = tokio::join!(
        t.trade("AAPL", TradeKind::Buy, 1, Some("key-race")),
        t.trade("TSLA", TradeKind::Sell, 100, Some("key-race")),
    );
    let after_race = (t.quantity("AAPL").await, t.quantity("TSLA").await);
    match (a.0, b.0) {
        (200, 422) => assert_eq!(after_race, (before_race.0 - 1, before_race.1)),
        (422, 200) => assert_eq!(after_race, (before_race.0, before_race.1 + 100)),
        other => panic!(
            "expected one 200 and one 422, got {other:?}: {} / {}",
            a.1, b.1
        ),
    }

    // The key keeps its meaning on a new leader.
    let leader = t.frontend_leader().await.expect("a leader");
    t.cluster
        .kill(Service::Order(leader))
        .expect("kill the leader");
    refused(&t, "TSLA", TradeKind::Sell, 100).await;
    assert_ne!(
        t.frontend_leader().await,
        Some(leader),
        "a new leader took over"
    );
    let (status, body) = t.trade_until_done("AAPL", TradeKind::Buy, 1, "key-6").await;
    assert_eq!(
        (status, body["data"]["transaction_number"].as_u64()),
        (200, Some(number)),
        "{body}"
    );
    assert_eq!(
        (t.quantity("AAPL").await, t.quantity("TSLA").await),
        after_race,
        "a refused trade changed the catalog on the new leader"
    );
}

/// Sends `POST path` with a body of `len` bytes written whole before
/// reading anything, as Python's urllib does; returns the status and the
/// JSON body of the answer.
async fn post_whole_body_then_read(addr: &str, path: &str, len: usize) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let mut request = head.into_bytes();
    request.resize(request.len() + len, b'7');
    tokio::time::timeout(Duration::from_secs(20), s.write_all(&request))
        .await
        .unwrap_or_else(|_| panic!("{addr}{path}: the server stopped reading the body"))
        .unwrap_or_else(|e| panic!("{addr}{path}: writing the whole body failed: {e}"));
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{addr}{path}: no complete answer"))
        .unwrap_or_else(|e| panic!("{addr}{path}: reading the answer failed: {e}"));
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{addr}{path}: not an HTTP answer: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{addr}{path}: no status line in {head:?}"));
    let json = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{addr}{path}: the body is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Finding 7: the 413 reaches a client that sends its whole body first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_sent_whole_gets_the_413() {
    let t = TestCluster::start(ScratchOptions::default()).await;
    let leader = poll(
        "the front-end to select a leader",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || t.frontend_leader(),
    )
    .await;
    let host = |s: Service| t.cluster.url(s).trim_start_matches("http://").to_string();
    const MIB: usize = 1024 * 1024;
    // Over each server's limit (16 KiB public, 8 MiB internal) and under
    // the 16 MiB the servers drain before answering.
    let public = MIB;
    let internal = common::http::Limits::INTERNAL.max_body_bytes + MIB;
    assert!(public > common::http::Limits::PUBLIC.max_body_bytes);
    assert!(u64::try_from(internal).unwrap() <= common::http::DRAIN_LIMIT_BYTES);
    for (service, path, len) in [
        (Service::Frontend(1), "/orders", public),
        (Service::Catalog, "/apply", internal),
        (Service::Order(leader), "/orders/batch", internal),
        (Service::Order(leader), "/propagate", internal),
    ] {
        let sent = Instant::now();
        let (status, body) = post_whole_body_then_read(&host(service), path, len).await;
        assert_error(status, &body, 413);
        eprintln!(
            "{service} {path}, {len} bytes sent whole: 413 in {:?}: {}",
            sent.elapsed(),
            body["error"]["message"]
        );
    }
    // Each service still serves afterwards.
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 1, None).await;
    assert_eq!(status, 200, "{body}");
}
