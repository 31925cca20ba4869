//! Relays trades to the leader in batches: concurrent trades share one
//! `POST /orders/batch` instead of one request each, which saves a request
//! parse, a response and a loopback round trip per trade on both sides.
//! Nothing waits to fill a batch: a trade goes out with whatever else is
//! queued at that moment, so a lone trade costs what it did before.
//!
//! Every trade carries its idempotency key, so a batch the leader may or may
//! not have committed is simply resent, and a trade the leader could not
//! finish is sent again on its own (a batch of one) with the same failover
//! and retry rules; a retry then returns the number of the first attempt.

use std::sync::Arc;

use common::ApiError;
use common::request_id::RequestInfo;
use common::types::{MAX_TRADE_BATCH, TradeAnswer, TradeCommand, TradeReceipt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::forward::Forwarder;

/// Trades waiting for a batch; when full, a trade is sent on its own.
const QUEUE: usize = 4096;
/// Batches in flight to the leader at once. One: the leader commits one
/// batch at a time anyway, and trades that arrive meanwhile wait here and
/// go as one deeper batch instead of as several that the leader's sequencer
/// would take together (at 64 connections, 32 trades per catalog batch
/// instead of 22, and less CPU per trade; docs/PERFORMANCE.md).
const IN_FLIGHT: usize = 1;

type Reply = oneshot::Sender<Result<TradeReceipt, ApiError>>;

/// A trade waiting for its batch: the command, the request id it came
/// with, and where its answer goes.
type Queued = (TradeCommand, Option<Arc<RequestInfo>>, Reply);

#[derive(Clone)]
pub struct TradeRelay {
    forward: Arc<Forwarder>,
    tx: mpsc::Sender<Queued>,
}

impl TradeRelay {
    /// Starts the batching task.
    pub fn spawn(forward: Arc<Forwarder>) -> TradeRelay {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, forward.clone()));
        TradeRelay { forward, tx }
    }

    /// Commits `cmd` through the leader.
    pub async fn trade(&self, cmd: TradeCommand) -> Result<TradeReceipt, ApiError> {
        let (reply, answer) = oneshot::channel();
        let id = common::request_id::current();
        match self.tx.try_send((cmd, id, reply)) {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(ApiError::unavailable("the trade relay stopped"))),
            Err(
                mpsc::error::TrySendError::Full((cmd, ..))
                | mpsc::error::TrySendError::Closed((cmd, ..)),
            ) => self.forward.trade(&cmd).await,
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Queued>, forward: Arc<Forwarder>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot lets more trades queue behind `first`.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_TRADE_BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        let forward = forward.clone();
        tokio::spawn(async move {
            relay(&forward, batch).await;
            drop(slot);
        });
    }
}

async fn relay(forward: &Arc<Forwarder>, batch: Vec<Queued>) {
    let cmds: Vec<TradeCommand> = batch.iter().map(|(c, ..)| c.clone()).collect();
    let ids: Vec<String> = batch
        .iter()
        .map(|(_, id, _)| {
            id.as_deref()
                .map_or_else(String::new, |r| r.id().to_string())
        })
        .collect();
    let outcomes = match forward.trade_batch(&cmds, &ids).await {
        Ok(o) if o.len() == batch.len() => o,
        Ok(o) => {
            tracing::warn!(
                sent = batch.len(),
                answered = o.len(),
                "the leader answered a batch with the wrong number of outcomes; retrying each trade"
            );
            batch
                .iter()
                .map(|_| TradeAnswer::Retry {
                    message: "short batch answer".into(),
                    role: None,
                })
                .collect()
        }
        Err(e) => {
            for (.., reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for ((cmd, id, reply), outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            TradeAnswer::Retry { message, .. } => {
                tracing::debug!(key = %cmd.key, reason = %message, "relayed trade not finished; retrying it alone");
                let forward = forward.clone();
                let retry = async move {
                    let _ = reply.send(forward.trade(&cmd).await);
                };
                match id {
                    Some(id) => tokio::spawn(common::request_id::scope(id, retry)),
                    None => tokio::spawn(retry),
                };
            }
            done => {
                let _ = reply.send(done.into_http());
            }
        }
    }
}
