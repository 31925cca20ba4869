//! The public REST API (docs/PROTOCOL.md) and the catalog's invalidation hook.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::ApiError;
use common::client::CallError;
use common::http::{JsonBody, PathParam};
use common::types::{
    CALLER_KEY_PREFIX, Data, GENERATED_KEY_PREFIX, Health, IDEMPOTENCY_HEADER, Order, Stock,
    TradeCommand, TradeReceipt, TradeRequest,
};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route("/invalidations", post(invalidations))
        .route("/invalidation/{name}", post(invalidation));
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
    Json(s.health())
}

async fn lookup(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Response, ApiError> {
    common::types::validate_stock_name(&name).map_err(ApiError::bad_request)?;
    if let Some(cached) = s.cache.get(&name) {
        let json = HeaderValue::from_static("application/json");
        return Ok(([(header::CONTENT_TYPE, json)], cached.body.clone()).into_response());
    }
    let generation = s.cache.generation();
    let request = s
        .catalog
        .http()
        .get(catalog_stock_url(&s.catalog_url, &name)?);
    let data: Data<Stock> = s
        .catalog
        .send(common::request_id::tag(request))
        .await
        .map_err(|e| match e {
            CallError::Unreachable(e) => ApiError::unavailable(format!("catalog unreachable: {e}")),
            // Only the caller's mistakes pass through; the catalog's own
            // trouble is ours to report.
            CallError::Status { error, .. } if error.status.is_client_error() => error,
            CallError::Status { error, .. } => {
                ApiError::unavailable(format!("catalog failed: {}", error.message))
            }
            CallError::BadBody(e) => ApiError::unavailable(format!("bad catalog answer: {e}")),
        })?;
    s.cache.insert_if_current(data.data.clone(), generation);
    Ok(Json(data).into_response())
}

/// `{catalog}/stocks/{name}` with the name percent-encoded as one path
/// segment: pasted in raw, `?` or `#` in a name would cut it short (a lookup
/// of `AAPL?x` would answer AAPL).
fn catalog_stock_url(catalog_url: &str, name: &str) -> Result<reqwest::Url, ApiError> {
    let mut url = reqwest::Url::parse(catalog_url)
        .map_err(|e| ApiError::internal_from(&format!("bad catalog URL {catalog_url}: {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ApiError::internal_from(&format!("bad catalog URL {catalog_url}")))?
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
        None => format!("{GENERATED_KEY_PREFIX}{:032x}", rand::random::<u128>()),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            common::types::validate_idempotency_key(k).map_err(ApiError::bad_request)?;
            format!("{CALLER_KEY_PREFIX}{k}")
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
    Ok(Json(Data::new(s.forward.order(n).await?)))
}

async fn invalidation(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Json<Data<&'static str>> {
    s.cache.invalidate(&name);
    Json(Data::new("invalidated"))
}

/// The catalog's notice: stocks that changed, and the cache lease's
/// renewal when there are several front-ends (crate::cache).
async fn invalidations(
    State(s): State<AppState>,
    JsonBody(notice): JsonBody<common::types::Invalidations>,
) -> Json<Data<&'static str>> {
    s.cache.receive(&notice);
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
