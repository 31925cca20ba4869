//! Cache invalidation at the front-ends (`POST /invalidations` with
//! `{"names": [...]}`; see docs/PROTOCOL.md).
//!
//! **One front-end** ([`Invalidator::Notify`]): every public trade passes
//! through it and it drops the stock from its own cache before it answers,
//! so the catalog's notice only matters for trades that did not (a batch
//! sent to the leader directly). It is best effort: a bounded queue and a
//! background task, so a slow or dead front-end never delays a trade.
//!
//! **Several front-ends** ([`Invalidator::Lease`]): a trade acknowledged by
//! one must not be hidden by another's cache, so after a batch is applied
//! and flushed, and before the catalog answers the leader, every front-end
//! either has dropped the changed stocks or has stopped serving from its
//! cache. Each front-end holds a *lease* ([`LEASE`]) which only the
//! catalog's messages renew; without one it serves every lookup from the
//! catalog and starts again with an empty cache.
//!
//! The protocol, its timing argument and its cost: [`lease`].

pub mod lease;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::config::Config;
use common::types::Invalidations;
use tokio::sync::mpsc;

pub use lease::{HEARTBEAT_EVERY, LEASE, Leases};
use lease::{REQUEST_TIMEOUT, RETRY_DELAY};

/// One front-end: names waiting to be sent; when full, new ones are dropped.
const QUEUE_CAPACITY: usize = 4096;
/// One front-end: attempts per set of names.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub enum Invalidator {
    /// One front-end: best effort, in the background.
    Notify(mpsc::Sender<String>),
    /// Several front-ends: every batch waits until each one is settled.
    Lease(Arc<Leases>),
}

impl Invalidator {
    /// Starts the sender task (one front-end) or the heartbeats (several).
    pub fn spawn(config: &Config) -> Invalidator {
        let token = config.token();
        let frontends = config.frontends();
        if frontends.len() > 1 {
            return Invalidator::Lease(Leases::spawn(
                frontends.iter().map(|f| (f.id, f.url())).collect(),
                token,
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let client = common::http::internal_client(REQUEST_TIMEOUT, token);
        tokio::spawn(notify(rx, client, config.frontend_url()));
        Invalidator::Notify(tx)
    }

    /// Opens the invalidation round of a batch: call it before the batch
    /// is applied, so [`settled`](Self::settled) after a read of what was
    /// applied covers the batches that read saw.
    pub fn round(&self) -> Round {
        match self {
            Invalidator::Notify(_) => Round(None),
            Invalidator::Lease(leases) => Round(Some((leases.clone(), leases.open_round()))),
        }
    }

    /// Tells the front-ends that `names` changed. With several front-ends
    /// it returns once each has dropped them or stopped serving from its
    /// cache (at most [`LEASE`]); with one, at once. The round goes on
    /// (and stays open) even if the caller stops waiting.
    pub async fn changed(&self, round: Round, names: Vec<String>) {
        match self {
            Invalidator::Notify(tx) => {
                for name in names {
                    if let Err(e) = tx.try_send(name) {
                        tracing::debug!(stock = %e.into_inner(), "invalidation queue full; dropping");
                    }
                }
            }
            Invalidator::Lease(_) if names.is_empty() => {}
            Invalidator::Lease(leases) => {
                let leases = leases.clone();
                let settling = tokio::spawn(async move {
                    leases.changed(&names).await;
                    drop(round);
                });
                if let Err(e) = settling.await {
                    tracing::warn!(error = %e, "invalidation round failed");
                }
            }
        }
    }

    /// Returns once every round opened before the call is settled, and
    /// every front-end has heard from this catalog process (so dropped
    /// what an earlier one left in its cache) or its lease from an earlier
    /// process has surely ended. For answers that report what was applied
    /// (`/applied`: a leader that lost an apply's answer, or a catalog that
    /// restarted, acknowledges trades from it): call it after reading.
    pub async fn settled(&self) {
        let Invalidator::Lease(leases) = self else {
            return;
        };
        leases.settled().await;
    }
}

/// An open invalidation round (several front-ends); closed when dropped.
pub struct Round(Option<(Arc<Leases>, u64)>);

impl Drop for Round {
    fn drop(&mut self) {
        if let Some((leases, id)) = self.0.take() {
            leases.close_round(id);
        }
    }
}

/// One front-end: sends what was queued, names gathered, a few attempts.
async fn notify(mut rx: mpsc::Receiver<String>, client: reqwest::Client, base: String) {
    let url = format!("{base}/invalidations");
    let mut names = BTreeSet::new();
    while let Some(first) = rx.recv().await {
        names.insert(first);
        while let Ok(more) = rx.try_recv() {
            names.insert(more);
        }
        let names: Vec<String> = std::mem::take(&mut names).into_iter().collect();
        let body = Invalidations::of(names, None);
        for attempt in 1..=MAX_ATTEMPTS {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => tracing::debug!(status = %r.status(), attempt, "invalidation refused"),
                Err(e) => tracing::debug!(error = %e, attempt, "invalidation failed"),
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
}
