//! A caller that closes its connection while the catalog applies its batch
//! (a leader killed with `kill -9`, or one whose 2 s timeout fired) makes
//! the server drop the request. The batch must still end as one whole: in
//! the sequence and on disk, or not at all. Checked on the real binary over
//! a real socket: the catalog freezes (fault point `catalog-before-flush`)
//! between writing a batch and flushing it, the caller hangs up, the
//! catalog goes on, and the next batch follows; then `kill -9`, a restart
//! on the same files, and the traded volume against the orders the catalog
//! says it applied.

use std::process::Command;
use std::time::Duration;

use common::wait::poll;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

mod support;
use support::{dump, highest, start};

/// Trades in the batch (the most the catalog takes).
const BATCH: u64 = 4096;

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn stopped(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

fn signal(name: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test]
async fn a_batch_whose_caller_hangs_up_is_applied_whole_or_not_at_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(d.join("stocks.csv"), "name,price,quantity\nGOOG,1.5,100\n").expect("stocks");
    let (config, port) = support::config(d);
    let log = d.join("catalog.log");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let fault = format!("{}:stop", common::fault::CATALOG_BEFORE_FLUSH);
    let mut catalog = start(&config, &log, Some(&fault));
    assert_eq!(
        highest(&http, &base, &mut catalog, &log).await,
        None,
        "a fresh catalog"
    );

    let trades: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({"name": "GOOG", "kind": if i % 2 == 0 { "buy" } else { "sell" },
                   "quantity": 1, "key": format!("k{i}")})
        })
        .collect();
    let body = json!({"epoch": 1, "base": 0, "trades": trades, "leader_id": 1}).to_string();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /apply HTTP/1.1\r\nhost: catalog\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    s.write_all(body.as_bytes()).await.expect("send body");
    let pid = catalog.id().to_string();
    poll(
        "the catalog to freeze between its write and its flush",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async { stopped(&pid).then_some(()) },
    )
    .await;
    // Hang up without reading the answer, then let the catalog go on.
    drop(s);
    signal("CONT", &pid);
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        while highest(&http, &base, &mut catalog, &log).await.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The next batch goes where the catalog says its sequence is.
    let live = highest(&http, &base, &mut catalog, &log).await;
    let next = live.map_or(0, |h| h + 1);
    let answer = http
        .post(format!("{base}/apply"))
        .json(
            &json!({"epoch": 1, "base": next, "leader_id": 1, "trades": [
            {"name": "GOOG", "kind": "buy", "quantity": 1, "key": "after-1"},
            {"name": "GOOG", "kind": "sell", "quantity": 1, "key": "after-2"}]}),
        )
        .send()
        .await
        .expect("the next batch");
    assert!(answer.status().is_success(), "{answer:?}");

    catalog.kill().expect("kill -9");
    catalog.wait().expect("reaped");
    let mut catalog = start(&config, &log, None);
    let applied = highest(&http, &base, &mut catalog, &log)
        .await
        .map_or(0, |h| h + 1);
    let dump = dump(&http, &base).await;
    catalog.kill().expect("kill -9");
    catalog.wait().expect("reaped");
    let volume = dump[0]["volume"].as_u64().expect("GOOG's volume");
    let logged = std::fs::read_to_string(&log).expect("catalog log");
    let hung_up = logged.matches("the caller stopped waiting").count();
    // Every trade has quantity 1: the volume on disk counts the trades
    // the stocks took, the highest number those the sequence holds.
    assert_eq!(
        volume, applied,
        "the stocks took {volume} trades but the catalog numbered {applied} \
         (it reported {live:?} before the restart)"
    );
    assert_eq!(
        applied,
        BATCH + 2,
        "the batch ran to its end (seen before the restart: {})",
        finished.is_ok()
    );
    assert!(
        hung_up > 0,
        "the server did not drop the request, so this run proved nothing:\n{logged}"
    );
}
