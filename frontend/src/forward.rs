//! Forwarding to the leader: trades (always as a batch, a single trade
//! being a batch of one) and order queries. A forward that fails selects a
//! new leader and tries again (the passive health check); a leader that is
//! still catching up, or that could not learn a trade's outcome, is asked
//! again shortly. Every trade carries its key, so resending is safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::ApiError;
use common::client::{CallError, ServiceClient};
use common::types::{
    Data, Order, Role, TradeAnswer, TradeBatch, TradeBatchResult, TradeCommand, TradeReceipt,
};

use crate::selection::{Current, Selector};

/// Time a forwarded trade or order query gets at the leader (it includes
/// the catalog call and the followers' flushes).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Total time the front-end spends on one request across failovers and
/// a new leader's catch-up before it answers 503.
const REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// Leader re-selections one request may cause.
const MAX_RESELECTIONS: u32 = 3;
/// Pause before asking a leader that is still catching up again.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// Pause before retrying a trade whose outcome the leader could not learn
/// (e.g. the catalog did not answer).
const UNKNOWN_OUTCOME_RETRY: Duration = Duration::from_millis(200);

/// What to do after one attempt at the leader.
enum Attempt<T> {
    Done(Result<T, ApiError>),
    /// The leader is gone or is not the leader: select again.
    Reselect(String),
    /// The leader asks us to come back shortly.
    Wait(Duration, String),
}

pub struct Forwarder {
    selector: Arc<Selector>,
    client: ServiceClient,
}

impl Forwarder {
    pub fn new(selector: Arc<Selector>, token: Option<&str>) -> Forwarder {
        Forwarder {
            selector,
            client: ServiceClient::new(FORWARD_TIMEOUT, token),
        }
    }

    /// Runs `attempt` against the leader, re-selecting on failure and
    /// waiting while a new leader catches up, within [`REQUEST_DEADLINE`].
    async fn with_leader<T, F, Fut>(&self, attempt: F) -> Result<T, ApiError>
    where
        F: Fn(Current, Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut reselections = 0;
        let mut last = String::from("no attempt made");
        while Instant::now() < deadline {
            let current = self.selector.leader().await?;
            // No attempt outlives the deadline, so the caller hears 503 from
            // us before the server's request timeout answers 408.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match attempt(current.clone(), left.min(FORWARD_TIMEOUT)).await {
                Attempt::Done(r) => return r,
                Attempt::Wait(pause, why) => {
                    last = why;
                    tokio::time::sleep(pause).await;
                }
                Attempt::Reselect(why) => {
                    reselections += 1;
                    tracing::warn!(leader = current.id, reason = %why, "forward failed; selecting a new leader");
                    last = why;
                    if reselections > MAX_RESELECTIONS {
                        break;
                    }
                    self.selector.select(Some(&current)).await?;
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "no leader could take the request in time: {last}"
        )))
    }

    /// Sends one batch to `leader`.
    async fn post_batch(
        &self,
        leader: &Current,
        body: &TradeBatch,
        timeout: Duration,
    ) -> Attempt<Vec<TradeAnswer>> {
        let request = self
            .client
            .http()
            .post(format!("{}/orders/batch", leader.url))
            .timeout(timeout)
            .json(body);
        let answer = self
            .client
            .send::<Data<TradeBatchResult>>(common::request_id::tag(request))
            .await;
        classify(answer.map(|d| d.data.outcomes), true)
    }

    /// Commits one trade: a batch of one, sent again (with its key) until
    /// it is committed or refused, or the deadline passes.
    pub async fn trade(&self, cmd: &TradeCommand) -> Result<TradeReceipt, ApiError> {
        let body = TradeBatch {
            trades: vec![cmd.clone()],
            request_ids: common::request_id::current()
                .map(|id| id.to_string())
                .into_iter()
                .collect(),
        };
        let body = &body;
        self.with_leader(|leader, timeout| async move {
            match self.post_batch(&leader, body, timeout).await {
                Attempt::Done(Ok(mut answers)) if answers.len() == 1 => match answers.pop() {
                    Some(TradeAnswer::Retry { message, role }) => {
                        on_retry(role.unwrap_or(Role::Leader), message, true)
                    }
                    Some(answer) => Attempt::Done(answer.into_http()),
                    None => Attempt::Reselect("empty batch answer".into()),
                },
                Attempt::Done(Ok(answers)) => {
                    Attempt::Reselect(format!("{} answers for one trade", answers.len()))
                }
                Attempt::Done(Err(e)) => Attempt::Done(Err(e)),
                Attempt::Reselect(why) => Attempt::Reselect(why),
                Attempt::Wait(pause, why) => Attempt::Wait(pause, why),
            }
        })
        .await
    }

    /// Forwards several trades in one request; one answer per trade, in
    /// order. Resending the whole batch is safe: every trade has its key.
    pub async fn trade_batch(
        &self,
        cmds: &[TradeCommand],
        request_ids: &[String],
    ) -> Result<Vec<TradeAnswer>, ApiError> {
        let body = TradeBatch {
            trades: cmds.to_vec(),
            request_ids: request_ids.to_vec(),
        };
        let body = &body;
        self.with_leader(
            |leader, timeout| async move { self.post_batch(&leader, body, timeout).await },
        )
        .await
    }

    pub async fn order(&self, number: u64) -> Result<Order, ApiError> {
        self.with_leader(|leader, timeout| async move {
            let request = self
                .client
                .http()
                .get(format!("{}/orders/{number}", leader.url))
                .timeout(timeout);
            let answer = self
                .client
                .send::<Data<Order>>(common::request_id::tag(request))
                .await;
            classify(answer.map(|d| d.data), false)
        })
        .await
    }
}

/// A replica that could not finish says what it is: a follower sends us
/// to select again; a leader still catching up, or one whose trade's
/// outcome is unknown, is asked again shortly.
fn on_retry<T>(role: Role, message: String, is_trade: bool) -> Attempt<T> {
    match role {
        Role::CatchingUp => Attempt::Wait(CATCH_UP_POLL, message),
        Role::Follower => Attempt::Reselect(message),
        Role::Leader | Role::Up if is_trade => Attempt::Wait(UNKNOWN_OUTCOME_RETRY, message),
        Role::Leader | Role::Up => Attempt::Done(Err(ApiError::unavailable(message))),
    }
}

/// Sorts a leader's answer into done, wait, or re-select.
fn classify<T>(answer: Result<T, CallError>, is_trade: bool) -> Attempt<T> {
    match answer {
        Ok(v) => Attempt::Done(Ok(v)),
        Err(CallError::Unreachable(e)) => Attempt::Reselect(e),
        Err(e @ CallError::BadBody(_)) => Attempt::Reselect(e.to_string()),
        Err(CallError::Status { error, role, .. }) => match (error.status, role) {
            (StatusCode::SERVICE_UNAVAILABLE, Some(role)) => {
                on_retry(role, error.message, is_trade)
            }
            (s, _) if s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE => {
                Attempt::Done(Err(error))
            }
            (status, _) => {
                Attempt::Reselect(format!("leader answered {status}: {}", error.message))
            }
        },
    }
}
