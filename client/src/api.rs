//! The front-end's public API as the client calls it: every request is sent
//! again until it gets a final answer or the retry window closes, and a
//! trade carries the same `Idempotency-Key` on every attempt, so a retry
//! after a failover never makes a second order (README, "The client").
//!
//! [`Api::trade`] is the one retry-by-key of the workspace: the load
//! sessions, `bazaar chaos` and `bazaar eval` all trade through it.

use std::time::{Duration, Instant};

use common::client::ServiceClient;
use common::types::{Data, IDEMPOTENCY_HEADER, Order, Stock, TradeReceipt, TradeRequest};

/// How one request ended, after any retries.
#[derive(Debug)]
pub enum Outcome<T> {
    Ok(T),
    /// A final 4xx answer: its status and message.
    Rejected(u16, String),
    /// No usable answer within the retry window. For a trade the outcome is
    /// unknown: it may or may not be an order.
    Failed(String),
}

/// How long a run waits for the front-end to accept connections at all
/// before giving up (a cluster that is still starting gets this long).
pub const REACHABLE_WITHIN: Duration = Duration::from_secs(10);

/// First pause between two attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between two attempts: a failover takes a few hundred ms,
/// so a longer pause would only add latency once the new leader serves.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The HTTP client the load uses: `attempt_timeout` per attempt (and at
/// most 2 s to connect), no Nagle delay, up to `connections` idle
/// connections kept for reuse.
pub fn http_client(
    attempt_timeout: Duration,
    connections: usize,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(attempt_timeout)
        .connect_timeout(attempt_timeout.min(Duration::from_secs(2)))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections.max(1))
        .build()
}

/// Statuses after which the outcome of a request is unknown or transient,
/// so it is sent again (with the same idempotency key for trades).
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The front-end at one address, with a retry window. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Api {
    service: ServiceClient,
    base: String,
    retry_for: Duration,
}

impl Api {
    /// The front-end at `base_url` (`http://host:port`), called with `http`;
    /// requests whose outcome is unknown are retried for `retry_for`.
    pub fn new(http: reqwest::Client, base_url: &str, retry_for: Duration) -> Api {
        Api {
            service: ServiceClient::from_http(http),
            base: base_url.trim_end_matches('/').to_string(),
            retry_for,
        }
    }

    /// `http://host:port` of the front-end, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends the request built by `build` until it gets a final answer or
    /// the retry window closes. Returns the outcome and the attempts made.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> (Outcome<T>, u32) {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last_error = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) if status.is_success() => {
                            return match serde_json::from_slice::<Data<T>>(&body) {
                                Ok(data) => (Outcome::Ok(data.data), attempts),
                                Err(e) => (
                                    Outcome::Failed(format!("unexpected success body: {e}")),
                                    attempts,
                                ),
                            };
                        }
                        Ok(body) if !retryable(status) => {
                            return (
                                Outcome::Rejected(status.as_u16(), error_message(&body)),
                                attempts,
                            );
                        }
                        Ok(body) => format!("{status}: {}", error_message(&body)),
                        Err(e) => format!("reading the answer: {e}"),
                    }
                }
                Err(e) => format!("{e}"),
            };
            if Instant::now() + backoff >= deadline {
                return (Outcome::Failed(last_error), attempts);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// `GET /stocks/{name}`.
    pub async fn lookup(&self, name: &str) -> (Outcome<Stock>, u32) {
        let url = format!("{}/stocks/{name}", self.base);
        self.call(|| self.service.http().get(&url)).await
    }

    /// `POST /orders` with `key` as its `Idempotency-Key` on every attempt:
    /// `Ok` is the order the trade became, `Rejected` a final refusal (409:
    /// not enough stock), `Failed` an unknown outcome.
    pub async fn trade(&self, request: &TradeRequest, key: &str) -> (Outcome<TradeReceipt>, u32) {
        let url = format!("{}/orders", self.base);
        self.call(|| {
            self.service
                .http()
                .post(&url)
                .header(IDEMPOTENCY_HEADER, key)
                .json(request)
        })
        .await
    }

    /// `GET /orders/{number}`.
    pub async fn query(&self, number: u64) -> (Outcome<Order>, u32) {
        let url = format!("{}/orders/{number}", self.base);
        self.call(|| self.service.http().get(&url)).await
    }

    /// Fails fast when nothing answers at the front-end's address, instead
    /// of retrying every request for the whole retry window. Any HTTP
    /// answer to `GET /health` counts, even an error status, so the answer
    /// is not decoded; the transport error is kept whole so that its causes
    /// (e.g. "Connection refused") reach the user.
    pub async fn wait_reachable(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("{}/health", self.base);
        loop {
            match self.service.http().get(&url).send().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    // Printed with `{:#}`: the causes follow.
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot reach the front-end at {}; is the cluster running? (`bazaar up`)",
                        self.base
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// The message of an error body, or the start of a body that is not one.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}
