//! End-to-end behaviour of the real binaries (catalog, three order replicas,
//! front-end) on free loopback ports: the REST contract, the cache, leader
//! failover under kill -9, resume, dumps and conservation.

mod support;

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{Order, TradeKind};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_contract_success_and_every_error() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;

    let (status, body) = t.get("/stocks/AAPL").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": {"name": "AAPL", "price": 15.99, "quantity": 100}})
    );
    let (status, body) = t.get("/stocks/NOPE").await;
    assert_error(status, &body, 404);

    let (status, body) = t.trade("AAPL", TradeKind::Buy, 5, None).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"data": {"transaction_number": 0}})),
        "{body}"
    );
    let (status, body) = t.trade("MSFT", TradeKind::Sell, 3, None).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"data": {"transaction_number": 1}})),
        "{body}"
    );
    assert_eq!(t.quantity("AAPL").await, 95);
    assert_eq!(t.quantity("MSFT").await, 103);

    let (status, body) = t.get("/orders/0").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": {"number": 0, "name": "AAPL", "type": "buy", "quantity": 5}})
    );
    for (path, code) in [
        ("/orders/2", 404),
        ("/orders/abc", 400),
        ("/orders/-1", 400),
        ("/orders/18446744073709551616", 400),
    ] {
        let (status, body) = t.get(path).await;
        assert_error(status, &body, code);
    }

    let json_ct = [("content-type", "application/json")];
    for (body, code) in [
        ("{not json", 400),
        (r#"{"name":"AAPL","quantity":5}"#, 400),
        (r#"{"name":"AAPL","quantity":5,"type":"hold"}"#, 400),
        (r#"{"name":"AAPL","quantity":0,"type":"buy"}"#, 400),
        (r#"{"name":"AAPL","quantity":1.5,"type":"buy"}"#, 400),
        (r#"{"name":"AAPL","quantity":-2,"type":"buy"}"#, 400),
        (r#"{"name":"AAPL","quantity":1000001,"type":"sell"}"#, 400),
        (r#"{"name":"NOPE","quantity":1,"type":"buy"}"#, 404),
        (r#"{"name":"AAPL","quantity":1000,"type":"buy"}"#, 409),
    ] {
        let (status, resp) = t.post("/orders", body, &json_ct).await;
        assert_error(status, &resp, code);
    }
    let (status, resp) = t
        .post(
            "/orders",
            r#"{"name":"AAPL","quantity":1,"type":"buy"}"#,
            &[],
        )
        .await;
    assert_error(status, &resp, 415);
    // Rejected trades changed nothing and took no number.
    assert_eq!(t.quantity("AAPL").await, 95);
    let (status, body) = t.get("/orders/2").await;
    assert_error(status, &body, 404);

    // The same Idempotency-Key twice: one order, one number.
    let (s1, b1) = t.trade("GOOG", TradeKind::Buy, 2, Some("key-1")).await;
    let (s2, b2) = t.trade("GOOG", TradeKind::Buy, 2, Some("key-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2);
    assert_eq!(b1["data"]["transaction_number"], 2);
    assert_eq!(t.quantity("GOOG").await, 98);
    let (status, resp) = t.trade("GOOG", TradeKind::Buy, 2, Some("bad key")).await;
    assert_error(status, &resp, 400);

    let (status, _) = t.get("/health").await;
    assert_eq!(status, 200);
    let (status, body) = t.get("/no/such/route").await;
    assert_error(status, &body, 404);
    let (status, body) = t.post("/stocks/AAPL", "", &[]).await;
    assert_error(status, &body, 405);

    // No order replica: trades answer 503, lookups still work.
    for id in 1..=3 {
        t.cluster.kill(Service::Order(id)).unwrap();
    }
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 1, None).await;
    assert_error(status, &body, 503);
    assert_eq!(t.quantity("AAPL").await, 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_evicts_least_recently_used_and_invalidates() {
    let mut t = TestCluster::start(ScratchOptions {
        cache_size: 2,
        ..Default::default()
    })
    .await;
    // Read-your-writes: a cached stock shows the trade right after it.
    assert_eq!(t.quantity("IBM").await, 100);
    assert_eq!(t.trade("IBM", TradeKind::Buy, 7, None).await.0, 200);
    assert_eq!(t.quantity("IBM").await, 93);

    // Capacity 2: AAPL, MSFT; touch AAPL; add GOOG -> MSFT, the least
    // recently used, is evicted (FIFO would have evicted AAPL).
    assert_eq!(t.quantity("AAPL").await, 100);
    assert_eq!(t.quantity("MSFT").await, 100);
    assert_eq!(t.quantity("AAPL").await, 100);
    assert_eq!(t.quantity("GOOG").await, 100);
    // With the catalog gone, only cached stocks can be answered.
    t.cluster.kill(Service::Catalog).unwrap();
    assert_eq!(t.quantity("AAPL").await, 100);
    assert_eq!(t.quantity("GOOG").await, 100);
    let (status, body) = t.get("/stocks/MSFT").await;
    assert_error(status, &body, 503);

    // The catalog's invalidation message drops an entry.
    let (status, _) = t.post("/invalidation/GOOG", "", &[]).await;
    assert_eq!(status, 200);
    let (status, body) = t.get("/stocks/GOOG").await;
    assert_error(status, &body, 503);
    assert_eq!(t.quantity("AAPL").await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_stream_loses_no_acknowledged_trade() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    let names = ["AAPL", "MSFT", "GOOG", "AMZN"];
    let mut acked: Acked = Acked::new();
    let mut killed = None;
    for i in 0..60u64 {
        if i == 20 {
            let leader = t
                .cluster
                .health(Service::Frontend(1))
                .await
                .and_then(|h| h.id)
                .expect("a leader was selected");
            t.cluster.kill(Service::Order(leader)).unwrap();
            killed = Some(leader);
        }
        let name = names[(i % 4) as usize];
        let kind = if i % 3 == 0 {
            TradeKind::Buy
        } else {
            TradeKind::Sell
        };
        let (status, body) = t
            .trade_until_done(name, kind, 1 + i % 3, &format!("stream-{i}"))
            .await;
        assert_eq!(status, 200, "trade {i}: {body}");
        let n = body["data"]["transaction_number"].as_u64().unwrap();
        let prev = acked.insert(
            n,
            Order {
                number: n,
                name: name.into(),
                kind,
                quantity: 1 + i % 3,
            },
        );
        assert!(prev.is_none(), "number {n} was handed out twice");
    }
    let killed = killed.unwrap();
    let new_leader = t
        .cluster
        .health(Service::Frontend(1))
        .await
        .and_then(|h| h.id)
        .unwrap();
    assert_ne!(new_leader, killed, "a new leader took over");
    // Numbers 0..60 without gaps, each readable through the front-end.
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>()
    );
    for (n, expected) in &acked {
        let (status, body) = t.get(&format!("/orders/{n}")).await;
        assert_eq!(status, 200, "order {n}: {body}");
        let got: Order = serde_json::from_value(body["data"].clone()).unwrap();
        assert_eq!(&got, expected);
    }
    // The killed leader comes back, catches up, and all logs agree.
    t.cluster
        .start_and_wait(Service::Order(killed))
        .await
        .unwrap();
    t.wait_replicas_at(Some(59)).await;
    t.cluster.stop_all().await.unwrap();
    let logs: Vec<Vec<Order>> = (1..=3)
        .map(|id| t.cluster.dump_orders(id).unwrap())
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    assert_eq!(logs[0], acked.values().cloned().collect::<Vec<_>>());
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &logs[0], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_resumes_and_all_dumps_are_identical() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    for i in 0..10u64 {
        assert_eq!(
            t.trade_until_done("NVDA", TradeKind::Sell, 1, &format!("a-{i}"))
                .await
                .0,
            200
        );
    }
    let leader = t
        .cluster
        .health(Service::Frontend(1))
        .await
        .and_then(|h| h.id)
        .unwrap();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    t.cluster.kill(Service::Order(follower)).unwrap();
    for i in 0..25u64 {
        let kind = if i % 2 == 0 {
            TradeKind::Buy
        } else {
            TradeKind::Sell
        };
        assert_eq!(
            t.trade_until_done("TSLA", kind, 2, &format!("b-{i}"))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        t.replica_highest(follower).await,
        None,
        "the follower is down"
    );
    t.cluster
        .start_and_wait(Service::Order(follower))
        .await
        .unwrap();
    // It pulled the 25 orders it missed before serving.
    assert_eq!(t.replica_highest(follower).await, Some(Some(34)));

    // Dump works on running replicas (through the service) ...
    let running: Vec<Vec<Order>> = (1..=3)
        .map(|id| t.cluster.dump_orders(id).unwrap())
        .collect();
    assert_eq!(running[0].len(), 35);
    assert!(
        running.iter().all(|l| *l == running[0]),
        "running replicas differ"
    );
    // ... and on stopped ones (from the sled files).
    t.cluster.stop_all().await.unwrap();
    let stopped: Vec<Vec<Order>> = (1..=3)
        .map(|id| t.cluster.dump_orders(id).unwrap())
        .collect();
    assert!(
        stopped.iter().all(|l| *l == running[0]),
        "stopped replicas differ from what they served"
    );
    assert_contiguous(&stopped[0]);
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &stopped[0], 100);

    // The flags may come before or after `dump`; bad combinations are one
    // clear line, never a dump of the wrong replica.
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(t.cluster.bin(bin))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let config = t.cluster.config_path.to_str().unwrap();
    let contract = run("order", &["dump", "--config", config, "--id", "2"]);
    assert_eq!(contract.0, Some(0), "{}", contract.2);
    assert_eq!(contract.1.lines().count(), 35);
    assert_eq!(
        run("order", &["--config", config, "--id", "2", "dump"]).1,
        contract.1
    );
    assert_eq!(
        run("order", &["--config", config, "dump", "--id", "2"]).1,
        contract.1
    );
    let catalog = run("catalog", &["dump", "--config", config]);
    assert_eq!(catalog.0, Some(0), "{}", catalog.2);
    assert_eq!(run("catalog", &["--config", config, "dump"]).1, catalog.1);
    for (args, needle) in [
        (
            vec!["--config", config, "--id", "1", "dump", "--id", "2"],
            "two replica ids",
        ),
        (vec!["--config", config, "dump"], "dump needs --id"),
        (
            vec!["--config", config, "--resume", "dump", "--id", "1"],
            "only reads",
        ),
    ] {
        let (code, stdout, stderr) = run("order", &args);
        assert_eq!(code, Some(1), "order {args:?}: {stderr}");
        assert!(stdout.is_empty(), "order {args:?} printed {stdout}");
        assert_eq!(stderr.lines().count(), 1, "order {args:?}: {stderr}");
        assert!(stderr.contains(needle), "order {args:?}: {stderr}");
    }
}
