//! Relays trades to the leader in batches: concurrent trades share one
//! `POST /orders/batch` instead of one request each, which saves a request
//! parse, a response and a loopback round trip per trade on both sides.
//! A lone caller's trade goes out at once with whatever else is queued, so
//! it costs what it did before. Under load the next batch waits a little
//! for the next trades of the callers the last one answered ([`linger`]),
//! as a database's group commit waits for its siblings: deeper batches
//! cost less per trade.
//!
//! Every trade carries its idempotency key, so a batch the leader may or may
//! not have committed is simply resent, and a trade the leader could not
//! finish is sent again on its own (a batch of one) with the same failover
//! and retry rules; a retry then returns the number of the first attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ApiError;
use common::request_id::RequestInfo;
use common::types::{MAX_TRADE_BATCH, TradeAnswer, TradeCommand, TradeReceipt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::forward::Forwarder;

/// Trades waiting for a batch; when full, a trade is sent on its own.
const QUEUE: usize = 4096;
/// Batches in flight to the leader at once. One: the leader commits one
/// batch at a time anyway, and trades that arrive meanwhile wait here and
/// go as one deeper batch instead of as several that the leader's sequencer
/// would take together (at 64 connections, 32 trades per catalog batch
/// instead of 22, and less CPU per trade; about 60 since batches wait for
/// their callers; docs/PERFORMANCE.md).
const IN_FLIGHT: usize = 1;

/// The longest a batch waits for more trades ([`linger`]); tokio's timer
/// counts in whole milliseconds, so this is also its granularity.
const LINGER_MAX: Duration = Duration::from_millis(1);
/// A batch waits at most this share of the last batch's round trip.
const LINGER_SHARE: u32 = 4;

type Reply = oneshot::Sender<Result<TradeReceipt, ApiError>>;

/// A trade waiting for its batch: the command, the request id it came
/// with, and where its answer goes.
type Queued = (TradeCommand, Option<Arc<RequestInfo>>, Reply);

#[derive(Clone)]
pub struct TradeRelay {
    forward: Arc<Forwarder>,
    tx: mpsc::Sender<Queued>,
    pub stats: Arc<RelayStats>,
}

/// Counters of the relay; Prometheus counters, so `/metrics` shares them.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Batches sent to the leader.
    pub batches: Counter,
    /// Trades those batches carried (their mean depth: trades / batches).
    pub trades: Counter,
    /// Batches that went at their deadline, short of the trades they
    /// waited for ([`linger`]).
    pub waits_expired: Counter,
}

impl RelayStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "relay_batches",
            "Batches of trades the front-end sent to the leader",
            self.batches.clone(),
        );
        registry.register(
            "relay_trades",
            "Trades those batches carried",
            self.trades.clone(),
        );
        registry.register(
            "relay_waits_expired",
            "Batches that went at their deadline, short of the trades they waited for",
            self.waits_expired.clone(),
        );
    }
}

impl TradeRelay {
    /// Starts the batching task.
    pub fn spawn(forward: Arc<Forwarder>) -> TradeRelay {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(RelayStats::default());
        tokio::spawn(run(rx, forward.clone(), stats.clone()));
        TradeRelay { forward, tx, stats }
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

/// The batch in flight that ended last, as the next one sees it.
#[derive(Clone, Copy)]
struct Ended {
    /// Trades it answered.
    answered: usize,
    /// Its round trip to the leader.
    took: Duration,
    /// When it ended.
    at: Instant,
}

async fn run(mut rx: mpsc::Receiver<Queued>, forward: Arc<Forwarder>, stats: Arc<RelayStats>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let ended: Arc<Mutex<Option<Ended>>> = Arc::new(Mutex::new(None));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot lets more trades queue behind `first`.
        let (slot, queued_behind) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                (slot, true)
            }
        };
        let last = *ended.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = vec![first];
        take_queued(&mut rx, &mut batch);
        // The trades that waited for the slot are the batch so far.
        let waited = if queued_behind { batch.len() } else { 0 };
        if let Some(last) = last
            && linger(&mut rx, &mut batch, last, waited).await
        {
            stats.waits_expired.inc();
        }
        stats.batches.inc();
        stats.trades.inc_by(batch.len() as u64);
        let (forward, ended) = (forward.clone(), ended.clone());
        tokio::spawn(async move {
            let (answered, started) = (batch.len(), Instant::now());
            relay(&forward, batch).await;
            let now = Instant::now();
            *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ended {
                answered,
                took: now - started,
                at: now,
            });
            drop(slot);
        });
    }
}

/// Moves what is queued into `batch`, up to [`MAX_TRADE_BATCH`].
fn take_queued(rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>) {
    while batch.len() < MAX_TRADE_BATCH {
        match rx.try_recv() {
            Ok(t) => batch.push(t),
            Err(_) => break,
        }
    }
}

