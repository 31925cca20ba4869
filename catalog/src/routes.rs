//! HTTP routes of the catalog. Public: `GET /stocks/{name}`, `GET /health`.
//! Internal (cluster token): `POST /apply`, `POST /fence`, `GET /applied`,
//! `GET /dump` (see docs/PROTOCOL.md). Handlers answer with
//! [`CatalogError`], which maps each failure to its status once.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::http::{JsonBody, PathParam, QueryParams};
use common::types::{
    ApplyBatch, ApplyResult, Data, Fence, FenceResult, Health, OrderRecord, RangeQuery, Role,
    Stock, StockRow, TradeOutcome,
};

use crate::error::CatalogError;
use crate::invalidate::Invalidator;
use crate::store::{Catalog, to_the_end};

/// Largest batch a leader may send; bounds the size of its write.
pub const MAX_APPLY_BATCH: usize = 4096;

#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub invalidator: Option<Invalidator>,
    pub token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route("/apply", post(apply))
        .route("/fence", post(fence))
        .route("/applied", get(applied))
        .route("/dump", get(dump));
    let internal = common::http::require_token(internal, state.token.clone());
    Router::new()
        .route("/health", get(health))
        .route("/stocks/{name}", get(lookup))
        .merge(internal)
        .with_state(state)
}

/// Alive, and ready while its storage works: a catalog whose storage
/// failed serves lookups of what is durable but applies nothing until it
/// restarts (by itself, see `common::storage`).
async fn health(State(s): State<AppState>) -> Json<Health> {
    let (epoch, next) = s.catalog.position().await;
    let (storage, cause) = s.catalog.storage();
    let reason = cause
        .map(|cause| {
            format!(
                "storage {}: trades are refused until the catalog restarts on what is durable \
                 ({cause})",
                storage.as_str()
            )
        })
        .or_else(|| {
            (s.catalog.scan() == common::storage::ScanState::Running)
                .then(|| "checking the older applied records".to_string())
        });
    Json(Health {
        service: "catalog".into(),
        id: None,
        role: Role::Up,
        epoch,
        highest: next.checked_sub(1),
        ready: reason.is_none(),
        reason,
        storage,
    })
}

async fn lookup(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Data<Stock>>, CatalogError> {
    common::types::validate_stock_name(&name).map_err(CatalogError::BadRequest)?;
    match s.catalog.get(&name)? {
        Some(row) => Ok(Json(Data::new(Stock {
            name: row.name,
            price: row.price,
            quantity: row.quantity,
        }))),
        None => Err(CatalogError::UnknownStock(name)),
    }
}

async fn apply(
    State(s): State<AppState>,
    JsonBody(batch): JsonBody<ApplyBatch>,
) -> Result<Json<ApplyResult>, CatalogError> {
    if batch.trades.len() > MAX_APPLY_BATCH {
        return Err(CatalogError::BadRequest(format!(
            "at most {MAX_APPLY_BATCH} trades per batch"
        )));
    }
    // The batch and the front-ends' invalidations are one piece of work: a
    // leader that hangs up mid-way (killed, or timed out) must not leave a
    // batch applied whose changed stocks no front-end was told of. (The
    // store's apply is a task of its own too, for its other callers.)
    let outcomes = to_the_end("apply and invalidate", apply_and_invalidate(s, batch)).await?;
    Ok(Json(ApplyResult { outcomes }))
}

async fn apply_and_invalidate(
    s: AppState,
    batch: ApplyBatch,
) -> Result<Vec<TradeOutcome>, CatalogError> {
    // Opened before applying, so `/applied` can wait for it (invalidate.rs).
    let round = s.invalidator.as_ref().map(Invalidator::round);
    let batch = Arc::new(batch);
    let outcomes = s.catalog.apply_shared(batch.clone()).await?;
    common::fault::point(common::fault::CATALOG_BEFORE_REPLY);
    tracing::debug!(trades = outcomes.len(), base = batch.base, "batch applied");
    let m = &crate::metrics::METRICS;
    m.apply_batches.inc();
    for o in &outcomes {
        match o {
            TradeOutcome::Applied { .. } => m.trades_applied.inc(),
            TradeOutcome::Rejected { .. } => m.trades_rejected.inc(),
        };
    }
    // The store's sequencing lock is released by now: the front-ends are
    // told (and, with several, waited for) while the next batch may apply.
    if let (Some(inv), Some(round)) = (&s.invalidator, round) {
        let mut names: Vec<String> = batch
            .trades
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, TradeOutcome::Applied { .. }))
            .map(|(t, _)| t.name.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        inv.changed(round, names).await;
    }
    Ok(outcomes)
}

async fn fence(
    State(s): State<AppState>,
    JsonBody(f): JsonBody<Fence>,
) -> Result<Json<FenceResult>, CatalogError> {
    let next = s.catalog.fence(f.epoch, f.leader_id).await?;
    Ok(Json(FenceResult { next }))
}

async fn applied(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<RangeQuery>,
) -> Result<Json<Vec<OrderRecord>>, CatalogError> {
    let records = s.catalog.applied_range(q.from, q.limit)?;
    // A leader acknowledges what it reads here (after a lost apply answer,
    // or a catalog restart): every front-end must have let go of the old
    // quantities first, as for an apply's own answer.
    if let Some(invalidator) = &s.invalidator {
        invalidator.settled().await;
    }
    Ok(Json(records))
}

async fn dump(State(s): State<AppState>) -> Result<Json<Vec<StockRow>>, CatalogError> {
    Ok(Json(s.catalog.dump()?))
}
