//! HTTP routes of an order replica. `GET /health` is open; everything else
//! is internal (cluster token): `POST /orders` (trade, leader only),
//! `POST /orders/batch` (trades the front-end relays together, leader only),
//! `GET /orders/{n}`, `GET /synchronize`, `GET /log`, `POST /propagate`,
//! `POST /leader`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::http::{JsonBody, PathParam, QueryParams};
use common::types::{
    Data, Health, LeaderNotice, MAX_TRADE_BATCH, Order, OrderRecord, Propagate, RangeQuery,
    RelayedTrade, SyncInfo, TradeBatch, TradeBatchResult, TradeCommand, TradeReceipt,
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
        .route("/orders/batch", post(place_batch))
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

/// The checks a trade passes before it is queued.
fn check_trade(cmd: &TradeCommand) -> Result<(), ApiError> {
    common::types::validate_stock_name(&cmd.name).map_err(ApiError::bad_request)?;
    if cmd.key.is_empty() || cmd.key.len() > common::types::MAX_INTERNAL_KEY_LEN {
        return Err(ApiError::bad_request("trade key missing or too long"));
    }
    if !(1..=common::types::MAX_TRADE_QUANTITY).contains(&cmd.quantity) {
        return Err(ApiError::bad_request("quantity out of range"));
    }
    Ok(())
}

/// Only the leader takes trades; the role rides on the error so the
/// front-end knows whether to wait or select again.
fn require_leader(node: &Node) -> Result<(), OrderError> {
    match node.role().role {
        Role::Leader => Ok(()),
        Role::CatchingUp => Err(OrderError::CatchingUp),
        Role::Follower { .. } => Err(OrderError::NotLeader),
    }
}

async fn place(
    State(s): State<AppState>,
    JsonBody(cmd): JsonBody<TradeCommand>,
) -> Result<Json<Data<TradeReceipt>>, OrderError> {
    check_trade(&cmd)?;
    require_leader(&s.node)?;
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

/// Queues every trade of the batch at once (the sequencer commits them
/// together with whatever else is queued) and answers one outcome each.
async fn place_batch(
    State(s): State<AppState>,
    JsonBody(batch): JsonBody<TradeBatch>,
) -> Result<Json<Data<TradeBatchResult>>, OrderError> {
    if batch.trades.is_empty() || batch.trades.len() > MAX_TRADE_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_TRADE_BATCH} trades, got {}",
            batch.trades.len()
        ))
        .into());
    }
    require_leader(&s.node)?;
    let keys: Vec<String> = batch.trades.iter().map(|c| c.key.clone()).collect();
    let queued: Vec<Result<oneshot::Receiver<_>, RelayedTrade>> = batch
        .trades
        .into_iter()
        .map(|cmd| {
            if let Err(e) = check_trade(&cmd) {
                return Err(RelayedTrade::Refused {
                    code: e.status.as_u16(),
                    message: e.message,
                });
            }
            let (tx, rx) = oneshot::channel();
            s.node
                .sequencer
                .try_send(Pending { cmd, reply: tx })
                .map(|()| rx)
                .map_err(|_| RelayedTrade::Retry {
                    message: "the leader's trade queue is full; retry later".into(),
                })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(queued.len());
    for (i, q) in queued.into_iter().enumerate() {
        outcomes.push(match q {
            Err(outcome) => outcome,
            Ok(rx) => match rx.await {
                Ok(Ok(number)) => {
                    tracing::debug!(
                        number,
                        key = %keys[i],
                        request_id = batch.request_ids.get(i).map_or("", String::as_str),
                        "trade committed"
                    );
                    RelayedTrade::Committed {
                        transaction_number: number,
                    }
                }
                Ok(Err(OrderError::Api(e))) if e.status.is_client_error() => {
                    RelayedTrade::Refused {
                        code: e.status.as_u16(),
                        message: e.message,
                    }
                }
                Ok(Err(e)) => RelayedTrade::Retry {
                    message: e.to_string(),
                },
                Err(_) => RelayedTrade::Retry {
                    message: "the sequencer stopped".into(),
                },
            },
        });
    }
    Ok(Json(Data::new(TradeBatchResult { outcomes })))
}

async fn query(
    State(s): State<AppState>,
    PathParam(number): PathParam<String>,
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
    QueryParams(q): QueryParams<RangeQuery>,
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
