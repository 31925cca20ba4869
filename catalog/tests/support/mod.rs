//! The catalog binary on a config of its own, as the crash tests start it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A config in `d` (stocks file `d/stocks.csv`, database `d/db`) whose
/// replicas nobody runs: the catalog's start-up look at them finds none.
/// Returns its path and the catalog's port.
pub fn config(d: &Path) -> (PathBuf, u16) {
    let ports = common::ports::free_ports(5).expect("free ports");
    let port = ports[0];
    let config = d.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "catalog: {{ host: 127.0.0.1, port: {port}, db_path: {db}, stocks: {stocks} }}\n\
             frontend: {{ host: 127.0.0.1, port: {fe}, cache_size: 5, health_check_interval_ms: 500 }}\n\
             orders:\n{orders}",
            db = d.join("db").display(),
            stocks = d.join("stocks.csv").display(),
            fe = ports[1],
            orders = (1..=3)
                .map(|id| format!(
                    "  - {{ id: {id}, host: 127.0.0.1, port: {}, db_path: {} }}\n",
                    ports[1 + id],
                    d.join(format!("order-{id}")).display()
                ))
                .collect::<String>(),
        ),
    )
    .expect("config");
    (config, port)
}

pub fn start(config: &Path, log: &Path, fault: Option<&str>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catalog"));
    if let Some(fault) = fault {
        cmd.env(common::fault::FAULT_ENV, fault);
    }
    cmd.arg("--config")
        .arg(config)
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the catalog starts")
}

async fn health(http: &reqwest::Client, base: &str) -> Option<Value> {
    let r = http.get(format!("{base}/health")).send().await.ok()?;
    r.json().await.ok()
}

/// The catalog's highest applied order, once it answers; the catalog's
/// log when it exits or does not answer.
pub async fn highest(
    http: &reqwest::Client,
    base: &str,
    catalog: &mut Child,
    log: &Path,
) -> Option<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(h) = health(http, base).await {
            return h["highest"].as_u64();
        }
        let exited = catalog.try_wait().expect("catalog status");
        if exited.is_some() || std::time::Instant::now() > deadline {
            panic!(
                "the catalog does not answer /health (exit: {exited:?}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The catalog's `GET /dump`: one object per stock.
pub async fn dump(http: &reqwest::Client, base: &str) -> Vec<Value> {
    http.get(format!("{base}/dump"))
        .send()
        .await
        .expect("dump")
        .json()
        .await
        .expect("dump JSON")
}
