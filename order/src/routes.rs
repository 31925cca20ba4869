//! HTTP routes of an order replica. `GET /health` is open; everything else
//! is internal (cluster token): `POST /orders` (trade, leader only),
//! `GET /orders/{n}`, `GET /synchronize`, `GET /log`, `POST /propagate`,
//! `POST /leader`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::http::JsonBody;
use common::types::{
    Data, Health, LeaderNotice, Order, OrderRecord, Propagate, RangeQuery, SyncInfo, TradeCommand,
    TradeReceipt,
};
use tokio::sync::oneshot;

use crate::error::OrderError;
use crate::leader::{Pending, take_leadership};
use crate::node::{Node, Role};

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route("/orders", post(place))
        .route("/orders/{number}", get(query))
        .route("/synchronize", get(synchronize))
        .route("/log", get(log_range))
        .route("/propagate", post(propagate))
        .route("/leader", post(leader_notice));
    let internal = common::http::require_token(internal, state.token.clone());
    Router::new()
        .route("/health", get(health))
        .merge(internal)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(s.node.health())
}

async fn synchronize(State(s): State<AppState>) -> Json<SyncInfo> {
    Json(SyncInfo {
        highest: s.node.log.highest(),
        epoch: s.node.role().epoch,
    })
}

async fn place(
    State(s): State<AppState>,
    JsonBody(cmd): JsonBody<TradeCommand>,
) -> Result<Json<Data<TradeReceipt>>, OrderError> {
    common::types::validate_stock_name(&cmd.name).map_err(ApiError::bad_request)?;
    if cmd.key.is_empty() || cmd.key.len() > common::types::MAX_INTERNAL_KEY_LEN {
        return Err(ApiError::bad_request("trade key missing or too long").into());
    }
    if !(1..=common::types::MAX_TRADE_QUANTITY).contains(&cmd.quantity) {
        return Err(ApiError::bad_request("quantity out of range").into());
    }
    match s.node.role().role {
        Role::Leader => {}
        Role::CatchingUp => return Err(OrderError::CatchingUp),
        Role::Follower { .. } => return Err(OrderError::NotLeader),
    }
    let (tx, rx) = oneshot::channel();
    let key = cmd.key.clone();
    s.node
        .sequencer
        .try_send(Pending { cmd, reply: tx })
        .map_err(|_| {
            OrderError::Unavailable("the leader's trade queue is full; retry later".into())
        })?;
    let number = rx
        .await
        .map_err(|_| OrderError::Unavailable("the sequencer stopped".into()))??;
    tracing::debug!(number, %key, "trade committed");
    Ok(Json(Data::new(TradeReceipt {
        transaction_number: number,
    })))
}

async fn query(
    State(s): State<AppState>,
    Path(number): Path<String>,
) -> Result<Json<Data<Order>>, OrderError> {
    let n: u64 = number.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "order number must be a non-negative integer, got {number:?}"
        ))
    })?;
    match s.node.log.get(n)? {
        Some(r) => Ok(Json(Data::new(r.to_order()))),
        None if s.node.role().role == Role::CatchingUp => Err(OrderError::CatchingUp),
        None => Err(ApiError::not_found(format!("no order {n}")).into()),
    }
}

async fn log_range(
    State(s): State<AppState>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Vec<OrderRecord>>, OrderError> {
    Ok(Json(s.node.log.range(q.from, q.limit)?))
}

async fn propagate(
    State(s): State<AppState>,
    JsonBody(p): JsonBody<Propagate>,
) -> Result<Json<SyncInfo>, OrderError> {
    // Run to completion even if the leader gives up waiting, so a catch-up
    // is never cut between its write and its flush.
    let node = s.node.clone();
    let next = tokio::spawn(async move { crate::replication::receive(&node, p).await })
        .await
        .map_err(|e| OrderError::Unavailable(format!("propagation task failed: {e}")))??;
    Ok(Json(SyncInfo {
        highest: next.checked_sub(1),
        epoch: s.node.role().epoch,
    }))
}

async fn leader_notice(
    State(s): State<AppState>,
    JsonBody(n): JsonBody<LeaderNotice>,
) -> Result<Json<Health>, OrderError> {
    let node = &s.node;
    if n.leader_id != node.id && node.peer(n.leader_id).is_none() {
        return Err(ApiError::bad_request(format!("no replica has id {}", n.leader_id)).into());
    }
    let current = node.role();
    let me = n.leader_id == node.id;
    if current.epoch == n.epoch && me && matches!(current.role, Role::Leader | Role::CatchingUp) {
        return Ok(Json(node.health()));
    }
    let role = if me {
        Role::CatchingUp
    } else {
        Role::Follower {
            leader: Some(n.leader_id),
        }
    };
    let (state, taken) = node.adopt(n.epoch, role).await?;
    if !taken {
        return Err(OrderError::StaleEpoch {
            got: n.epoch,
            current: state.epoch,
        });
    }
    if me {
        tokio::spawn(take_leadership(node.clone(), state));
    }
    Ok(Json(node.health()))
}
