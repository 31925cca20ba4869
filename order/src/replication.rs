//! Both sides of moving orders between replicas (docs/PROTOCOL.md): the
//! leader propagates new orders and heartbeats to the followers; a follower
//! receives them and fills any gap from the leader; every replica catches
//! up from its peers at start and when selected leader, by pulling pages
//! of a paged log (`/log` of a peer, `/applied` of the catalog).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::client::CallError;
use common::types::{OrderRecord, Propagate, RangeQuery, Role, SyncInfo};

use crate::error::OrderError;
use crate::node::{Node, Peer};
use crate::store::MAX_RANGE;

/// Most pages one catch-up pulls before it re-checks where peers are; a peer
/// that keeps growing cannot keep a catch-up running forever.
const MAX_PAGES_PER_PULL: u64 = 100_000;
/// How often the leader tells followers its `next`, so a follower that
/// missed propagations converges even when no trades arrive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// After a failed propagation a follower is skipped this long before the
/// leader tries it again, so a dead follower costs one timeout per interval.
pub const FOLLOWER_RETRY: Duration = Duration::from_secs(1);

/// Asks every peer for its highest order and epoch, pulls what this replica
/// lacks from the peer with the most orders, and adopts the highest epoch
/// seen. Unreachable peers are skipped. Returns the number of orders pulled.
pub async fn catch_up_from_peers(node: &Node) -> Result<u64, OrderError> {
    let mut tasks = tokio::task::JoinSet::new();
    for peer in node.peers.clone() {
        let client = node.client.clone();
        tasks.spawn(async move {
            let info = client
                .get::<SyncInfo>(format!("{}/synchronize", peer.url))
                .await;
            (peer, info)
        });
    }
    let mut best: Option<(Peer, u64)> = None;
    let mut max_epoch = 0;
    while let Some(joined) = tasks.join_next().await {
        let Ok((peer, info)) = joined else { continue };
        match info {
            Ok(info) => {
                max_epoch = max_epoch.max(info.epoch);
                let next = info.highest.map_or(0, |h| h + 1);
                if best.as_ref().is_none_or(|(_, n)| next > *n) {
                    best = Some((peer, next));
                }
            }
            Err(e) => {
                tracing::debug!(peer = peer.id, error = %e, "peer did not answer synchronize")
            }
        }
    }
    let now = node.role();
    if max_epoch > now.epoch {
        // Learn the epoch only; the role comes from the front-end's notice.
        let next = if now.role == Role::Follower {
            crate::node::RoleState {
                epoch: max_epoch,
                ..now
            }
        } else {
            Node::following(max_epoch, None)
        };
        node.adopt(next).await?;
    }
    let Some((peer, target)) = best else {
        return Ok(0);
    };
    let before = node.log.next();
    if target <= before {
        return Ok(0);
    }
    tracing::info!(
        peer = peer.id,
        from = before,
        to = target - 1,
        "catching up from peer"
    );
    pull(node, &format!("{}/log", peer.url), target).await?;
    let pulled = node.log.next() - before;
    tracing::info!(peer = peer.id, pulled, highest = ?node.log.highest(), "caught up");
    Ok(pulled)
}

/// Pulls pages from a paged log endpoint (`/log` of a replica or `/applied`
/// of the catalog) until this replica holds every order below `target`.
pub async fn pull(node: &Node, endpoint: &str, target: u64) -> Result<(), OrderError> {
    crate::metrics::METRICS.catch_up_runs.inc();
    let before = node.log.next();
    let result = pull_pages(node, endpoint, target).await;
    crate::metrics::METRICS
        .orders_pulled
        .inc_by(node.log.next().saturating_sub(before));
    result
}

