//! Leader selection and forwarding. The leader is the highest-id replica that
//! answers its health check; every selection starts a new epoch (one above
//! any epoch a replica or the catalog reports) and is announced to every
//! replica. A failed forward re-selects and retries (passive health check);
//! a background task probes the leader every `health_check_interval_ms`
//! (active health check).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::ApiError;
use common::config::Config;
use common::types::{
    Data, Health, LeaderChange, LeaderNotice, Order, ROLE_HEADER, RelayedTrade, TradeBatch,
    TradeBatchResult, TradeCommand, TradeReceipt,
};
use futures_util::future::join_all;

/// Time a health probe gets during a selection: a replica slower than this
/// is treated as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
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
/// Leader changes kept for `/status`.
const HISTORY: usize = 32;

#[derive(Debug, Clone)]
pub struct Replica {
    pub id: u32,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: u32,
    pub epoch: u64,
    pub url: String,
}

#[derive(Debug, Default)]
pub struct LeaderStats {
    pub selections: Counter,
    /// Id of the current leader; 0 when there is none.
    pub leader_id: Gauge,
    pub epoch: Gauge,
}

impl LeaderStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "leader_selections",
            "Leader selections made by the front-end",
            self.selections.clone(),
        );
        registry.register(
            "leader_id",
            "Id of the current leader replica (0: none)",
            self.leader_id.clone(),
        );
        registry.register(
            "leader_epoch",
            "Epoch of the current leader",
            self.epoch.clone(),
        );
    }
}

pub struct Leaders {
    /// Highest id first: the selection order.
    replicas: Vec<Replica>,
    catalog_url: String,
    forward: reqwest::Client,
    probe: reqwest::Client,
    current: RwLock<Option<Current>>,
    /// The latest leader changes, oldest first (at most `HISTORY`).
    history: std::sync::Mutex<std::collections::VecDeque<LeaderChange>>,
    select_lock: tokio::sync::Mutex<()>,
    pub stats: LeaderStats,
}

enum Attempt<T> {
    Done(Result<T, ApiError>),
    /// The leader is gone or is not the leader: select again.
    Reselect(String),
    /// The leader asks us to come back shortly.
    Wait(Duration, String),
}

impl Leaders {
    pub fn new(config: &Config, token: Option<&str>) -> Leaders {
        let mut replicas: Vec<Replica> = config
            .orders
            .iter()
            .map(|o| Replica {
                id: o.id,
                url: o.url(),
            })
            .collect();
        replicas.sort_by_key(|r| std::cmp::Reverse(r.id));
        Leaders {
            replicas,
            catalog_url: config.catalog_url(),
            forward: common::http::internal_client(FORWARD_TIMEOUT, token),
            probe: common::http::internal_client(PROBE_TIMEOUT, token),
            current: RwLock::new(None),
            history: std::sync::Mutex::new(std::collections::VecDeque::new()),
            select_lock: tokio::sync::Mutex::new(()),
            stats: LeaderStats::default(),
        }
    }

    pub fn current(&self) -> Option<Current> {
        self.current
            .read()
            .expect("leader lock is never poisoned")
            .clone()
    }

    fn set_current(&self, c: Option<Current>) {
        let change = LeaderChange {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            id: c.as_ref().map(|c| c.id),
            epoch: c.as_ref().map_or(0, |c| c.epoch),
        };
        self.stats.leader_id.set(change.id.map_or(0, i64::from));
        self.stats
            .epoch
            .set(i64::try_from(change.epoch).unwrap_or(i64::MAX));
        let mut current = self.current.write().expect("leader lock is never poisoned");
        let changed =
            current.as_ref().map(|c| (c.id, c.epoch)) != change.id.zip(Some(change.epoch));
        *current = c;
        drop(current);
        if changed && let Ok(mut history) = self.history.lock() {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(change);
        }
    }

    /// The latest leader changes, oldest first.
    pub fn history(&self) -> Vec<LeaderChange> {
        self.history
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every replica's id and URL, highest id first.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn catalog_url(&self) -> &str {
        &self.catalog_url
    }

    /// `/health` of any service, within the probe timeout.
    pub async fn health_of(&self, url: &str) -> Option<Health> {
        self.probe(url).await
    }

