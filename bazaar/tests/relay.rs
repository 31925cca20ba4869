//! The front-end relays overlapping trades to the leader in one
//! `POST /orders/batch`. The leader answers each trade on its own: a
//! committed number, a refusal with the contract's status, and the original
//! number for a repeated key; only the leader takes batches, and only with
//! the cluster token.

mod support;

use std::time::Duration;

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{MAX_TRADE_BATCH, ROLE_HEADER};
use common::wait::{poll, wait_until};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "relay-test-token-0123456789abcdef";

async fn batch_to(
    t: &TestCluster,
    s: Service,
    body: &Value,
    token: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = t
        .http
        .post(format!("{}/orders/batch", t.cluster.url(s)))
        .json(body);
    if let Some(token) = token {
        req = req.header(common::http::TOKEN_HEADER, token);
    }
    let r = req.send().await.expect("the replica answers");
    let status = r.status().as_u16();
    let role = r
        .headers()
        .get(ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), role)
}

fn trade(name: &str, kind: &str, quantity: u64, key: &str) -> Value {
    json!({"name": name, "kind": kind, "quantity": quantity, "key": key})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_answers_each_trade_of_a_batch() {
    let t = TestCluster::start(ScratchOptions {
        token: Some(TOKEN.into()),
        ..ScratchOptions::default()
    })
    .await;
    // order-3 answers "not the leader" until the front-end's first
    // selection has told it otherwise.
    t.wait_first_leader().await;
    let before = t.quantity("AAPL").await;
    let body = json!({
        "trades": [
            trade("AAPL", "buy", 2, "batch-a"),
            trade("NOPE", "buy", 1, "batch-b"),
            trade("AAPL", "buy", 0, "batch-c"),
            trade("AAPL", "buy", 2, "batch-a"),
            trade("AAPL", "buy", common::types::MAX_TRADE_QUANTITY, "batch-d"),
            trade("AAPL", "sell", 5, "batch-e"),
        ],
        "request_ids": ["r1", "r2", "r3", "r4", "r5", "r6"],
    });
    // A just-selected leader answers 503 (catching-up) until it has caught up.
    let (status, answer) = poll(
        "order-3 to take the batch rather than answer 503 catching-up",
        Duration::from_secs(10),
        common::wait::POLL_EVERY,
        || async {
            let (status, answer, role) = batch_to(&t, Service::Order(3), &body, Some(TOKEN)).await;
            let catching_up = status == 503 && role.as_deref() == Some("catching-up");
            (!catching_up).then_some((status, answer))
        },
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let outcomes = answer["data"]["outcomes"].as_array().expect("outcomes");
    assert_eq!(outcomes.len(), 6, "{answer}");
    assert_eq!(outcomes[0]["outcome"], "committed", "{answer}");
    let first = outcomes[0]["transaction_number"].as_u64().expect("number");
    assert_eq!(outcomes[1]["outcome"], "refused", "{answer}");
    assert_eq!(outcomes[1]["code"], 404, "{answer}");
    assert_eq!(outcomes[2]["outcome"], "refused", "{answer}");
    assert_eq!(outcomes[2]["code"], 400, "{answer}");
    // The same key in the same batch is one trade with one number.
    assert_eq!(outcomes[3]["outcome"], "committed", "{answer}");
    assert_eq!(outcomes[3]["transaction_number"].as_u64(), Some(first));
    assert_eq!(outcomes[4]["outcome"], "refused", "{answer}");
    assert_eq!(outcomes[4]["code"], 409, "{answer}");
    assert_eq!(outcomes[5]["outcome"], "committed", "{answer}");
    let second = outcomes[5]["transaction_number"].as_u64().expect("number");
    assert_eq!(
        second,
        first + 1,
        "committed trades get consecutive numbers"
    );

    // Resending the batch changes nothing: the keys return their numbers.
    let (status, again, _) = batch_to(&t, Service::Order(3), &body, Some(TOKEN)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["data"]["outcomes"][0]["transaction_number"].as_u64(),
        Some(first)
    );
    assert_eq!(
        again["data"]["outcomes"][5]["transaction_number"].as_u64(),
        Some(second)
    );
    // These trades did not pass the front-end: its cached AAPL goes when the
    // catalog's invalidation arrives.
    let expected = before - 2 + 5;
    wait_until(
        "the front-end shows the batch's trades",
        Duration::from_secs(10),
        || async { t.quantity("AAPL").await == expected },
    )
    .await;
    let (status, order) = t.get(&format!("/orders/{first}")).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["data"]["name"], "AAPL");
    assert_eq!(order["data"]["quantity"], 2);
    t.wait_replicas_at(Some(second)).await;

    // Only the leader takes batches; the role header says why.
    let (status, refused, role) = batch_to(&t, Service::Order(1), &body, Some(TOKEN)).await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(role.as_deref(), Some("follower"));
    // Without the token: 401, nothing queued.
    let (status, refused, _) = batch_to(&t, Service::Order(3), &body, None).await;
    assert_error(status, &refused, 401);
    // Empty and oversized batches are refused whole.
    let (status, refused, _) =
        batch_to(&t, Service::Order(3), &json!({"trades": []}), Some(TOKEN)).await;
    assert_error(status, &refused, 400);
    let many: Vec<Value> = (0..=MAX_TRADE_BATCH)
        .map(|i| trade("AAPL", "sell", 1, &format!("many-{i}")))
        .collect();
    let (status, refused, _) =
        batch_to(&t, Service::Order(3), &json!({"trades": many}), Some(TOKEN)).await;
    assert_error(status, &refused, 400);
    t.wait_replicas_at(Some(second)).await;
    assert_eq!(t.quantity("AAPL").await, expected);
}

/// Overlapping trades through the front-end all travel in batches (no
/// single-trade fallback when nothing fails) and get distinct numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_trades_travel_in_batches() {
    let t = TestCluster::start(ScratchOptions::default()).await;
    let requests = |route: &str, body: &str| {
        body.lines()
            .filter(|l| {
                l.starts_with("bazaar_http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains("method=\"POST\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let t = &t;
    let scrape_of = |s: Service| async move {
        t.http
            .get(format!("{}/metrics", t.cluster.url(s)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let scrape = || scrape_of(Service::Order(3));
    let relayed = |text: &str| {
        let count = |name| common::metrics::sample::<f64>(text, name).unwrap_or(0.0);
        (
            count("bazaar_relay_batches_total"),
            count("bazaar_relay_trades_total"),
        )
    };
    let before = scrape().await;
    let relayed_before = relayed(&scrape_of(Service::Frontend(1)).await);
    let trades = (0..64).map(|i| {
        let t = &t;
        async move {
            t.trade(
                "MSFT",
                common::types::TradeKind::Sell,
                1,
                Some(&format!("over-{i}")),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(trades).await;
    let mut numbers: Vec<u64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["data"]["transaction_number"].as_u64().expect("number")
        })
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), 64, "distinct numbers");
    let after = scrape().await;
    let batches = requests("/orders/batch", &after) - requests("/orders/batch", &before);
    let singles = requests("/orders", &after) - requests("/orders", &before);
    assert!((1.0..=64.0).contains(&batches), "{batches} batch requests");
    assert_eq!(singles, 0.0, "no trade fell back to the single path");
    // The front-end counts every trade in a batch, and no more batches than
    // the leader received (a batch it resends reaches the leader again).
    let relayed_after = relayed(&scrape_of(Service::Frontend(1)).await);
    let (relay_batches, relay_trades) = (
        relayed_after.0 - relayed_before.0,
        relayed_after.1 - relayed_before.1,
    );
    assert_eq!(relay_trades, 64.0, "the front-end's relayed trades");
    assert!(
        (1.0..=batches).contains(&relay_batches),
        "{relay_batches} relay batches, {batches} batch requests at the leader"
    );
}
