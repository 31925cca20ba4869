//! HTTP routes of an order replica (docs/PROTOCOL.md). `GET /health` is
//! open; everything else is internal (cluster token): `POST /orders/batch`
//! (trades the front-end relays, leader only) and `POST /orders` (one
//! trade: a batch of one), `GET /orders/{n}`, `GET /synchronize`,
//! `GET /log`, `POST /propagate`, `POST /leader`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::http::{JsonBody, PathParam, QueryParams};
use common::types::{
    Data, Health, LeaderNotice, MAX_TRADE_BATCH, Order, OrderRecord, Propagate, RangeQuery, Role,
    SyncInfo, TradeAnswer, TradeBatch, TradeBatchResult, TradeCommand, TradeReceipt,
};

use crate::error::OrderError;
use crate::node::Node;
use crate::sequencer::Sequencer;

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub sequencer: Sequencer,
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
        Role::Follower | Role::Up => Err(OrderError::NotLeader),
    }
}

/// The one trade path: checks each trade, hands the valid ones to the
/// sequencer together, and answers one [`TradeAnswer`] per trade, in order.
async fn trade(
    s: &AppState,
    trades: Vec<TradeCommand>,
    request_ids: &[String],
) -> Vec<TradeAnswer> {
    let mut answers: Vec<Option<TradeAnswer>> = Vec::with_capacity(trades.len());
    let mut valid = Vec::with_capacity(trades.len());
    for cmd in trades {
        match check_trade(&cmd) {
            Ok(()) => {
                answers.push(None);
                valid.push(cmd);
            }
            Err(e) => answers.push(Some(OrderError::Api(e).as_answer())),
        }
    }
    let keys: Vec<String> = valid.iter().map(|c| c.key.clone()).collect();
    let mut committed = s.sequencer.submit(valid).await.into_iter().zip(keys);
    answers
        .into_iter()
        .enumerate()
        .map(|(i, refused)| {
            refused.unwrap_or_else(|| {
                let Some((answer, key)) = committed.next() else {
                    return TradeAnswer::retry(Role::Leader, "the sequencer gave no answer");
                };
                if let TradeAnswer::Committed { transaction_number } = &answer {
                    tracing::debug!(
                        number = transaction_number,
                        %key,
                        request_id = request_ids.get(i).map_or("", String::as_str),
                        "trade committed"
                    );
                }
                answer
            })
        })
        .collect()
}

/// One trade: a batch of one, answered with the contract's status.
async fn place(
    State(s): State<AppState>,
    JsonBody(cmd): JsonBody<TradeCommand>,
) -> Result<Json<Data<TradeReceipt>>, OrderError> {
    check_trade(&cmd)?;
    require_leader(&s.node)?;
    let request_id = common::request_id::current().map(|id| id.to_string());
    let answer = trade(&s, vec![cmd], request_id.as_slice())
        .await
        .pop()
        .unwrap_or_else(|| TradeAnswer::retry(Role::Leader, "the sequencer gave no answer"));
    match answer {
        TradeAnswer::Retry { message, role } => Err(OrderError::Retry {
            message,
            role: role.unwrap_or(Role::Leader),
        }),
        other => Ok(Json(Data::new(other.into_http()?))),
    }
}

/// Every trade of the batch is queued at once (the sequencer commits them
/// together with whatever else is queued) and answered on its own.
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
    let outcomes = trade(&s, batch.trades, &batch.request_ids).await;
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
    let next = to_the_end("propagation", async move {
        crate::replication::receive(&node, p).await
    })
    .await?;
    Ok(Json(SyncInfo {
        highest: next.checked_sub(1),
        epoch: s.node.role().epoch,
    }))
}

async fn leader_notice(
    State(s): State<AppState>,
    JsonBody(n): JsonBody<LeaderNotice>,
) -> Result<Json<Health>, OrderError> {
    // The new epoch is persisted, then taken in memory: both, even if the
    // front-end gives up waiting.
    let node = s.node.clone();
    let health = to_the_end("leader notice", async move {
        crate::takeover::on_leader_notice(&node, n).await
    })
    .await?;
    Ok(Json(health))
}

/// [`common::task::to_the_end`] for a route's work.
async fn to_the_end<T: Send + 'static>(
    what: &'static str,
    work: impl Future<Output = Result<T, OrderError>> + Send + 'static,
) -> Result<T, OrderError> {
    common::task::to_the_end(what, work)
        .await
        .unwrap_or_else(|stopped| Err(OrderError::Unavailable(stopped)))
}