async fn pull_pages(node: &Node, endpoint: &str, target: u64) -> Result<(), OrderError> {
    for _ in 0..MAX_PAGES_PER_PULL {
        let from = node.log.next();
        if from >= target {
            return Ok(());
        }
        let query = RangeQuery {
            from,
            limit: MAX_RANGE,
        };
        let page: Vec<OrderRecord> = node
            .client
            .send(node.client.http().get(endpoint).query(&query))
            .await
            .map_err(|e| OrderError::Unavailable(format!("pulling orders from {endpoint}: {e}")))?;
        if page.is_empty() {
            return Err(OrderError::Unavailable(format!(
                "{endpoint} has no order {from}"
            )));
        }
        node.log.append(&page).await?;
    }
    Err(OrderError::Unavailable(format!(
        "catch-up from {endpoint} did not finish"
    )))
}

/// A follower receives orders from the leader of `p.epoch`. Orders it holds
/// already are skipped; a gap before them is fetched from the leader first,
/// so the log never has a hole. Returns the follower's new `next`.
pub async fn receive(node: &Node, p: Propagate) -> Result<u64, OrderError> {
    let current = node.role();
    if p.epoch < current.epoch {
        return Err(OrderError::StaleEpoch {
            got: p.epoch,
            current: current.epoch,
        });
    }
    if p.leader_id == node.id {
        return Err(common::ApiError::bad_request("a replica cannot follow itself").into());
    }
    let leader = node.peer(p.leader_id).ok_or_else(|| {
        common::ApiError::bad_request(format!("unknown leader id {}", p.leader_id))
    })?;
    let wanted = Node::following(p.epoch, Some(p.leader_id));
    if current != wanted {
        let (now, taken) = node.adopt(wanted).await?;
        if !taken {
            return Err(OrderError::StaleEpoch {
                got: p.epoch,
                current: now.epoch,
            });
        }
    }
    let leader_log = format!("{}/log", leader.url);
    if let Some(first) = p.orders.first().map(|o| o.number)
        && first > node.log.next()
    {
        tracing::info!(
            from = node.log.next(),
            to = first - 1,
            leader = p.leader_id,
            "filling a gap from the leader"
        );
        pull(node, &leader_log, first).await?;
    }
    node.log.append(&p.orders).await?;
    crate::metrics::METRICS
        .replication_lag
        .set(i64::try_from(p.next.saturating_sub(node.log.next())).unwrap_or(i64::MAX));
    if node.log.next() < p.next {
        tracing::info!(
            from = node.log.next(),
            to = p.next - 1,
            leader = p.leader_id,
            "catching up with the leader"
        );
        pull(node, &leader_log, p.next).await?;
        crate::metrics::METRICS.replication_lag.set(0);
    }
    Ok(node.log.next())
}

/// Sends `orders` (or a heartbeat when empty) to the followers and waits
/// for their flushes. Followers that failed recently are skipped unless
/// `everyone`; a follower that answers with a newer epoch deposes us.
pub async fn propagate(
    node: &Node,
    epoch: u64,
    orders: Vec<OrderRecord>,
    everyone: bool,
    next: u64,
) {
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
                .http()
                .post(format!("{}/propagate", peer.url))
                .header("content-type", "application/json")
                .body(body.clone());
            let client = node.propagate_client.clone();
            let id = peer.id;
            tasks.spawn(async move { (id, client.send::<SyncInfo>(request).await) });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((id, result)) = joined else { continue };
        let mut lagging = node.lagging.lock().expect("lagging lock is never poisoned");
        match result {
            Ok(_) => {
                if lagging.remove(&id).is_some() {
                    tracing::info!(follower = id, "follower is back in sync");
                }
            }
            Err(CallError::Status { error, .. }) if error.status == StatusCode::CONFLICT => {
                tracing::warn!(follower = id, "follower knows a newer epoch; stepping down");
                node.step_down(crate::node::RoleState {
                    epoch,
                    role: Role::Leader,
                    leader: Some(node.id),
                });
            }
            Err(e) => {
                crate::metrics::METRICS.propagation_failures.inc();
                if lagging
                    .insert(id, Instant::now() + FOLLOWER_RETRY)
                    .is_none()
                {
                    tracing::warn!(follower = id, error = %e, "propagation failed; follower will catch up later");
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
            propagate(&node, state.epoch, Vec::new(), true, node.log.next()).await;
        }
    }
}
