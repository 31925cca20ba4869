//! HTTP routes of the catalog. Public: `GET /stocks/{name}`, `GET /health`.
//! Internal (cluster token): `POST /apply`, `POST /fence`, `GET /applied`,
//! `GET /dump`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::http::{JsonBody, PathParam, QueryParams};
use common::types::{
    ApplyBatch, ApplyResult, ConflictBody, Data, Fence, FenceResult, Health, RangeQuery, Stock,
    TradeOutcome,
};

use crate::invalidate::Invalidator;
use crate::store::{Catalog, StoreError};

/// Largest batch a leader may send; bounds the transaction size.
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

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    let (epoch, next) = s.catalog.position().await;
    Json(Health {
        service: "catalog".into(),
        id: None,
        role: "up".into(),
        epoch,
        highest: next.checked_sub(1),
    })
}

async fn lookup(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Data<Stock>>, ApiError> {
    common::types::validate_stock_name(&name).map_err(ApiError::bad_request)?;
    match s.catalog.get(&name).map_err(store_error)? {
        Some(row) => Ok(Json(Data::new(Stock {
            name: row.name,
            price: row.price,
            quantity: row.quantity,
        }))),
        None => Err(ApiError::not_found(format!("unknown stock {name}"))),
    }
}

async fn apply(
    State(s): State<AppState>,
    JsonBody(batch): JsonBody<ApplyBatch>,
) -> Result<Response, ApiError> {
    if batch.trades.len() > MAX_APPLY_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_APPLY_BATCH} trades per batch"
        )));
    }
    match s.catalog.apply(&batch).await.map_err(store_error)? {
        Err(conflict) => {
            Ok((StatusCode::CONFLICT, Json(ConflictBody { conflict })).into_response())
        }
        Ok(outcomes) => {
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
            if let Some(inv) = &s.invalidator {
                for (t, o) in batch.trades.iter().zip(&outcomes) {
                    if matches!(o, TradeOutcome::Applied { .. }) {
                        inv.push(&t.name);
                    }
                }
            }
            Ok(Json(ApplyResult { outcomes }).into_response())
        }
    }
}

async fn fence(
    State(s): State<AppState>,
    JsonBody(f): JsonBody<Fence>,
) -> Result<Response, ApiError> {
    match s.catalog.fence(f.epoch).await.map_err(store_error)? {
        Ok(next) => Ok(Json(FenceResult { next }).into_response()),
        Err(conflict) => {
            Ok((StatusCode::CONFLICT, Json(ConflictBody { conflict })).into_response())
        }
    }
}

async fn applied(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<RangeQuery>,
) -> Result<Response, ApiError> {
    let records = s
        .catalog
        .applied_range(q.from, q.limit)
        .map_err(store_error)?;
    Ok(Json(records).into_response())
}

async fn dump(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(s.catalog.dump().map_err(store_error)?).into_response())
}
