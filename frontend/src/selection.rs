//! Leader selection and the active health check. A front-end follows the
//! leader the replicas report when there is one that can commit; otherwise
//! it names the highest-id replica that can commit (or, failing that, that
//! answers) leader of a new epoch (one above any epoch a replica or the
//! catalog reports) and tells every replica ([`Selector::select`]).
//! Forwarding re-selects when a forward fails (passive health check);
//! [`Selector::run_health_check`] probes the leader every
//! `health_check_interval_ms` (active) and moves the leadership away from a
//! leader that cannot commit when another replica can.

use std::sync::RwLock;
use std::time::Duration;

use common::ApiError;
use common::client::ServiceClient;
use common::config::Config;
use common::types::{Health, LeaderChange, LeaderNotice, Role};
use futures_util::future::join_all;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Time a health probe gets during a selection: a replica slower than this
/// is treated as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Leader changes kept for `/status`.
const HISTORY: usize = 32;
/// Looks at the replicas at most this often per selection: a proposal that
/// loses to another front-end's is followed by a look that adopts the
/// winner, so two rounds settle it; the third covers a replica dying mid-way.
const SELECTION_ROUNDS: usize = 3;

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
    /// Leaders this front-end named, each with a new epoch.
    pub selections: Counter,
    /// Leaders this front-end found already named and followed as they were.
    pub adoptions: Counter,
    /// Id of the current leader; 0 when there is none.
    pub leader_id: Gauge,
    pub epoch: Gauge,
}

