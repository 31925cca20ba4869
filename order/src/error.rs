//! Errors of the order service and how they look on the wire.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::types::ROLE_HEADER;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("this replica is not the leader")]
    NotLeader,
    #[error("this replica was just selected leader and is catching up; retry shortly")]
    CatchingUp,
    #[error("leader epoch {got} is older than the current epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, role) = match self {
            OrderError::NotLeader => (StatusCode::SERVICE_UNAVAILABLE, Some("follower")),
            OrderError::CatchingUp => (StatusCode::SERVICE_UNAVAILABLE, Some("catching-up")),
            OrderError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, Some("leader")),
            OrderError::StaleEpoch { .. } => (StatusCode::CONFLICT, None),
            OrderError::Api(e) => return e.into_response(),
            OrderError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        let mut response = ApiError::new(status, message).into_response();
        if let Some(role) = role {
            response
                .headers_mut()
                .insert(ROLE_HEADER, HeaderValue::from_static(role));
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        response
    }
}
