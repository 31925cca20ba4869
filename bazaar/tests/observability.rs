//! `/metrics` moves by exactly the traffic sent; `/status` follows a
//! failover; request ids come back in the response, and one trade is
//! followed by its request id through the leader's log to the catalog's.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{ClusterStatus, TradeKind};
use common::wait::wait_until;
use support::*;

/// Parsed OpenMetrics text: (name, labels) → value.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn of(t: &TestCluster, service: Service) -> Scrape {
        let url = format!("{}/metrics", t.cluster.url(service));
        let text = t
            .http
            .get(&url)
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        Scrape(text.lines().filter_map(parse_line).collect())
    }

    /// Sum of the samples named `name` whose labels include `want`.
    fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    // Label values here never hold `",` themselves.
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(k.to_string(), v.trim_end_matches('"').to_string());
    }
    Some((name.to_string(), map, value))
}

const REQUESTS: &str = "bazaar_http_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_traffic_sent() {
    let t = TestCluster::start(ScratchOptions::default()).await;
    let lookups = [
        ("route", "/stocks/{name}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    let trades = [("route", "/orders"), ("method", "POST"), ("status", "200")];
    let before = Scrape::of(&t, Service::Frontend(1)).await;
    let leader_before = Scrape::of(&t, Service::Order(3)).await;
    let catalog_before = Scrape::of(&t, Service::Catalog).await;

    for _ in 0..10 {
        assert_eq!(t.get("/stocks/AMD").await.0, 200);
    }
    assert_eq!(t.get("/stocks/NOPE").await.0, 404);
    for i in 0..3 {
        let (status, body) = t
            .trade("AMD", TradeKind::Sell, 1, Some(&format!("m-{i}")))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let after = Scrape::of(&t, Service::Frontend(1)).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta(REQUESTS, &lookups), 10.0);
    assert_eq!(
        delta(REQUESTS, &[("route", "/stocks/{name}"), ("status", "404")]),
        1.0
    );
    assert_eq!(delta(REQUESTS, &trades), 3.0);
    assert_eq!(
        delta(
            "bazaar_http_request_duration_seconds_count",
            &[("route", "/stocks/{name}"), ("method", "GET")]
        ),
        11.0
    );
    // One miss fills the cache, nine hits; the 404 is a miss too.
    assert_eq!(delta("bazaar_cache_hits_total", &[]), 9.0);
    assert_eq!(delta("bazaar_cache_misses_total", &[]), 2.0);
    // The first trade drops the cached AMD; the others find nothing to drop.
    assert_eq!(delta("bazaar_cache_invalidations_total", &[]), 1.0);
    assert_eq!(after.value("bazaar_leader_id", &[]), 3.0);

    let leader = Scrape::of(&t, Service::Order(3)).await;
    assert_eq!(
        leader.value("bazaar_order_trades_committed_total", &[])
            - leader_before.value("bazaar_order_trades_committed_total", &[]),
        3.0
    );
    assert_eq!(leader.value("bazaar_order_highest", &[]), 2.0);
    // Every batch the leader committed went through each stage once.
    let batches = |stage: &str| {
        let name = format!("bazaar_order_commit_{stage}_seconds_count");
        leader.value(&name, &[]) - leader_before.value(&name, &[])
    };
    assert!(
        (1.0..=3.0).contains(&batches("catalog")),
        "{}",
        batches("catalog")
    );
    assert_eq!(batches("append"), batches("catalog"));
    assert_eq!(batches("followers"), batches("catalog"));
    assert!(
        leader.value("bazaar_sled_flushes_total", &[])
            > leader_before.value("bazaar_sled_flushes_total", &[])
    );
    let catalog = Scrape::of(&t, Service::Catalog).await;
    assert_eq!(
        catalog.value("bazaar_catalog_trades_applied_total", &[])
            - catalog_before.value("bazaar_catalog_trades_applied_total", &[]),
        3.0
    );
    t.wait_replicas_at(Some(2)).await;
    for id in [1, 2] {
        let follower = Scrape::of(&t, Service::Order(id)).await;
        assert_eq!(
            follower.value("bazaar_order_highest", &[]),
            2.0,
            "order-{id}"
        );
    }
}

async fn status(t: &TestCluster) -> ClusterStatus {
    t.http
        .get(format!("{}/status", t.base))
        .send()
        .await
        .expect("status answers")
        .json()
        .await
        .expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_a_failover() {
    let mut t = TestCluster::start(ScratchOptions::default()).await;
    let (status_code, _) = t.trade("AAPL", TradeKind::Buy, 1, None).await;
    assert_eq!(status_code, 200);
    assert_eq!(t.get("/stocks/TSLA").await.0, 200);
    let s = status(&t).await;
    assert_eq!(s.leader.map(|l| l.id), Some(3));
    assert!(s.services.iter().all(|x| x.up), "{s:?}");
    assert_eq!(s.services.len(), 5);
    assert_eq!(s.cache.entries.first().map(String::as_str), Some("TSLA"));

    t.cluster.kill(Service::Order(3)).unwrap();
    let (status_code, body) = t.trade_until_done("AAPL", TradeKind::Buy, 1, "f-1").await;
    assert_eq!(status_code, 200, "{body}");
    wait_until(
        "/status to show order-2 leading and order-3 down",
        Duration::from_secs(10),
        || async {
            let s = status(&t).await;
            let down = s.services.iter().any(|x| x.service == "order-3" && !x.up);
            s.leader.map(|l| l.id) == Some(2)
                && down
                && s.leader_changes.last().and_then(|c| c.id) == Some(2)
        },
    )
    .await;
    let s = status(&t).await;
    let highest: Vec<Option<u64>> = s
        .services
        .iter()
        .filter(|x| x.service.starts_with("order-") && x.up)
        .map(|x| x.health.as_ref().and_then(|h| h.highest))
        .collect();
    assert_eq!(highest, vec![Some(1), Some(1)], "{s:?}");
    assert!(s.selections >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_assigned() {
    let t = TestCluster::start(ScratchOptions::default()).await;
    let r = t
        .http
        .get(format!("{}/stocks/AAPL", t.base))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-1");
    let r = t
        .http
        .get(format!("{}/stocks/AAPL", t.base))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "a fresh id: {id}");
}

/// Lines of a service's log file that contain every one of `needles`.
fn log_lines(t: &TestCluster, service: Service, needles: &[&str]) -> Vec<String> {
    std::fs::read_to_string(t.cluster.log_path(service))
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trade_is_followed_from_its_request_id_to_the_catalog() {
    let debug = "info,order=debug,catalog=debug";
    let t = TestCluster::start_with_env(
        ScratchOptions::default(),
        &[
            (Service::Order(3), "RUST_LOG", debug),
            (Service::Catalog, "RUST_LOG", debug),
        ],
    )
    .await;
    let (status, body) = t
        .post(
            "/orders",
            r#"{"name":"AMD","quantity":2,"type":"buy"}"#,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "follow-key-1"),
                ("x-request-id", "follow-me-1"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let number = body["data"]["transaction_number"]
        .as_u64()
        .expect("a number");

    // The leader logs the committed trade with the caller's request id,
    // its key and its number ...
    let committed = format!("number={number}");
    wait_until(
        "the leader's line for request follow-me-1",
        Duration::from_secs(10),
        || {
            let found = !log_lines(
                &t,
                Service::Order(3),
                &["trade committed", "follow-me-1", "follow-key-1", &committed],
            )
            .is_empty();
            async move { found }
        },
    )
    .await;
    // ... and which catalog batch carried that key ...
    let sent = log_lines(
        &t,
        Service::Order(3),
        &["sending a batch to the catalog", "follow-key-1"],
    );
    assert_eq!(sent.len(), 1, "{sent:?}");
    let batch = sent[0]
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}' || c == '{')
        .find_map(|w| w.strip_prefix("batch=").filter(|b| b.starts_with("batch-")))
        .unwrap_or_else(|| panic!("no batch id in {:?}", sent[0]))
        .to_string();
    // ... under whose id the catalog applied it.
    wait_until(
        &format!("the catalog's line for {batch}"),
        Duration::from_secs(10),
        || {
            let found = !log_lines(&t, Service::Catalog, &["batch applied", &batch]).is_empty();
            async move { found }
        },
    )
    .await;
}
