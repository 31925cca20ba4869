//! The client against a scripted front-end on a real socket: its counters,
//! its idempotent retries and its verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// How the fake front-end misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// The first attempt of every trade is stored, then answered with 503,
    /// so the client does not know the outcome and must retry.
    lose_first_answer: bool,
    /// Order queries report a quantity one higher than stored.
    lie_on_query: bool,
    /// Every trade gets number 0.
    reuse_numbers: bool,
    /// Every buy is refused with 409.
    refuse_buys: bool,
    /// Every lookup and trade is answered with 503 (the cluster is down
    /// behind a live front-end).
    unavailable: bool,
}

#[derive(Default)]
struct Fake {
    faults: Faults,
    orders: Vec<serde_json::Value>,
    by_key: HashMap<String, u64>,
    trade_attempts: HashMap<String, u32>,
    lookups: u64,
}

type Shared = Arc<Mutex<Fake>>;

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message}})),
    )
        .into_response()
}

async fn lookup(State(fake): State<Shared>, Path(name): Path<String>) -> Response {
    let mut f = fake.lock().unwrap();
    f.lookups += 1;
    if f.faults.unavailable {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no leader");
    }
    if name == "NOPE" {
        return error(StatusCode::NOT_FOUND, "unknown stock");
    }
    Json(json!({"data": {"name": name, "price": 1.5, "quantity": 100}})).into_response()
}

