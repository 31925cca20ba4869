//! The public REST API (CONTRACT.md §3) and the catalog's invalidation hook.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::http::{JsonBody, PathParam};
use common::types::{
    Data, Health, IDEMPOTENCY_HEADER, Order, Stock, TradeCommand, TradeReceipt, TradeRequest,
};

use crate::cache::StockCache;
use crate::leader::Leaders;

/// Timeout of a lookup at the catalog.
pub const CATALOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<StockCache>,
    pub leaders: Arc<Leaders>,
    /// Trades go to the leader through here, batched when they overlap.
    pub relay: crate::relay::TradeRelay,
    pub catalog: reqwest::Client,
    pub catalog_url: Arc<str>,
    pub token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let internal = Router::new().route("/invalidation/{name}", post(invalidation));
    let internal = common::http::require_token(internal, state.token.clone());
    Router::new()
        .route("/health", get(health))
        .route("/status", get(crate::status::status))
        // The live dashboard: one self-contained page polling /status and /metrics.
        .route(
            "/dashboard",
            get(|| async { axum::response::Html(include_str!("dashboard.html")) }),
        )
        .route("/stocks/{name}", get(lookup))
        .route("/orders", post(trade))
        .route("/orders/{number}", get(order))
        .merge(internal)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    let leader = s.leaders.current();
    Json(Health {
        service: "frontend".into(),
        id: leader.as_ref().map(|l| l.id),
        role: "up".into(),
        epoch: leader.map_or(0, |l| l.epoch),
        highest: None,
    })
}

async fn lookup(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<Data<Stock>>, ApiError> {
    common::types::validate_stock_name(&name).map_err(ApiError::bad_request)?;
    if let Some(stock) = s.cache.get(&name) {
        return Ok(Json(Data::new(stock)));
    }
    let generation = s.cache.generation();
    let resp = common::request_id::tag(s.catalog.get(catalog_stock_url(&s.catalog_url, &name)?))
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("catalog unreachable: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        let err = ApiError::from_remote(status, &body);
        // Only the caller's mistakes pass through; the catalog's own trouble is ours to report.
        return Err(if status.is_client_error() {
            err
        } else {
            ApiError::unavailable(format!("catalog failed: {}", err.message))
        });
    }
    let data: Data<Stock> = resp
        .json()
        .await
        .map_err(|e| ApiError::unavailable(format!("bad catalog answer: {e}")))?;
    s.cache.insert_if_current(data.data.clone(), generation);
    Ok(Json(data))
}

/// `{catalog}/stocks/{name}` with the name percent-encoded as one path
/// segment: pasted in raw, `?` or `#` in a name would cut it short (a lookup
/// of `AAPL?x` would answer AAPL).
fn catalog_stock_url(catalog_url: &str, name: &str) -> Result<reqwest::Url, ApiError> {
    let mut url = reqwest::Url::parse(catalog_url)
        .map_err(|e| ApiError::internal(format!("bad catalog URL {catalog_url}: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ApiError::internal(format!("bad catalog URL {catalog_url}")))?
        .pop_if_empty()
        .extend(["stocks", name]);
    Ok(url)
}

async fn trade(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TradeRequest>,
) -> Result<Json<Data<TradeReceipt>>, ApiError> {
    req.validate().map_err(ApiError::bad_request)?;
    let key = match headers.get(IDEMPOTENCY_HEADER) {
        None => format!("g:{:032x}", rand::random::<u128>()),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            common::types::validate_idempotency_key(k).map_err(ApiError::bad_request)?;
            format!("c:{k}")
        }
    };
    let cmd = TradeCommand {
        name: req.name,
        kind: req.kind,
        quantity: req.quantity,
        key,
    };
    let name = cmd.name.clone();
    let result = s.relay.trade(cmd).await;
    // Whatever happened, the catalog may have changed: read-your-writes.
    s.cache.invalidate(&name);
    Ok(Json(Data::new(result?)))
}

async fn order(
    State(s): State<AppState>,
    PathParam(number): PathParam<String>,
) -> Result<Json<Data<Order>>, ApiError> {
    let n: u64 = number.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "order number must be an integer in 0..=2^64-1, got {number:?}"
        ))
    })?;
    Ok(Json(Data::new(s.leaders.order(n).await?)))
}

async fn invalidation(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Json<Data<&'static str>> {
    s.cache.invalidate(&name);
    Json(Data::new("invalidated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_url_keeps_the_name_one_segment() {
        let url = |name| catalog_stock_url("http://127.0.0.1:8087", name).unwrap();
        assert_eq!(url("AAPL").as_str(), "http://127.0.0.1:8087/stocks/AAPL");
        assert_eq!(
            url("AAPL?a=b#c").as_str(),
            "http://127.0.0.1:8087/stocks/AAPL%3Fa=b%23c"
        );
        assert_eq!(url("A%B").as_str(), "http://127.0.0.1:8087/stocks/A%25B");
    }
}
