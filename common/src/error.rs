//! The error body every endpoint answers with (README, docs/PROTOCOL.md): `{"error":{"code":N,"message":"..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An error answer: a status and a human message. Every service turns its own
/// error enum into this at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// A 500 for a failure of our own (storage, a bug): the cause is logged
    /// here, once, with the request id; the caller is told only "internal
    /// error" and the id to look for, never engine or path details.
    pub fn internal_from(cause: &dyn std::fmt::Display) -> Self {
        let id = crate::request_id::current();
        let id = id
            .as_deref()
            .map_or("none", crate::request_id::RequestInfo::id);
        tracing::error!(error = %cause, request_id = id, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (request id {id})"),
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.status.as_u16(),
                message: self.message.clone(),
            },
        }
    }

    /// Rebuilds an error from a response body another service sent, keeping
    /// its status; a body that is not the error JSON keeps the status only.
    pub fn from_remote(status: StatusCode, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => Self::new(status, b.error.message),
            Err(_) => Self::new(status, status.canonical_reason().unwrap_or("error")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        }
        (self.status, Json(self.body())).into_response()
    }
}
