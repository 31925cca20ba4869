//! Errors of the order service and how they look on the wire: the
//! contract's error JSON, and on a 503 the `x-bazaar-role` header that
//! tells the front-end whether to wait (`catching-up`, `leader`) or select
//! a leader again (`follower`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::types::{ROLE_HEADER, Role, TradeAnswer};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("this replica is not the leader")]
    NotLeader,
    #[error("this replica was just selected leader and is catching up; retry shortly")]
    CatchingUp,
    #[error("leader epoch {got} is older than the current epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    /// A second leader proposed for an epoch that already has one.
    #[error("epoch {epoch} already has leader {leader}; a replica takes one leader per epoch")]
    EpochTaken { epoch: u64, leader: u32 },
    /// The leader is ready but could not finish (a dependency failed).
    #[error("{0}")]
    Unavailable(String),
    /// A trade that was not finished, as the sequencer answered it.
    #[error("{message}")]
    Retry { message: String, role: Role },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OrderError {
    /// What a trade that failed this way is answered.
    pub fn as_answer(&self) -> TradeAnswer {
        match self {
            OrderError::Api(e) if e.status.is_client_error() => TradeAnswer::Refused {
                code: e.status.as_u16(),
                message: e.message.clone(),
            },
            OrderError::Retry { message, role } => TradeAnswer::retry(*role, message.clone()),
            other => TradeAnswer::retry(other.role(), other.to_string()),
        }
    }

    /// The role a 503 of this kind reports.
    fn role(&self) -> Role {
        match self {
            OrderError::NotLeader
            | OrderError::StaleEpoch { .. }
            | OrderError::EpochTaken { .. } => Role::Follower,
            OrderError::CatchingUp => Role::CatchingUp,
            OrderError::Retry { role, .. } => *role,
            OrderError::Unavailable(_) | OrderError::Api(_) | OrderError::Store(_) => Role::Leader,
        }
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        match self {
            OrderError::Api(e) => e.into_response(),
            OrderError::Store(e) if !e.is_unavailable() => {
                ApiError::internal_from(&e).into_response()
            }
            e @ (OrderError::StaleEpoch { .. } | OrderError::EpochTaken { .. }) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string()).into_response()
            }
            e => {
                let mut response = ApiError::unavailable(e.to_string()).into_response();
                let headers = response.headers_mut();
                headers.insert(ROLE_HEADER, HeaderValue::from_static(e.role().as_str()));
                headers.insert("retry-after", HeaderValue::from_static("1"));
                response
            }
        }
    }
}