impl LeaderStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "leader_selections",
            "Leader selections made by the front-end (each starts a new epoch)",
            self.selections.clone(),
        );
        registry.register(
            "leader_adoptions",
            "Leaders the front-end found already named (by another front-end) and followed",
            self.adoptions.clone(),
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

pub struct Selector {
    /// Highest id first: the selection order.
    replicas: Vec<Replica>,
    catalog_url: String,
    probe: ServiceClient,
    current: RwLock<Option<Current>>,
    /// The latest leader changes, oldest first (at most `HISTORY`).
    history: std::sync::Mutex<std::collections::VecDeque<LeaderChange>>,
    select_lock: tokio::sync::Mutex<()>,
    pub stats: LeaderStats,
}

impl Selector {
    pub fn new(config: &Config) -> Selector {
        let token = config.token();
        let mut replicas: Vec<Replica> = config
            .orders
            .iter()
            .map(|o| Replica {
                id: o.id,
                url: o.url(),
            })
            .collect();
        replicas.sort_by_key(|r| std::cmp::Reverse(r.id));
        Selector {
            replicas,
            catalog_url: config.catalog_url(),
            probe: ServiceClient::new(PROBE_TIMEOUT, token),
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
        self.probe.health(url).await.ok()
    }

    /// Finds the leader unless one other than `failed` was found meanwhile
    /// (many requests see the same failure; one selection serves them all).
    ///
    /// Several front-ends agree without churning the epoch: a replica that
    /// leads (or is catching up to lead) the newest epoch any replica or the
    /// catalog reports, and is not the one that `failed`, is adopted as it
    /// is. Only when there is none does this front-end propose the next
    /// epoch to the best candidate; a replica takes one leader per epoch,
    /// so when another front-end's proposal got there first, the next round
    /// finds it and adopts it.
    pub async fn select(&self, failed: Option<&Current>) -> Result<Current, ApiError> {
        let _one_at_a_time = self.select_lock.lock().await;
        if let Some(c) = self.current()
            && Some(&c) != failed
        {
            return Ok(c);
        }
        for _round in 0..SELECTION_ROUNDS {
            let answers = self.probe_replicas().await;
            if answers.is_empty() {
                break;
            }
            let catalog_epoch = self
                .health_of(&self.catalog_url)
                .await
                .map_or(0, |h| h.epoch);
            let newest = answers
                .iter()
                .map(|(_, h)| h.epoch)
                .chain([catalog_epoch, failed.map_or(0, |f| f.epoch)])
                .max()
                .unwrap_or(0);
            if let Some(leader) = adoptable(&answers, newest, failed) {
                self.stats.adoptions.inc();
                tracing::info!(
                    leader = leader.id,
                    epoch = leader.epoch,
                    "following the leader the replicas report"
                );
                self.set_current(Some(leader.clone()));
                return Ok(leader);
            }
            if let Some(chosen) = self.propose(&answers, newest + 1).await {
                return Ok(chosen);
            }
        }
        self.set_current(None);
        tracing::warn!("no order replica answers; trades are unavailable");
        Err(ApiError::unavailable("no order replica is reachable"))
    }

    /// Every replica that answers, those that can commit first (highest id
    /// first within each group): one that answers but cannot reach the
    /// catalog or write its log is chosen only when no other can do better.
    async fn probe_replicas(&self) -> Vec<(Replica, Health)> {
        let probes = self
            .replicas
            .iter()
            .map(|r| async move { (r.clone(), self.health_of(&r.url).await) });
        let mut answers: Vec<(Replica, Health)> = join_all(probes)
            .await
            .into_iter()
            .filter_map(|(r, h)| Some((r, h?)))
            .collect();
        answers.sort_by_key(|(_, h)| !h.ready);
        answers
    }

    /// Proposes the best candidate as the leader of `epoch` and tells the
    /// others. `None` when the candidate refused (another front-end's
    /// proposal of this epoch came first, or it is gone): look again.
    async fn propose(&self, answers: &[(Replica, Health)], epoch: u64) -> Option<Current> {
        let (candidate, _) = answers.first()?;
        let notice = LeaderNotice {
            epoch,
            leader_id: candidate.id,
        };
        if !self.notify(&candidate.url, notice).await {
            return None;
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
        Some(chosen)
    }

    async fn notify(&self, url: &str, notice: LeaderNotice) -> bool {
        let answer: Result<Health, _> = self.probe.post(format!("{url}/leader"), &notice).await;
        match answer {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(url, error = %e, "replica refused the leader notice");
                false
            }
        }
    }

    /// The current leader, selecting one when there is none.
    pub async fn leader(&self) -> Result<Current, ApiError> {
        match self.current() {
            Some(c) => Ok(c),
            None => self.select(None).await,
        }
    }

    /// The active health check: probes the leader every `interval` and
    /// re-selects when it does not answer or no longer leads our epoch, or
    /// when it cannot commit (not ready) while another replica can.
    pub async fn run_health_check(&self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = self.current();
            let health = match &current {
                None => None,
                Some(c) => self.health_of(&c.url).await.filter(|h| {
                    h.epoch == c.epoch && matches!(h.role, Role::Leader | Role::CatchingUp)
                }),
            };
            match (&current, health) {
                (Some(c), Some(h)) if !h.ready => {
                    if self.another_is_ready(c.id).await {
                        tracing::warn!(
                            leader = c.id,
                            reason = h.reason.as_deref().unwrap_or(""),
                            "the leader cannot commit and another replica can; moving the leadership"
                        );
                        let _ = self.select(current.as_ref()).await;
                    }
                }
                (_, Some(_)) => {}
                (_, None) => {
                    if let Some(c) = &current {
                        tracing::warn!(leader = c.id, "active health check failed");
                    }
                    let _ = self.select(current.as_ref()).await;
                }
            }
        }
    }

    /// Whether a replica other than `leader` answers and is ready.
    async fn another_is_ready(&self, leader: u32) -> bool {
        let probes = self
            .replicas
            .iter()
            .filter(|r| r.id != leader)
            .map(|r| self.health_of(&r.url));
        join_all(probes)
            .await
            .into_iter()
            .any(|h| h.is_some_and(|h| h.ready))
    }
}

/// The replica to follow without a new epoch: one that leads, or is
/// catching up to lead, the `newest` epoch, is not the leader that
/// `failed`, and can commit (or no replica can).
fn adoptable(
    answers: &[(Replica, Health)],
    newest: u64,
    failed: Option<&Current>,
) -> Option<Current> {
    let any_ready = answers.iter().any(|(_, h)| h.ready);
    answers
        .iter()
        .find(|(r, h)| {
            matches!(h.role, Role::Leader | Role::CatchingUp)
                && h.epoch == newest
                && (h.ready || !any_ready)
                && failed.is_none_or(|f| f.id != r.id || f.epoch != h.epoch)
        })
        .map(|(r, h)| Current {
            id: r.id,
            epoch: h.epoch,
            url: r.url.clone(),
        })
}
