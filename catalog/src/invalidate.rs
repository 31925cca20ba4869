//! Best-effort cache invalidation: after a trade the catalog tells the
//! front-end which stock changed (`POST /invalidation/{name}`). A bounded
//! queue and a background task keep a slow or dead front-end from ever
//! blocking a trade; the front-end also invalidates on its own when it
//! relays an acknowledged trade, so a dropped message only costs freshness
//! for trades that did not pass through it.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;

/// Names waiting to be sent; when full, new names are dropped (best effort).
const QUEUE_CAPACITY: usize = 4096;
/// Attempts per name; a front-end that is down gets no more than this.
const MAX_ATTEMPTS: u32 = 3;
/// Pause between attempts.
const RETRY_DELAY: Duration = Duration::from_millis(50);
/// Timeout of one invalidation request.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Invalidator {
    tx: mpsc::Sender<String>,
}

impl Invalidator {
    /// Starts the sender task; `frontend_url` is `http://host:port`.
    pub fn spawn(frontend_url: String, token: Option<&str>) -> Invalidator {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let client = common::http::internal_client(REQUEST_TIMEOUT, token);
        tokio::spawn(run(rx, client, frontend_url));
        Invalidator { tx }
    }

    pub fn push(&self, name: &str) {
        if self.tx.try_send(name.to_string()).is_err() {
            tracing::debug!(stock = name, "invalidation queue full; dropping");
        }
    }
}

async fn run(mut rx: mpsc::Receiver<String>, client: reqwest::Client, base: String) {
    let mut names = BTreeSet::new();
    while let Some(first) = rx.recv().await {
        names.insert(first);
        while let Ok(more) = rx.try_recv() {
            names.insert(more);
        }
        for name in std::mem::take(&mut names) {
            send(&client, &base, &name).await;
        }
    }
}

async fn send(client: &reqwest::Client, base: &str, name: &str) {
    let url = format!("{base}/invalidation/{name}");
    for attempt in 1..=MAX_ATTEMPTS {
        match client.post(&url).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::debug!(stock = name, status = %r.status(), attempt, "invalidation refused")
            }
            Err(e) => tracing::debug!(stock = name, error = %e, attempt, "invalidation failed"),
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}