async fn trade(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .expect("the client sends an Idempotency-Key with every trade")
        .to_string();
    let mut fake = fake.lock().unwrap();
    let attempts = {
        let n = fake.trade_attempts.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    if fake.faults.unavailable {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no leader");
    }
    if fake.faults.refuse_buys && body["type"] == "buy" {
        return error(StatusCode::CONFLICT, "not enough stock");
    }
    let number = match fake.by_key.get(&key) {
        Some(&n) => n,
        None => {
            let n = if fake.faults.reuse_numbers {
                0
            } else {
                fake.orders.len() as u64
            };
            let mut order = body.clone();
            order["number"] = json!(n);
            fake.orders.push(order);
            fake.by_key.insert(key, n);
            n
        }
    };
    if fake.faults.lose_first_answer && attempts == 1 {
        return error(StatusCode::SERVICE_UNAVAILABLE, "leader went away");
    }
    Json(json!({"data": {"transaction_number": number}})).into_response()
}

async fn query(State(fake): State<Shared>, Path(number): Path<u64>) -> Response {
    let fake = fake.lock().unwrap();
    let Some(order) = fake
        .orders
        .iter()
        .find(|o| o["number"] == json!(number))
        .cloned()
    else {
        return error(StatusCode::NOT_FOUND, "unknown order");
    };
    let mut order = order;
    if fake.faults.lie_on_query {
        order["quantity"] = json!(order["quantity"].as_u64().unwrap() + 1);
    }
    Json(json!({"data": order})).into_response()
}

async fn start(faults: Faults) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Fake {
        faults,
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/stocks/{name}", get(lookup))
        .route("/orders", post(trade))
        .route("/orders/{number}", get(query))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

fn config(base: &str, n: u64, prob: f64, clients: usize) -> client::RunConfig {
    let mut c = client::RunConfig::new(base);
    c.n_request = n;
    c.prob = prob;
    c.clients = clients;
    c.seed = 42;
    c.retry_for = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn counts_every_request_and_verifies_every_trade() {
    let (base, fake) = start(Faults::default()).await;
    let report = client::run(config(&base, 50, 0.5, 4)).await.unwrap();
    let fake = fake.lock().unwrap();

    assert_eq!(report.lookup.count, 200);
    assert_eq!(fake.lookups, 200);
    assert_eq!(report.trade.count, fake.orders.len() as u64);
    assert!(
        report.trade.count > 50 && report.trade.count < 150,
        "{report:?}"
    );
    assert_eq!(report.trades_acknowledged, report.trade.count);
    assert_eq!(report.query.count, report.trade.count);
    assert_eq!(
        report.lookup.errors + report.trade.errors + report.query.errors,
        0
    );
    assert!(report.verified);
    assert_eq!(report.mismatches, 0);
    assert!(report.lookup.p50_ms > 0.0 && report.lookup.p99_ms >= report.lookup.p50_ms);
    assert!(report.throughput_rps > 0.0);
    // Every acknowledged number is one the fake handed out, once.
    let mut numbers: Vec<u64> = report.trades.iter().map(|t| t.number).collect();
    numbers.dedup();
    assert_eq!(numbers.len(), fake.orders.len());
}

#[tokio::test]
async fn same_seed_makes_the_same_requests() {
    let (base_a, a) = start(Faults::default()).await;
    let (base_b, b) = start(Faults::default()).await;
    client::run(config(&base_a, 30, 0.5, 1)).await.unwrap();
    client::run(config(&base_b, 30, 0.5, 1)).await.unwrap();
    let strip = |orders: &[serde_json::Value]| -> Vec<(String, String, u64)> {
        orders
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_string(),
                    o["type"].as_str().unwrap().to_string(),
                    o["quantity"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let a = strip(&a.lock().unwrap().orders);
    let b = strip(&b.lock().unwrap().orders);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[tokio::test]
async fn unknown_outcomes_are_retried_with_the_same_key() {
    let (base, fake) = start(Faults {
        lose_first_answer: true,
        ..Faults::default()
    })
    .await;
    let report = client::run(config(&base, 40, 1.0, 2)).await.unwrap();
    let fake = fake.lock().unwrap();

    assert_eq!(report.trade.count, 80);
    assert_eq!(report.trade.errors, 0);
    assert_eq!(report.trade.retries, 80, "one retry per trade");
    assert!(fake.trade_attempts.values().all(|&n| n == 2));
    // No order the client does not know about: one stored order per trade.
    assert_eq!(fake.orders.len(), 80);
    assert!(report.verified, "{:?}", report.mismatch_examples);
}

#[tokio::test]
async fn a_wrong_read_back_is_a_mismatch() {
    let (base, _fake) = start(Faults {
        lie_on_query: true,
        ..Faults::default()
    })
    .await;
    let report = client::run(config(&base, 20, 1.0, 1)).await.unwrap();
    assert!(!report.verified);
    assert_eq!(report.mismatches, 20);
    assert!(report.mismatch_examples[0].contains("read back"));
}

#[tokio::test]
async fn a_number_given_to_two_trades_is_a_mismatch() {
    let (base, _fake) = start(Faults {
        reuse_numbers: true,
        ..Faults::default()
    })
    .await;
    let report = client::run(config(&base, 5, 1.0, 1)).await.unwrap();
    assert!(!report.verified);
    // Four trades collide with the first on number 0, and the read-back of
    // number 0 can match at most one of the five.
    assert!(report.mismatches >= 4 + 4, "{report:?}");
}

#[tokio::test]
async fn refusals_are_counted_apart_from_errors() {
    let (base, _fake) = start(Faults {
        refuse_buys: true,
        ..Faults::default()
    })
    .await;
    let report = client::run(config(&base, 60, 1.0, 1)).await.unwrap();
    assert_eq!(report.trade.errors, 0);
    assert!(report.trade.rejected > 10, "{report:?}");
    assert_eq!(
        report.trade.rejected + report.trades_acknowledged,
        report.trade.count
    );
    assert!(report.verified);
}

#[tokio::test]
async fn a_cluster_down_behind_the_front_end_is_counted_as_errors_not_a_hang() {
    let (base, _fake) = start(Faults {
        unavailable: true,
        ..Faults::default()
    })
    .await;
    let mut c = config(&base, 3, 1.0, 1);
    c.retry_for = Duration::from_millis(300);
    let report = client::run(c).await.unwrap();
    assert_eq!(report.lookup.errors, 3);
    assert_eq!(report.trade.errors, 3);
    assert_eq!(report.trades_acknowledged, 0);
}

#[test]
fn the_binary_prints_json_and_exits_1_on_a_mismatch() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (base, _fake) = rt.block_on(start(Faults {
        lie_on_query: true,
        ..Faults::default()
    }));
    let port = base.rsplit(':').next().unwrap().to_string();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--host", "127.0.0.1", "--port", &port, "--n_request", "10"])
            .args(["--prob", "1", "--seed", "3", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["lookup", "trade", "query"] {
        for field in ["count", "errors", "mean_ms", "p50_ms", "p99_ms"] {
            assert!(json[key][field].is_number(), "{key}.{field} in {json}");
        }
    }
    assert_eq!(json["verified"], false);
    assert_eq!(json["mismatches"], 10);
    assert!(json["throughput_rps"].is_number());

    let out = run(&["--prob", "2"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prob"));
    drop(rt);
}

#[tokio::test]
async fn nothing_listening_is_one_clear_error_not_a_long_run_of_retries() {
    // A port that was free a moment ago: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = config(&format!("http://{addr}"), 5, 0.5, 1);
    c.retry_for = Duration::from_secs(1);
    let e = tokio::time::timeout(Duration::from_secs(30), client::run(c))
        .await
        .expect("the client gives up instead of retrying every request")
        .expect_err("no front-end, no report");
    let e = format!("{e:#}");
    assert!(e.contains("cannot reach the front-end"), "{e}");
    assert!(e.to_lowercase().contains("refused"), "{e}");
}
