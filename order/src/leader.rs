//! The leader's side: taking leadership (catch up, fence the catalog,
//! reconcile with what the catalog applied), and the sequencer that turns
//! queued trades into durable, replicated orders in batches, so one catalog
//! call, one flush per replica and one propagation serve many trades.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::types::{
    ApplyBatch, ApplyConflict, ApplyResult, ConflictBody, Fence, FenceResult, OrderRecord,
    Propagate, TradeCommand, TradeOutcome,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::OrderError;
use crate::node::{FOLLOWER_RETRY, Node, Role, RoleState};
use crate::replication::{catch_up_from_peers, pull};

/// Trades waiting for the sequencer; beyond this the leader sheds load (503)
/// instead of queueing without bound.
pub const QUEUE_CAPACITY: usize = 8192;
/// Most trades in one batch (the catalog accepts up to 4096).
pub const MAX_BATCH: usize = 1024;
/// How often the leader tells followers its `next`, so a follower that
/// missed propagations converges even when no trades arrive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Longest pause between attempts to take leadership while the catalog or
/// the disk fails.
const MAX_TAKEOVER_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Pending {
    pub cmd: TradeCommand,
    pub reply: oneshot::Sender<Result<u64, OrderError>>,
}

pub(crate) fn channel() -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>) {
    mpsc::channel(QUEUE_CAPACITY)
}

/// Runs after this replica was named leader of `state.epoch`: it takes
/// trades only once it holds every order its peers and the catalog know.
pub async fn take_leadership(node: Arc<Node>, state: RoleState) {
    let mut delay = Duration::from_millis(50);
    loop {
        if node.role() != state {
            return;
        }
        if let Err(e) = catch_up_from_peers(&node).await {
            tracing::warn!(error = %e, "catch-up from peers failed; the catalog still has every order");
        }
        match sync_with_catalog(&node, state.epoch).await {
            Ok(()) => {
                if node.swap_if(state, Role::Leader) {
                    tracing::info!(epoch = state.epoch, highest = ?node.log.highest(), "leading");
                    broadcast(&node, state.epoch, Vec::new(), true, node.log.next()).await;
                }
                return;
            }
            Err(OrderError::StaleEpoch { .. }) => {
                node.swap_if(state, Role::Follower { leader: None });
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "not ready to lead yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_TAKEOVER_BACKOFF);
            }
        }
    }
}

/// Tells the catalog this replica leads `epoch` (so it refuses older
/// leaders from now on) and pulls every order the catalog applied that this
/// log lacks: a leader that died between the catalog's commit and its own
/// leaves such orders behind.
async fn sync_with_catalog(node: &Node, epoch: u64) -> Result<(), OrderError> {
    let url = format!("{}/fence", node.catalog_url);
    let resp = node
        .client
        .post(&url)
        .json(&Fence { epoch })
        .send()
        .await
        .map_err(|e| OrderError::Unavailable(format!("catalog unreachable: {e}")))?;
    let next = match resp.status() {
        StatusCode::OK => {
            resp.json::<FenceResult>()
                .await
                .map_err(|e| OrderError::Unavailable(format!("bad fence answer: {e}")))?
                .next
        }
        StatusCode::CONFLICT => {
            let current = match resp.json::<ConflictBody>().await.map(|b| b.conflict) {
                Ok(ApplyConflict::StaleEpoch { current }) => current,
                _ => epoch + 1,
            };
            return Err(OrderError::StaleEpoch {
                got: epoch,
                current,
            });
        }
        s => {
            return Err(OrderError::Unavailable(format!(
                "catalog answered {s} to fence"
            )));
        }
    };
    let held = node.log.next();
    if next < held {
        return Err(OrderError::Unavailable(format!(
            "the catalog has applied orders below {next} only, but this log holds orders up to {}; \
             refusing to number trades (was the catalog database replaced?)",
            held - 1
        )));
    }
    if next > held {
        tracing::info!(
            from = held,
            to = next - 1,
            "reconciling orders the catalog applied"
        );
        pull(node, &format!("{}/applied", node.catalog_url), next).await?;
    }
    Ok(())
}

/// Takes queued trades in batches for as long as the process runs.
pub(crate) async fn run_sequencer(node: Arc<Node>, mut rx: mpsc::Receiver<Pending>) {
    let mut needs_reconcile = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        process(&node, batch, &mut needs_reconcile).await;
    }
}

/// Trades with the same key in one batch share one outcome.
struct Group {
    cmd: TradeCommand,
    replies: Vec<oneshot::Sender<Result<u64, OrderError>>>,
}