/// Waits for the callers of the batch that ended last. They (and the
/// trades that waited for its slot, `waited`, counting `first`) are likely
/// to send their next trades at once, and one batch that takes them all
/// costs the cluster one catalog call, one flush per replica and one
/// propagation instead of two of each. The batch goes once it holds that
/// many trades, or a [`LINGER_SHARE`] of the last batch's round trip
/// ([`LINGER_MAX`] at most) after that batch ended. A lone caller never
/// waits: its batch already holds the one trade it can expect. Returns
/// whether it waited and the deadline came first.
async fn linger(
    rx: &mut mpsc::Receiver<Queued>,
    batch: &mut Vec<Queued>,
    last: Ended,
    waited: usize,
) -> bool {
    let target = (last.answered + waited).min(MAX_TRADE_BATCH);
    let deadline = last.at + (last.took / LINGER_SHARE).min(LINGER_MAX);
    if Instant::now() >= deadline {
        return false;
    }
    while batch.len() < target {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => {
                batch.push(t);
                take_queued(rx, batch);
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;
    use common::types::TradeKind;

    fn queued(n: usize) -> Queued {
        let cmd = TradeCommand {
            name: "AAPL".into(),
            kind: TradeKind::Buy,
            quantity: 1,
            key: format!("k{n}"),
        };
        (cmd, None, oneshot::channel().0)
    }

    fn ended(answered: usize, took: Duration) -> Ended {
        Ended {
            answered,
            took,
            at: Instant::now(),
        }
    }

    /// A caller alone (its last batch held one trade) is never held back,
    /// even when another trade comes right after.
    #[tokio::test(start_paused = true)]
    async fn a_lone_callers_trade_goes_at_once() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut batch = vec![queued(0)];
        let start = Instant::now();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(100)).await;
            tx.send(queued(1)).await.ok();
        });
        let expired = linger(&mut rx, &mut batch, ended(1, Duration::from_millis(2)), 0).await;
        assert_eq!((expired, batch.len(), Instant::now()), (false, 1, start));
        sender.await.unwrap();
        assert!(
            rx.try_recv().is_ok(),
            "the next trade is left for the next batch"
        );
    }

    /// After a batch of three, the next waits for their callers' trades,
    /// and goes as soon as it holds three (not at its deadline).
    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_the_callers_of_the_last_one() {
        let (tx, mut rx) = mpsc::channel(8);
        let last = ended(3, Duration::from_millis(4));
        let mut batch = vec![queued(0)];
        tokio::spawn(async move {
            for n in 1..4 {
                tokio::task::yield_now().await;
                tx.send(queued(n)).await.ok();
            }
        });
        assert!(!linger(&mut rx, &mut batch, last, 0).await);
        assert_eq!(batch.len(), 3);
        assert_eq!(Instant::now(), last.at, "went before its deadline");
        // Those that waited for the slot count too: 3 answered + 2 waited.
        let (tx, mut rx) = mpsc::channel(8);
        let mut batch = vec![queued(0), queued(1)];
        tokio::spawn(async move {
            for n in 2..5 {
                tokio::task::yield_now().await;
                tx.send(queued(n)).await.ok();
            }
            std::future::pending::<()>().await;
        });
        let last = ended(3, Duration::from_millis(4));
        assert!(!linger(&mut rx, &mut batch, last, 2).await);
        assert_eq!(batch.len(), 5);
        assert_eq!(Instant::now(), last.at, "went before its deadline");
    }

    /// When the callers do not come, the batch goes at its deadline: a
    /// share of the last round trip, at most `LINGER_MAX`.
    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_no_longer_than_its_deadline() {
        for (took, waits) in [
            (Duration::from_millis(2), Duration::from_micros(500)),
            (Duration::from_millis(40), LINGER_MAX),
        ] {
            let (_tx, mut rx) = mpsc::channel(8);
            let last = ended(64, took);
            let mut batch = vec![queued(0)];
            assert!(linger(&mut rx, &mut batch, last, 0).await, "went short");
            assert_eq!(batch.len(), 1);
            let waited = Instant::now() - last.at;
            // tokio's timer rounds a deadline up to its next millisecond.
            assert!(
                waited >= waits && waited <= waits + Duration::from_millis(1),
                "waited {waited:?} after a round trip of {took:?}"
            );
        }
    }

    /// A trade that comes after the last batch's deadline goes at once,
    /// and is not counted as a wait that expired.
    #[tokio::test(start_paused = true)]
    async fn a_trade_after_the_deadline_goes_at_once() {
        let (_tx, mut rx) = mpsc::channel(8);
        let last = ended(64, Duration::from_millis(2));
        tokio::time::advance(Duration::from_millis(5)).await;
        let (mut batch, start) = (vec![queued(0)], Instant::now());
        assert!(!linger(&mut rx, &mut batch, last, 0).await);
        assert_eq!((batch.len(), Instant::now()), (1, start));
    }
}
