//! A stop during the catalog's flush of a batch may leave its record on
//! disk and lose the stocks written after it (sled recovers a prefix of its
//! log). The catalog then starts with the record's orders applied, so the
//! stocks must show them too: the open writes them again from the record.
//! Checked on the real binary: the catalog makes the record alone durable
//! and ends at once (fault point `catalog-after-record`), then restarts on
//! the same files.

use std::time::Duration;

use serde_json::json;

mod support;
use support::{dump, highest, start};

#[tokio::test]
async fn the_stocks_of_a_batch_cut_off_after_its_record_are_written_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(
        d.join("stocks.csv"),
        "name,price,quantity\nGOOG,1.5,100\nIBM,2.5,50\n",
    )
    .expect("stocks");
    let (config, port) = support::config(d);
    let log = d.join("catalog.log");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let fault = format!("{}:abort", common::fault::CATALOG_AFTER_RECORD);
    let mut catalog = start(&config, &log, Some(&fault));
    assert_eq!(highest(&http, &base, &mut catalog, &log).await, None);

    let batch = json!({"epoch": 2, "base": 0, "leader_id": 1, "trades": [
        {"name": "GOOG", "kind": "buy", "quantity": 7, "key": "a"},
        {"name": "IBM", "kind": "buy", "quantity": 60, "key": "b"},
        {"name": "IBM", "kind": "buy", "quantity": 5, "key": "c"},
        {"name": "GOOG", "kind": "sell", "quantity": 2, "key": "d"}]});
    let answer = http
        .post(format!("{base}/apply"))
        .timeout(Duration::from_secs(10))
        .json(&batch)
        .send()
        .await;
    assert!(
        answer.is_err(),
        "the catalog answered instead of ending at its fault point: {answer:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = catalog.try_wait().expect("catalog status") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the catalog ends at its fault point");
    assert!(!status.success(), "{status:?}");

    let mut catalog = start(&config, &log, None);
    let highest = highest(&http, &base, &mut catalog, &log).await;
    let dump = dump(&http, &base).await;
    let fence = http
        .post(format!("{base}/fence"))
        .json(&json!({"epoch": 2, "leader_id": 3}))
        .send()
        .await
        .expect("fence");
    catalog.kill().expect("kill -9");
    catalog.wait().expect("reaped");
    let logged = std::fs::read_to_string(&log).expect("catalog log");
    // Three of the four trades took numbers 0..=2 (IBM's 60 is more than
    // it has), and the record of them is on disk.
    assert_eq!(highest, Some(2), "{logged}");
    let figures: Vec<(String, u64, u64)> = dump
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().expect("a number");
            (
                s["name"].as_str().expect("a name").into(),
                n("quantity"),
                n("volume"),
            )
        })
        .collect();
    assert_eq!(
        figures,
        [("GOOG".into(), 95, 9), ("IBM".into(), 45, 5)],
        "the stocks lack what the catalog's record says it applied:\n{logged}"
    );
    assert!(
        logged.contains("written again"),
        "the open did not redo the batch, so this run proved nothing:\n{logged}"
    );
    // The batch's epoch and leader are back too: another leader of epoch 2
    // is refused.
    assert_eq!(fence.status().as_u16(), 409, "{fence:?}");
}