    async fn probe(&self, url: &str) -> Option<Health> {
        let r = self.probe.get(format!("{url}/health")).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Selects a leader unless one other than `failed` was selected
    /// meanwhile (many requests see the same failure; one selection serves
    /// them all).
    pub async fn select(&self, failed: Option<&Current>) -> Result<Current, ApiError> {
        let _one_at_a_time = self.select_lock.lock().await;
        if let Some(c) = self.current()
            && Some(&c) != failed
        {
            return Ok(c);
        }
        let probes = self
            .replicas
            .iter()
            .map(|r| async move { (r.clone(), self.probe(&r.url).await) });
        let mut answers: Vec<(Replica, Health)> = Vec::new();
        for (r, h) in join_all(probes).await {
            if let Some(h) = h {
                answers.push((r, h));
            }
        }
        let catalog_epoch = self.probe(&self.catalog_url).await.map_or(0, |h| h.epoch);
        let floor = failed.map_or(0, |f| f.epoch);
        let mut epoch = answers
            .iter()
            .map(|(_, h)| h.epoch)
            .chain([catalog_epoch, floor])
            .max()
            .unwrap_or(0);
        // Highest id first; a candidate that refuses the notice is skipped.
        for (candidate, _) in &answers {
            epoch += 1;
            let notice = LeaderNotice {
                epoch,
                leader_id: candidate.id,
            };
            if !self.notify(&candidate.url, notice).await {
                continue;
            }
            let others = answers
                .iter()
                .filter(|(r, _)| r.id != candidate.id)
                .map(|(r, _)| self.notify(&r.url, notice));
            join_all(others).await;
            let chosen = Current {
                id: candidate.id,
                epoch,
                url: candidate.url.clone(),
            };
            self.stats.selections.inc();
            tracing::info!(leader = chosen.id, epoch, "leader selected");
            self.set_current(Some(chosen.clone()));
            return Ok(chosen);
        }
        self.set_current(None);
        tracing::warn!("no order replica answers; trades are unavailable");
        Err(ApiError::unavailable("no order replica is reachable"))
    }

    async fn notify(&self, url: &str, notice: LeaderNotice) -> bool {
        match self
            .probe
            .post(format!("{url}/leader"))
            .json(&notice)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(url, status = %r.status(), "replica refused the leader notice");
                false
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "leader notice failed");
                false
            }
        }
    }

    async fn leader(&self) -> Result<Current, ApiError> {
        match self.current() {
            Some(c) => Ok(c),
            None => self.select(None).await,
        }
    }

    /// Runs `attempt` against the leader, re-selecting on failure and
    /// waiting while a new leader catches up, within [`REQUEST_DEADLINE`].
    async fn with_leader<T, F, Fut>(&self, attempt: F) -> Result<T, ApiError>
    where
        F: Fn(Current) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut reselections = 0;
        let mut last = String::from("no attempt made");
        while Instant::now() < deadline {
            let current = self.leader().await?;
            match attempt(current.clone()).await {
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
                    self.select(Some(&current)).await?;
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "no leader could take the request in time: {last}"
        )))
    }

    /// Forwards a trade; safe to retry because it carries its key.
    pub async fn trade(&self, cmd: &TradeCommand) -> Result<TradeReceipt, ApiError> {
        self.with_leader(|leader| async move {
            let sent = common::request_id::tag(
                self.forward
                    .post(format!("{}/orders", leader.url))
                    .json(cmd),
            )
            .send()
            .await;
            classify(sent, true).await
        })
        .await
        .map(|d: Data<TradeReceipt>| d.data)
    }

    /// Forwards several trades in one request; one outcome per trade, in
    /// order. Resending the whole batch is safe: every trade has its key.
    pub async fn trade_batch(
        &self,
        cmds: &[TradeCommand],
        request_ids: &[String],
    ) -> Result<Vec<RelayedTrade>, ApiError> {
        let body = TradeBatch {
            trades: cmds.to_vec(),
            request_ids: request_ids.to_vec(),
        };
        let body = &body;
        self.with_leader(|leader| async move {
            let sent = self
                .forward
                .post(format!("{}/orders/batch", leader.url))
                .json(body)
                .send()
                .await;
            classify(sent, true).await
        })
        .await
        .map(|d: Data<TradeBatchResult>| d.data.outcomes)
    }

    pub async fn order(&self, number: u64) -> Result<Order, ApiError> {
        self.with_leader(|leader| async move {
            let sent = common::request_id::tag(
                self.forward.get(format!("{}/orders/{number}", leader.url)),
            )
            .send()
            .await;
            classify(sent, false).await
        })
        .await
        .map(|d: Data<Order>| d.data)
    }

    /// The active health check: probes the leader every `interval` and
    /// re-selects when it does not answer or no longer leads our epoch.
    pub async fn run_health_check(&self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = self.current();
            let healthy = match &current {
                None => false,
                Some(c) => self.probe(&c.url).await.is_some_and(|h| {
                    h.epoch == c.epoch && (h.role == "leader" || h.role == "catching-up")
                }),
            };
            if !healthy {
                if let Some(c) = &current {
                    tracing::warn!(leader = c.id, "active health check failed");
                }
                let _ = self.select(current.as_ref()).await;
            }
        }
    }
}

/// Sorts a leader's answer into done, wait, or re-select.
async fn classify<T: serde::de::DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
    is_trade: bool,
) -> Attempt<T> {
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Attempt::Reselect(e.to_string()),
    };
    let status = resp.status();
    if status.is_success() {
        return match resp.json::<T>().await {
            Ok(v) => Attempt::Done(Ok(v)),
            Err(e) => Attempt::Reselect(format!("unreadable answer: {e}")),
        };
    }
    let role = resp
        .headers()
        .get(ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.unwrap_or_default();
    let err = ApiError::from_remote(status, &body);
    match (status, role.as_deref()) {
        (StatusCode::SERVICE_UNAVAILABLE, Some("catching-up")) => {
            Attempt::Wait(CATCH_UP_POLL, err.message)
        }
        (StatusCode::SERVICE_UNAVAILABLE, Some("follower")) => Attempt::Reselect(err.message),
        // The leader is fine but could not finish (catalog down, queue full):
        // a trade is retried with its key, which is safe; a query is not worth it.
        (StatusCode::SERVICE_UNAVAILABLE, Some("leader")) if is_trade => {
            Attempt::Wait(UNKNOWN_OUTCOME_RETRY, err.message)
        }
        (s, _) if s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE => {
            Attempt::Done(Err(err))
        }
        _ => Attempt::Reselect(format!("leader answered {status}: {}", err.message)),
    }
}
