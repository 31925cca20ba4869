//! Shared helpers of the system tests: a scratch cluster of the real
//! binaries, HTTP calls to the front-end, waiting with deadlines, and the
//! invariant checks of CONTRACT.md §5.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bazaar::cluster::{Cluster, ScratchOptions, Service, write_scratch_config};
use common::types::{Order, StockRow, TradeKind};
use serde_json::{Value, json};

pub struct TestCluster {
    pub cluster: Cluster,
    pub http: reqwest::Client,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(opts: ScratchOptions) -> TestCluster {
        Self::start_with_env(opts, &[]).await
    }

    /// Starts a cluster where `service` runs with the extra environment
    /// variables given (e.g. a fault point).
    pub async fn start_with_env(
        opts: ScratchOptions,
        env: &[(Service, &str, &str)],
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_scratch_config(dir.path(), &opts).expect("scratch config");
        let mut cluster = Cluster::new(&config, &dir.path().join("logs")).expect("cluster");
        for (service, key, value) in env {
            cluster.set_env(*service, key, Some(value));
        }
        if let Err(e) = cluster.start_all().await {
            dump_logs(&cluster);
            panic!("cluster did not start: {e:#}");
        }
        let base = cluster.config.frontend_url();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        TestCluster {
            cluster,
            http,
            base,
            _dir: dir,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET reaches the front-end");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("POST reaches the front-end");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn trade(
        &self,
        name: &str,
        kind: TradeKind,
        quantity: u64,
        key: Option<&str>,
    ) -> (u16, Value) {
        let body = json!({"name": name, "quantity": quantity, "type": kind.as_str()}).to_string();
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        self.post("/orders", &body, &headers).await
    }

    /// A trade retried with its key until it gets an answer that is not a
    /// 503 (the front-end answers 503 only when no leader could take it).
    pub async fn trade_until_done(
        &self,
        name: &str,
        kind: TradeKind,
        quantity: u64,
        key: &str,
    ) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body =
                json!({"name": name, "quantity": quantity, "type": kind.as_str()}).to_string();
            let sent = self
                .http
                .post(format!("{}/orders", self.base))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await;
            if let Ok(r) = sent {
                let status = r.status().as_u16();
                if status != 503 {
                    return (status, r.json().await.unwrap_or(Value::Null));
                }
            }
            assert!(
                Instant::now() < deadline,
                "trade {key} got no answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn quantity(&self, name: &str) -> u64 {
        let (status, body) = self.get(&format!("/stocks/{name}")).await;
        assert_eq!(status, 200, "lookup of {name}: {body}");
        body["data"]["quantity"].as_u64().expect("quantity")
    }

    /// Highest order number a replica holds, from its health answer.
    pub async fn replica_highest(&self, id: u32) -> Option<Option<u64>> {
        self.cluster
            .health(Service::Order(id))
            .await
            .map(|h| h.highest)
    }

    /// Waits until every replica answers and holds `highest`.
    pub async fn wait_replicas_at(&self, highest: Option<u64>) {
        let ids: Vec<u32> = self.cluster.config.orders.iter().map(|o| o.id).collect();
        wait_until(
            "all replicas to hold the same highest order",
            Duration::from_secs(30),
            || async {
                for &id in &ids {
                    if self.replica_highest(id).await != Some(highest) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.cluster);
        }
    }
}

/// Prints the tail of every service log: a failed test shows what the services said.
pub fn dump_logs(cluster: &Cluster) {
    for s in cluster.services() {
        let text = std::fs::read_to_string(cluster.log_path(s)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("----- {s} log (last {} lines) -----", tail.len());
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Polls `cond` every 20 ms until it holds, panicking with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the error body of CONTRACT.md §3 with the given status.
pub fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "unexpected status; body {body}");
    assert_eq!(
        body["error"]["code"].as_u64(),
        Some(u64::from(expected)),
        "error body {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error body {body}"
    );
}

/// Numbers are 0..n without gaps or repeats.
pub fn assert_contiguous(orders: &[Order]) {
    for (i, o) in orders.iter().enumerate() {
        assert_eq!(
            o.number, i as u64,
            "order log has a gap or repeat at position {i}"
        );
    }
}

/// quantity = initial − Σbuy + Σsell and volume = Σquantity for every stock.
pub fn assert_conservation(stocks: &[StockRow], orders: &[Order], initial: u64) {
    let mut delta: HashMap<&str, i128> = HashMap::new();
    let mut volume: HashMap<&str, u64> = HashMap::new();
    for o in orders {
        let d = i128::from(o.quantity);
        *delta.entry(&o.name).or_default() += if o.kind == TradeKind::Buy { -d } else { d };
        *volume.entry(&o.name).or_default() += o.quantity;
    }
    for s in stocks {
        let expected = i128::from(initial) + delta.get(s.name.as_str()).copied().unwrap_or(0);
        assert_eq!(
            i128::from(s.quantity),
            expected,
            "catalog quantity of {} does not match the order log",
            s.name
        );
        assert_eq!(
            s.volume,
            volume.get(s.name.as_str()).copied().unwrap_or(0),
            "volume of {}",
            s.name
        );
    }
}

/// The orders the client was told about, keyed by number.
pub type Acked = BTreeMap<u64, Order>;