async fn process(node: &Node, batch: Vec<Pending>, needs_reconcile: &mut bool) {
    let state = node.role();
    if state.role != Role::Leader {
        let err = || {
            if state.role == Role::CatchingUp {
                OrderError::CatchingUp
            } else {
                OrderError::NotLeader
            }
        };
        for p in batch {
            let _ = p.reply.send(Err(err()));
        }
        return;
    }
    let mut groups: Vec<Group> = Vec::with_capacity(batch.len());
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for p in batch {
        match by_key.get(&p.cmd.key) {
            Some(&i) => groups[i].replies.push(p.reply),
            None => {
                by_key.insert(p.cmd.key.clone(), groups.len());
                groups.push(Group {
                    cmd: p.cmd,
                    replies: vec![p.reply],
                });
            }
        }
    }
    // Two rounds: a sequence conflict means another leader's orders reached
    // the catalog; after reconciling, one more try is enough.
    for _round in 0..2 {
        if *needs_reconcile {
            if let Err(e) = sync_with_catalog(node, state.epoch).await {
                if matches!(e, OrderError::StaleEpoch { .. }) {
                    node.swap_if(state, Role::Follower { leader: None });
                }
                return fail_all(groups, &e);
            }
            *needs_reconcile = false;
        }
        // A retried trade whose first attempt did commit is answered from
        // the log, never applied twice (the log is reconciled at this point).
        let mut fresh = Vec::with_capacity(groups.len());
        for g in groups {
            match node.log.by_key(&g.cmd.key) {
                Ok(Some(n)) => reply(g.replies, Ok(n)),
                Ok(None) => fresh.push(g),
                Err(e) => reply(g.replies, Err(OrderError::Store(e))),
            }
        }
        groups = fresh;
        if groups.is_empty() {
            return;
        }
        match commit(node, state, &groups).await {
            Ok(outcomes) => {
                for (g, o) in groups.into_iter().zip(outcomes) {
                    let result = match o {
                        TradeOutcome::Applied { number } => Ok(number),
                        TradeOutcome::Rejected { code, message } => {
                            Err(OrderError::Api(common::ApiError::new(
                                StatusCode::from_u16(code).unwrap_or(StatusCode::CONFLICT),
                                message,
                            )))
                        }
                    };
                    reply(g.replies, result);
                }
                return;
            }
            Err(CommitError::Sequence) => *needs_reconcile = true,
            Err(CommitError::Failed(e, unknown_outcome)) => {
                *needs_reconcile |= unknown_outcome;
                return fail_all(groups, &e);
            }
        }
    }
    fail_all(
        groups,
        &OrderError::Unavailable("the catalog's order sequence keeps moving; retry".into()),
    );
}

fn reply(replies: Vec<oneshot::Sender<Result<u64, OrderError>>>, result: Result<u64, OrderError>) {
    for r in replies {
        let copy = match &result {
            Ok(n) => Ok(*n),
            Err(e) => Err(clone_error(e)),
        };
        let _ = r.send(copy);
    }
}

fn clone_error(e: &OrderError) -> OrderError {
    match e {
        OrderError::NotLeader => OrderError::NotLeader,
        OrderError::CatchingUp => OrderError::CatchingUp,
        OrderError::StaleEpoch { got, current } => OrderError::StaleEpoch {
            got: *got,
            current: *current,
        },
        OrderError::Api(a) => OrderError::Api(a.clone()),
        other => OrderError::Unavailable(other.to_string()),
    }
}

fn fail_all(groups: Vec<Group>, e: &OrderError) {
    for g in groups {
        reply(g.replies, Err(clone_error(e)));
    }
}

enum CommitError {
    /// The catalog expects another base number: reconcile and retry.
    Sequence,
    /// The batch failed; `true` when the catalog may have applied it.
    Failed(OrderError, bool),
}

