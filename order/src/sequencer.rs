//! The leader's sequencer: it turns queued trades into durable, replicated
//! orders in batches, so one catalog call, one flush per replica and one
//! propagation serve many trades. Every trade reaches it as part of a batch
//! (a single trade is a batch of one) and leaves it with one
//! [`TradeAnswer`], which travels unchanged to the front-end.
//!
//! A batch: the catalog applies and numbers it, then this log appends it
//! while the followers receive it (in parallel), then the answers go out.

use std::collections::HashMap;
use std::sync::Arc;

use common::metrics::timed;
use common::types::{ApplyBatch, OrderRecord, Role, TradeAnswer, TradeCommand, TradeOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::CatalogError;
use crate::error::OrderError;
use crate::node::{Node, RoleState};
use crate::replication::propagate;
use crate::takeover::reconcile;

/// Trades waiting for the sequencer; beyond this the leader sheds load
/// (the trade is answered "retry") instead of queueing without bound.
pub const QUEUE_CAPACITY: usize = 8192;
/// Most trades in one batch (the catalog accepts up to 4096).
pub const MAX_BATCH: usize = 1024;

struct Pending {
    cmd: TradeCommand,
    reply: oneshot::Sender<TradeAnswer>,
}

/// The handle routes use to hand trades to the sequencer.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Pending>,
}

impl Sequencer {
    /// Starts the sequencer task of `node`.
    pub fn spawn(node: Arc<Node>) -> Sequencer {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(node, rx));
        Sequencer { tx }
    }

    /// Queues every trade at once (so they share batches) and waits for
    /// each one's answer, in order.
    pub async fn submit(&self, trades: Vec<TradeCommand>) -> Vec<TradeAnswer> {
        let queued: Vec<_> = trades
            .into_iter()
            .map(|cmd| {
                let (reply, answer) = oneshot::channel();
                self.tx
                    .try_send(Pending { cmd, reply })
                    .map(|()| answer)
                    .map_err(|_| {
                        TradeAnswer::retry(
                            Role::Leader,
                            "the leader's trade queue is full; retry later",
                        )
                    })
            })
            .collect();
        let mut answers = Vec::with_capacity(queued.len());
        for q in queued {
            answers.push(match q {
                Ok(answer) => answer
                    .await
                    .unwrap_or_else(|_| TradeAnswer::retry(Role::Leader, "the sequencer stopped")),
                Err(refused) => refused,
            });
        }
        answers
    }
}

