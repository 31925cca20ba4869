//! The load of `bazaar bench --fill N`: batches of [`MAX_TRADE_BATCH`]
//! trades through the leader's `POST /orders/batch` (cluster token, a unique
//! key per trade, sell then buy of one share of a stock so quantities never
//! run out), a bounded number in flight, each resent with its keys until
//! every trade is committed or refused.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::client::ServiceClient;
use common::types::{
    Data, MAX_TRADE_BATCH, Role, TradeAnswer, TradeBatch, TradeBatchResult, TradeCommand, TradeKind,
};

use crate::cluster::{Cluster, Service};

/// Attempts of one batch before its trades count as errors.
const BATCH_ATTEMPTS: u32 = 50;

/// What the fill's workers share.
pub(super) struct Shared {
    pub(super) client: ServiceClient,
    pub(super) names: Vec<String>,
    pub(super) counts: Counts,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) committed: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) retries: AtomicU64,
}

/// The replica whose `/health` says it leads (waits for one).
pub(super) async fn find_leader(cluster: &Cluster) -> anyhow::Result<Service> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for s in cluster.services() {
            if matches!(s, Service::Order(_))
                && let Some(h) = cluster.health(s).await
                && h.role == Role::Leader
                && h.ready
            {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("no replica became a ready leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Trade `i` of the fill: pairs sell then buy one share of the same stock.
fn trade(names: &[String], i: u64) -> TradeCommand {
    let pair = usize::try_from(i / 2).unwrap_or(0);
    TradeCommand {
        name: names[pair % names.len()].clone(),
        kind: if i.is_multiple_of(2) {
            TradeKind::Sell
        } else {
            TradeKind::Buy
        },
        quantity: 1,
        key: format!("fill-{i}"),
    }
}

/// Commits trades `range` through the leader, `in_flight` batches at a time.
pub(super) async fn fill(shared: &Arc<Shared>, leader: &str, range: Range<u64>, in_flight: usize) {
    let next = Arc::new(AtomicU64::new(range.start));
    let url: Arc<str> = format!("{leader}/orders/batch").into();
    let (batch, end) = (u64::try_from(MAX_TRADE_BATCH).unwrap_or(1), range.end);
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (shared, url, next) = (shared.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(batch, Ordering::Relaxed);
                    if from >= end {
                        return;
                    }
                    let trades = (from..end.min(from + batch))
                        .map(|i| trade(&shared.names, i))
                        .collect();
                    send_batch(&shared, &url, trades).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// Sends one batch until every trade is committed or refused; trades
/// answered `retry` are resent with their keys.
async fn send_batch(shared: &Shared, url: &str, trades: Vec<TradeCommand>) {
    let (client, c) = (&shared.client, &shared.counts);
    let mut pending = trades;
    for _ in 0..BATCH_ATTEMPTS {
        let body = TradeBatch {
            trades: pending.clone(),
            request_ids: Vec::new(),
        };
        let answers = match client.post::<_, Data<TradeBatchResult>>(url, &body).await {
            Ok(d) if d.data.outcomes.len() == pending.len() => d.data.outcomes,
            Ok(d) => {
                tracing::warn!(
                    answers = d.data.outcomes.len(),
                    trades = pending.len(),
                    "fill batch answered the wrong number of outcomes; resending"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fill batch failed; resending");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut again = Vec::new();
        for (cmd, answer) in pending.into_iter().zip(answers) {
            match answer {
                TradeAnswer::Committed { .. } => {
                    c.committed.fetch_add(1, Ordering::Relaxed);
                }
                TradeAnswer::Refused { code, message } => {
                    tracing::warn!(code, %message, key = %cmd.key, "fill trade refused");
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                TradeAnswer::Retry { .. } => {
                    c.retries.fetch_add(1, Ordering::Relaxed);
                    again.push(cmd);
                }
            }
        }
        if again.is_empty() {
            return;
        }
        pending = again;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = u64::try_from(pending.len()).unwrap_or(u64::MAX);
    c.errors.fetch_add(lost, Ordering::Relaxed);
}