/// Catalog first (it applies and numbers), then this log, then followers.
async fn commit(
    node: &Node,
    state: RoleState,
    groups: &[Group],
) -> Result<Vec<TradeOutcome>, CommitError> {
    let base = node.log.next();
    let batch = ApplyBatch {
        epoch: state.epoch,
        base,
        trades: groups.iter().map(|g| g.cmd.clone()).collect(),
    };
    let unknown = |e: String| {
        CommitError::Failed(
            OrderError::Unavailable(format!(
                "catalog call failed ({e}); the outcome is unknown: retry with the same Idempotency-Key"
            )),
            true,
        )
    };
    // The batch's id ties the catalog's log lines to the keys listed here.
    let batch_id = format!("batch-{}-{base}", state.epoch);
    tracing::debug!(
        batch = %batch_id,
        keys = ?groups.iter().map(|g| g.cmd.key.as_str()).collect::<Vec<_>>(),
        "sending a batch to the catalog"
    );
    let resp = node
        .client
        .post(format!("{}/apply", node.catalog_url))
        .header(common::request_id::REQUEST_ID_HEADER, &batch_id)
        .json(&batch)
        .send()
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let outcomes = match resp.status() {
        StatusCode::OK => {
            resp.json::<ApplyResult>()
                .await
                .map_err(|e| unknown(e.to_string()))?
                .outcomes
        }
        StatusCode::CONFLICT => match resp.json::<ConflictBody>().await.map(|b| b.conflict) {
            Ok(ApplyConflict::Sequence { .. }) => return Err(CommitError::Sequence),
            Ok(ApplyConflict::StaleEpoch { current }) => {
                node.swap_if(state, Role::Follower { leader: None });
                tracing::warn!(
                    epoch = state.epoch,
                    current,
                    "the catalog knows a newer leader; stepping down"
                );
                return Err(CommitError::Failed(OrderError::NotLeader, false));
            }
            Err(e) => return Err(unknown(e.to_string())),
        },
        s => return Err(unknown(format!("catalog answered {s}"))),
    };
    if outcomes.len() != groups.len() {
        return Err(unknown(format!(
            "catalog answered {} outcomes for {} trades",
            outcomes.len(),
            groups.len()
        )));
    }
    let records: Vec<OrderRecord> = groups
        .iter()
        .zip(&outcomes)
        .filter_map(|(g, o)| match o {
            TradeOutcome::Applied { number } => Some(OrderRecord {
                number: *number,
                name: g.cmd.name.clone(),
                kind: g.cmd.kind,
                quantity: g.cmd.quantity,
                key: g.cmd.key.clone(),
            }),
            TradeOutcome::Rejected { .. } => None,
        })
        .collect();
    common::fault::point(common::fault::AFTER_CATALOG_APPLY);
    if let Some(last) = records.last() {
        // The local flush and the followers' flushes run at once: the
        // answer waits for both, so a trade costs one flush of latency here,
        // not two in a row.
        let next = last.number + 1;
        let local = async {
            let stored = node.log.append(&records).await;
            if stored.is_ok() {
                common::fault::point(common::fault::AFTER_LOCAL_APPEND);
            }
            stored
        };
        let (stored, ()) = tokio::join!(
            local,
            broadcast(node, state.epoch, records.clone(), false, next)
        );
        stored.map_err(|e| CommitError::Failed(e.into(), true))?;
        crate::metrics::METRICS
            .trades_committed
            .inc_by(records.len() as u64);
        common::fault::point(common::fault::BEFORE_ACK);
    }
    Ok(outcomes)
}

/// Sends `orders` (or a heartbeat when empty) to the followers and waits
/// for their flushes. Followers that failed recently are skipped unless
/// `everyone`; a follower that answers with a newer epoch deposes us.
async fn broadcast(node: &Node, epoch: u64, orders: Vec<OrderRecord>, everyone: bool, next: u64) {
    let body = Propagate {
        epoch,
        leader_id: node.id,
        orders,
        next,
    };
    let body = match serde_json::to_vec(&body) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) => return tracing::error!(error = %e, "cannot encode a propagation"),
    };
    let now = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let lagging = node.lagging.lock().expect("lagging lock is never poisoned");
        for peer in &node.peers {
            if !everyone && lagging.get(&peer.id).is_some_and(|until| *until > now) {
                continue;
            }
            let request = node
                .propagate_client
                .post(format!("{}/propagate", peer.url))
                .header("content-type", "application/json")
                .body(body.clone());
            let id = peer.id;
            tasks.spawn(async move { (id, request.send().await) });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((id, result)) = joined else { continue };
        let mut lagging = node.lagging.lock().expect("lagging lock is never poisoned");
        match result {
            Ok(r) if r.status().is_success() => {
                if lagging.remove(&id).is_some() {
                    tracing::info!(follower = id, "follower is back in sync");
                }
            }
            Ok(r) if r.status() == StatusCode::CONFLICT => {
                tracing::warn!(follower = id, "follower knows a newer epoch; stepping down");
                node.swap_if(
                    RoleState {
                        epoch,
                        role: Role::Leader,
                    },
                    Role::Follower { leader: None },
                );
            }
            other => {
                let why = match other {
                    Ok(r) => r.status().to_string(),
                    Err(e) => e.to_string(),
                };
                crate::metrics::METRICS.propagation_failures.inc();
                if lagging
                    .insert(id, Instant::now() + FOLLOWER_RETRY)
                    .is_none()
                {
                    tracing::warn!(follower = id, error = %why, "propagation failed; follower will catch up later");
                }
            }
        }
    }
}

/// Leader heartbeat: followers learn the leader's `next` and pull what they
/// miss, so every replica converges even without new trades.
pub(crate) async fn run_heartbeat(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = node.role();
        if state.role == Role::Leader {
            broadcast(&node, state.epoch, Vec::new(), true, node.log.next()).await;
        }
    }
}