/// Takes queued trades in batches for as long as the process runs.
async fn run(node: Arc<Node>, mut rx: mpsc::Receiver<Pending>) {
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

/// Trades with the same key in one batch share one answer.
struct Group {
    cmd: TradeCommand,
    replies: Vec<oneshot::Sender<TradeAnswer>>,
}

impl Group {
    fn answer(self, answer: &TradeAnswer) {
        for r in self.replies {
            let _ = r.send(answer.clone());
        }
    }
}

/// Groups the batch by key; a key that comes again with a different trade
/// is answered 422 at once.
fn group_by_key(batch: Vec<Pending>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::with_capacity(batch.len());
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for p in batch {
        match by_key.get(&p.cmd.key) {
            Some(&i) if !groups[i].cmd.same_trade(&p.cmd) => {
                let first = &groups[i].cmd;
                let earlier = format!("{} {} {}", first.name, first.kind.as_str(), first.quantity);
                let _ = p.reply.send(p.cmd.key_reused(&earlier));
            }
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
    groups
}

fn fail_all(groups: Vec<Group>, e: &OrderError) {
    let answer = e.as_answer();
    for g in groups {
        g.answer(&answer);
    }
}

async fn process(node: &Node, batch: Vec<Pending>, needs_reconcile: &mut bool) {
    let state = node.role();
    let mut groups = group_by_key(batch);
    if state.role != Role::Leader {
        let not_ready = if state.role == Role::CatchingUp {
            OrderError::CatchingUp
        } else {
            OrderError::NotLeader
        };
        return fail_all(groups, &not_ready);
    }
    // Two rounds: a sequence conflict means another leader's orders reached
    // the catalog; after reconciling, one more try is enough.
    for _round in 0..2 {
        if *needs_reconcile {
            if let Err(e) = reconcile(node, state.epoch).await {
                if matches!(e, OrderError::StaleEpoch { .. }) {
                    node.step_down(state);
                } else {
                    note_failure(node, state, &e);
                }
                return fail_all(groups, &e);
            }
            *needs_reconcile = false;
        }
        // A retried trade whose first attempt did commit is answered from
        // the log, never applied twice (the log is reconciled at this point).
        let mut fresh = Vec::with_capacity(groups.len());
        for g in groups {
            match earlier_answer(node, &g.cmd) {
                Ok(Some(answer)) => g.answer(&answer),
                Ok(None) => fresh.push(g),
                Err(e) => g.answer(&e.as_answer()),
            }
        }
        groups = fresh;
        if groups.is_empty() {
            return;
        }
        match commit(node, state, &groups).await {
            Ok(answers) => {
                node.readiness.commit_succeeded();
                for (g, a) in groups.into_iter().zip(answers) {
                    g.answer(&a);
                }
                return;
            }
            Err(CommitError::Sequence) => *needs_reconcile = true,
            Err(CommitError::Failed(e, unknown_outcome)) => {
                if !matches!(e, OrderError::NotLeader) {
                    note_failure(node, state, &e);
                }
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

/// The answer a trade already has: the number its key got, or 422 when
/// the key names a different trade. `None` for a key never used.
fn earlier_answer(node: &Node, cmd: &TradeCommand) -> Result<Option<TradeAnswer>, OrderError> {
    let Some(number) = node.log.by_key(&cmd.key)? else {
        return Ok(None);
    };
    let record = node.log.get(number)?.ok_or_else(|| {
        OrderError::Unavailable(format!(
            "key {} names order {number}, which is missing",
            cmd.key
        ))
    })?;
    let earlier = TradeCommand {
        name: record.name,
        kind: record.kind,
        quantity: record.quantity,
        key: record.key,
    };
    Ok(Some(if earlier.same_trade(cmd) {
        TradeAnswer::Committed {
            transaction_number: number,
        }
    } else {
        cmd.key_reused(&format!(
            "order {number}: {} {} {}",
            earlier.name,
            earlier.kind.as_str(),
            earlier.quantity
        ))
    }))
}

/// A commit failed: it counts against readiness only while this replica
/// still leads in the state it committed in (a commit that ends after the
/// leadership moved speaks of a leadership that is over).
fn note_failure(node: &Node, state: RoleState, e: &OrderError) {
    if node.role() == state {
        node.readiness.commit_failed(&e.to_string());
    }
}

enum CommitError {
    /// The catalog expects another base number: reconcile and retry.
    Sequence,
    /// The batch failed; `true` when the catalog may have applied it.
    Failed(OrderError, bool),
}

/// Catalog first (it applies and numbers), then this log and the
/// followers at once. Returns one answer per group.
async fn commit(
    node: &Node,
    state: RoleState,
    groups: &[Group],
) -> Result<Vec<TradeAnswer>, CommitError> {
    let base = node.log.next();
    let batch = ApplyBatch {
        leader_id: Some(node.id),
        epoch: state.epoch,
        base,
        trades: groups.iter().map(|g| g.cmd.clone()).collect(),
    };
    // The batch's id ties the catalog's log lines to the keys listed here.
    let batch_id = format!("batch-{}-{base}", state.epoch);
    tracing::debug!(
        batch = %batch_id,
        keys = ?groups.iter().map(|g| g.cmd.key.as_str()).collect::<Vec<_>>(),
        "sending a batch to the catalog"
    );
    let stages = &crate::metrics::METRICS.commit;
    let verdicts = match timed(&stages.catalog, node.catalog.apply(&batch, &batch_id)).await {
        Ok(v) => v,
        Err(CatalogError::Sequence { .. }) => return Err(CommitError::Sequence),
        Err(CatalogError::StaleEpoch { current }) => {
            node.step_down(state);
            tracing::warn!(
                epoch = state.epoch,
                current,
                "the catalog knows a newer leader; stepping down"
            );
            return Err(CommitError::Failed(OrderError::NotLeader, false));
        }
        Err(CatalogError::Failed(e)) => {
            return Err(CommitError::Failed(
                OrderError::Unavailable(format!(
                    "{e}; the outcome is unknown: retry with the same Idempotency-Key"
                )),
                true,
            ));
        }
    };
    let records: Vec<OrderRecord> = groups
        .iter()
        .zip(&verdicts)
        .filter_map(|(g, v)| match v {
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
            let stored = timed(&stages.append, node.log.append(&records)).await;
            if stored.is_ok() {
                common::fault::point(common::fault::AFTER_LOCAL_APPEND);
            }
            stored
        };
        let (stored, ()) = tokio::join!(
            local,
            timed(
                &stages.followers,
                propagate(node, state.epoch, records.clone(), false, next)
            )
        );
        stored.map_err(|e| CommitError::Failed(e.into(), true))?;
        crate::metrics::METRICS
            .trades_committed
            .inc_by(records.len() as u64);
        common::fault::point(common::fault::BEFORE_ACK);
    }
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            TradeOutcome::Applied { number } => TradeAnswer::Committed {
                transaction_number: number,
            },
            TradeOutcome::Rejected { code, message } => TradeAnswer::Refused { code, message },
        })
        .collect())
}
