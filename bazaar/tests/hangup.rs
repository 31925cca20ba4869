//! A leader that hangs up on the catalog in the middle of a batch, with two
//! front-ends. The catalog freezes between writing the batch and flushing
//! it (fault point `catalog-before-flush`); the leader is killed with
//! `kill -9` meanwhile, so its connection closes and the server drops the
//! request; the catalog goes on. The batch must still end whole: numbered
//! once, and every front-end told of the changed stock. The trade, retried
//! with its key through front-end 1, is then acknowledged with its number,
//! and front-end 2's warm cache must not hide it.

mod support;

use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use common::fault::{CATALOG_BEFORE_FLUSH, FAULT_ENV};
use common::wait::{poll, wait_until};
use serde_json::{Value, json};
use support::*;

const STOCK: &str = "GOOG";

async fn quantity_at(t: &TestCluster, id: u32) -> u64 {
    let url = format!("{}/stocks/{STOCK}", t.cluster.url(Service::Frontend(id)));
    let body: Value = t
        .http
        .get(url)
        .send()
        .await
        .expect("the front-end answers")
        .json()
        .await
        .expect("a stock");
    body["data"]["quantity"]
        .as_u64()
        .unwrap_or_else(|| panic!("no quantity in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_leader_hangs_up_still_reaches_every_front_ends_cache() {
    let fault = format!("{CATALOG_BEFORE_FLUSH}:stop");
    let mut t = TestCluster::start_with_env(
        ScratchOptions {
            frontends: 2,
            cache_size: 10,
            ..ScratchOptions::default()
        },
        &[(Service::Catalog, FAULT_ENV, &fault)],
    )
    .await;
    t.wait_first_leader().await;

    // Front-end 2 serves the stock from its cache (once the catalog's
    // messages gave it a lease).
    let before = quantity_at(&t, 2).await;
    wait_until(
        "front-end 2 to serve the stock from its cache",
        Duration::from_secs(10),
        || async {
            let hits = cache_counter(&t, 2, "hits").await;
            quantity_at(&t, 2).await == before && cache_counter(&t, 2, "hits").await > hits
        },
    )
    .await;
    let lapses = cache_counter(&t, 2, "lease_lapses").await;

    // The trade goes through front-end 1, retried with its key while the
    // front-end answers 503 (no leader could take it).
    let leader = t.frontend_leader().await.expect("a leader");
    let (http, base) = (t.http.clone(), t.base.clone());
    let trade = tokio::spawn(async move {
        poll(
            "the trade to be answered",
            Duration::from_secs(40),
            Duration::from_millis(50),
            || async {
                let r = http
                    .post(format!("{base}/orders"))
                    .header("idempotency-key", "hangup-1")
                    .json(&json!({"name": STOCK, "quantity": 1, "type": "buy"}))
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status != 503).then_some((status, body))
            },
        )
        .await
    });
    poll(
        "the catalog to freeze between the batch's write and its flush",
        Duration::from_secs(20),
        Duration::from_millis(2),
        || async { t.cluster.is_paused(Service::Catalog).then_some(()) },
    )
    .await;
    let frozen = Instant::now();
    t.cluster
        .kill(Service::Order(leader))
        .expect("kill -9 the leader");
    t.cluster.resume(Service::Catalog).expect("SIGCONT");
    let frozen_for = frozen.elapsed();

    let (status, body) = trade.await.expect("the trade task");
    assert!((200..300).contains(&status), "{status} {body}");
    let number = &body["data"]["transaction_number"];
    assert!(number.is_u64(), "a transaction number: {body}");
    // Acknowledged: no front-end may show the stock as it was, and the
    // batch counted once.
    assert_eq!(
        quantity_at(&t, 2).await,
        before - 1,
        "front-end 2's cache hides acknowledged order {number}"
    );
    assert_eq!(quantity_at(&t, 1).await, before - 1);
    assert_eq!(
        cache_counter(&t, 2, "lease_lapses").await,
        lapses,
        "front-end 2's lease lapsed (the catalog was frozen {frozen_for:?}), so its cache \
         was not in play and this run proved nothing"
    );
    let log = std::fs::read_to_string(t.cluster.log_path(Service::Catalog)).unwrap_or_default();
    assert!(
        log.contains("the caller stopped waiting"),
        "the catalog did not drop the leader's request, so this run proved nothing:\n{log}"
    );
}
