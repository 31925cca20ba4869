//! The one client for calls to a Stock Bazaar service: the `GET /health`
//! probe, and typed GET/POST that turn an error answer back into the
//! [`ApiError`] the service sent (with the replica's role header, when it
//! sent one). The front-end, the order replicas, `bazaar` and the client all
//! call services through here.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::types::{Health, ROLE_HEADER, Role};

/// Why a call to a service did not produce the answer the caller wanted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset or timed out. For a write the outcome is
    /// unknown.
    #[error("{0}")]
    Unreachable(String),
    /// The service answered with an error status; `role` is what a replica
    /// said in its `x-bazaar-role` header, `body` the raw answer (for
    /// bodies with more than the error JSON, like the catalog's conflicts).
    #[error("{error}")]
    Status {
        error: ApiError,
        role: Option<Role>,
        body: String,
    },
    /// A success status whose body is not what the caller expects.
    #[error("unreadable answer: {0}")]
    BadBody(String),
}

impl CallError {
    /// The status the service answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { error, .. } => Some(error.status),
            _ => None,
        }
    }
}

/// An HTTP client for one kind of call (its timeout), carrying the cluster
/// token when there is one. Cloning is cheap (a shared connection pool).
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
}

impl ServiceClient {
    pub fn new(timeout: Duration, token: Option<&str>) -> ServiceClient {
        ServiceClient {
            http: crate::http::internal_client(timeout, token),
        }
    }

    /// Wraps an existing client (e.g. the load client's own).
    pub fn from_http(http: reqwest::Client) -> ServiceClient {
        ServiceClient { http }
    }

    /// The underlying client, for requests that need more than JSON in and out.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET {base_url}/health`: what the service says about itself, or why
    /// it did not answer.
    pub async fn health(&self, base_url: &str) -> Result<Health, CallError> {
        self.get(format!("{base_url}/health")).await
    }

    /// `GET url`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        url: impl reqwest::IntoUrl,
    ) -> Result<T, CallError> {
        self.send(self.http.get(url)).await
    }

    /// `POST url` with a JSON body, the answer decoded as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: impl reqwest::IntoUrl,
        body: &B,
    ) -> Result<T, CallError> {
        self.send(self.http.post(url).json(body)).await
    }

    /// Sends a prepared request and decodes a success as `T`.
    pub async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Unreachable(with_causes(&e)))?;
        decode(response).await
    }
}

/// An error with its causes (`error sending request ...: client error
/// (Connect): tcp connect error: Connection refused`): reqwest's own text
/// names only the outermost one.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Decodes a service's answer: a success as `T`, an error status as the
/// error the service sent.
pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|e| CallError::BadBody(e.to_string()));
    }
    let role = response
        .headers()
        .get(ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Role::parse);
    let body = response.bytes().await.unwrap_or_default();
    Err(CallError::Status {
        error: ApiError::from_remote(status, &body),
        role,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
