//! Moving orders between replicas: catch-up from peers at start and when a
//! leader is selected, pulling ranges, receiving propagations, filling gaps.

use common::types::{OrderRecord, Propagate, SyncInfo};

use crate::error::OrderError;
use crate::node::{Node, Role};
use crate::store::MAX_RANGE;

/// Most pages one catch-up pulls before it re-checks where peers are; a peer
/// that keeps growing cannot keep a catch-up running forever.
const MAX_PAGES_PER_PULL: u64 = 100_000;

/// Asks every peer for its highest order and epoch, pulls what this replica
/// lacks from the peer with the most orders, and adopts the highest epoch
/// seen. Unreachable peers are skipped. Returns the number of orders pulled.
pub async fn catch_up_from_peers(node: &Node) -> Result<u64, OrderError> {
    let mut tasks = tokio::task::JoinSet::new();
    for peer in node.peers.clone() {
        let client = node.client.clone();
        tasks.spawn(async move {
            let info = async {
                let r = client
                    .get(format!("{}/synchronize", peer.url))
                    .send()
                    .await?
                    .error_for_status()?;
                r.json::<SyncInfo>().await
            }
            .await;
            (peer, info)
        });
    }
    let mut best: Option<(crate::node::Peer, u64)> = None;
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
    if max_epoch > node.role().epoch {
        // Learn the epoch only; the role comes from the front-end's notice.
        let role = node.role().role;
        let role = if role == Role::Leader || role == Role::CatchingUp {
            Role::Follower { leader: None }
        } else {
            role
        };
        node.adopt(max_epoch, role).await?;
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
        let page: Vec<OrderRecord> = node
            .client
            .get(endpoint)
            .query(&[("from", from.to_string()), ("limit", MAX_RANGE.to_string())])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OrderError::Unavailable(format!("pulling orders from {endpoint}: {e}")))?
            .json()
            .await
            .map_err(|e| OrderError::Unavailable(format!("bad page from {endpoint}: {e}")))?;
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
        return Err(OrderError::Api(common::ApiError::bad_request(
            "a replica cannot follow itself",
        )));
    }
    if p.epoch > current.epoch
        || current.role
            != (Role::Follower {
                leader: Some(p.leader_id),
            })
    {
        let (now, taken) = node
            .adopt(
                p.epoch,
                Role::Follower {
                    leader: Some(p.leader_id),
                },
            )
            .await?;
        if !taken {
            return Err(OrderError::StaleEpoch {
                got: p.epoch,
                current: now.epoch,
            });
        }
    }
    let leader = node.peer(p.leader_id).ok_or_else(|| {
        OrderError::Api(common::ApiError::bad_request(format!(
            "unknown leader id {}",
            p.leader_id
        )))
    })?;
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
