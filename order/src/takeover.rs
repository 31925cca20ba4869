//! Becoming leader (docs/PROTOCOL.md, "A leader's takeover"): the
//! front-end's leader notice changes the role ([`on_leader_notice`]); a
//! replica named leader catches up from its peers, fences the catalog and
//! pulls every order the catalog applied that its log lacks, and only then
//! takes trades ([`take_leadership`]). The sequencer reconciles the same way
//! ([`reconcile`]) when the catalog's numbering moved under it.

use std::sync::Arc;
use std::time::Duration;

use common::ApiError;
use common::types::{Health, LeaderNotice, Role};

use crate::catalog::CatalogError;
use crate::error::OrderError;
use crate::node::{Node, RoleState};
use crate::replication::{catch_up_from_peers, propagate, pull};

/// Longest pause between attempts to take leadership while the catalog or
/// the disk fails.
const MAX_TAKEOVER_BACKOFF: Duration = Duration::from_secs(1);

/// `POST /leader`: the front-end names the leader of `n.epoch`. This replica
/// follows it, or, when named itself, starts catching up to lead.
pub async fn on_leader_notice(node: &Arc<Node>, n: LeaderNotice) -> Result<Health, OrderError> {
    if n.leader_id != node.id && node.peer(n.leader_id).is_none() {
        return Err(ApiError::bad_request(format!("no replica has id {}", n.leader_id)).into());
    }
    let current = node.role();
    let me = n.leader_id == node.id;
    if current.epoch == n.epoch && me && matches!(current.role, Role::Leader | Role::CatchingUp) {
        return Ok(node.health());
    }
    // One leader per epoch: several front-ends may propose the same epoch
    // with different leaders, and only the first proposal a replica hears
    // stands (the others adopt it when they look again).
    if current.epoch == n.epoch
        && let Some(leader) = current.leader.filter(|l| *l != n.leader_id)
    {
        return Err(OrderError::EpochTaken {
            epoch: n.epoch,
            leader,
        });
    }
    let next = if me {
        RoleState {
            epoch: n.epoch,
            role: Role::CatchingUp,
            leader: Some(node.id),
        }
    } else {
        Node::following(n.epoch, Some(n.leader_id))
    };
    let (state, taken) = node.adopt(next).await?;
    if !taken {
        return Err(OrderError::StaleEpoch {
            got: n.epoch,
            current: state.epoch,
        });
    }
    if me {
        tokio::spawn(take_leadership(node.clone(), state));
    }
    Ok(node.health())
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
        match reconcile(&node, state.epoch).await {
            Ok(()) => {
                if node.swap_if(state, Role::Leader) {
                    tracing::info!(epoch = state.epoch, highest = ?node.log.highest(), "leading");
                    propagate(&node, state.epoch, Vec::new(), true, node.log.next()).await;
                }
                return;
            }
            Err(OrderError::StaleEpoch { .. }) => {
                node.step_down(state);
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
pub async fn reconcile(node: &Node, epoch: u64) -> Result<(), OrderError> {
    let next = node
        .catalog
        .fence(epoch, node.id)
        .await
        .map_err(|e| match e {
            CatalogError::StaleEpoch { current } => OrderError::StaleEpoch {
                got: epoch,
                current,
            },
            other => OrderError::Unavailable(format!("fencing the catalog: {other}")),
        })?;
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
        pull(node, &node.catalog.applied_url(), next).await?;
    }
    Ok(())
}
