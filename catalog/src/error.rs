//! The catalog's one error type, [`CatalogError`], and the answer each
//! failure gives (after axum's `examples/error-handling`). Every answer
//! carries the error JSON `{"error":{"code","message"}}` (see
//! docs/PROTOCOL.md); a refused batch or fence also carries
//! `{"conflict":...}`, which the order replicas read. A storage failure is
//! logged with the request id and answers a bare "internal error"; a store
//! that failed earlier and refuses writes answers 503 with what is wrong
//! (storage full or failing) and that it restarts by itself.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::error::ErrorDetail;
use common::storage::StoreError;
use common::types::ApplyConflict;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A batch or fence refused as a whole: 409.
    #[error("{}", conflict_message(.0))]
    Conflict(ApplyConflict),
    /// A stock the catalog does not hold: 404.
    #[error("unknown stock {0}")]
    UnknownStock(String),
    /// A request the catalog will not take (bad name, batch too big): 400.
    #[error("{0}")]
    BadRequest(String),
    /// `stocks.csv` cannot be read or parsed (at startup).
    #[error("cannot load stocks from {path}: {message}")]
    Stocks { path: String, message: String },
    /// The database failed: 500, cause logged, not shown; a failed store
    /// refusing writes ([`StoreError::is_unavailable`]): 503, saying so.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn conflict_message(c: &ApplyConflict) -> String {
    match c {
        ApplyConflict::StaleEpoch { current } => {
            format!("stale epoch: the catalog follows a leader of epoch {current}")
        }
        ApplyConflict::Sequence { next } => {
            format!("out of sequence: the catalog expects order {next} next")
        }
    }
}

/// The 409 body: `common::types::ConflictBody` plus the error JSON.
#[derive(Serialize)]
struct ConflictAnswer {
    conflict: ApplyConflict,
    error: ErrorDetail,
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        match self {
            CatalogError::Conflict(conflict) => {
                let error = ErrorDetail {
                    code: StatusCode::CONFLICT.as_u16(),
                    message: conflict_message(&conflict),
                };
                let body = ConflictAnswer { conflict, error };
                (StatusCode::CONFLICT, Json(body)).into_response()
            }
            CatalogError::UnknownStock(_) => ApiError::not_found(self.to_string()).into_response(),
            CatalogError::BadRequest(message) => ApiError::bad_request(message).into_response(),
            // A failed store refusing writes: the catalog is up but cannot
            // apply until it restarts, which it does by itself.
            CatalogError::Store(e) if e.is_unavailable() => {
                let mut response = ApiError::unavailable(e.to_string()).into_response();
                response
                    .headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                response
            }
            CatalogError::Stocks { .. } | CatalogError::Store(_) => {
                ApiError::internal_from(&self).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::error::ErrorBody;
    use common::types::ConflictBody;

    async fn answer(e: CatalogError) -> (StatusCode, Vec<u8>) {
        let response = e.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn a_conflict_is_both_the_conflict_and_the_error_json() {
        let conflict = ApplyConflict::Sequence { next: 7 };
        let (status, body) = answer(CatalogError::Conflict(conflict)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let parsed: ConflictBody = serde_json::from_slice(&body).expect("conflict body");
        assert_eq!(parsed.conflict, conflict);
        let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(error.error.code, 409);
        assert!(
            error.error.message.contains("order 7"),
            "{}",
            error.error.message
        );
    }

    #[tokio::test]
    async fn a_storage_failure_hides_its_cause() {
        let cause = StoreError::Engine("disk on fire at /secret/path".into());
        let (status, body) = answer(CatalogError::Store(cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert!(error.error.message.starts_with("internal error"));
        assert!(!error.error.message.contains("secret"));
    }

    #[tokio::test]
    async fn a_failed_store_is_unavailable_not_an_internal_error() {
        let cause = StoreError::Failed {
            state: common::types::StorageState::Full,
            cause: "No space left on device at /secret/path".into(),
        };
        let (status, body) = answer(CatalogError::Store(cause)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert!(
            error.error.message.starts_with("storage full"),
            "{}",
            error.error.message
        );
        assert!(!error.error.message.contains("secret"));
    }

    #[tokio::test]
    async fn unknown_stocks_and_bad_requests_keep_their_messages() {
        let (status, body) = answer(CatalogError::UnknownStock("NOPE".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error: ErrorBody = serde_json::from_slice(&body).expect("error body");
        assert_eq!(error.error.message, "unknown stock NOPE");
        let (status, _) = answer(CatalogError::BadRequest("no".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
