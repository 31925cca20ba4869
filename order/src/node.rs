//! One replica's state: its log, its peers, the catalog it talks to, and
//! its role in the current leader epoch. Roles change only through
//! [`Node::adopt`], which records a higher epoch durably before it takes
//! effect, and [`Node::swap_if`], which never undoes a newer change.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::client::ServiceClient;
use common::config::Config;
use common::types::{Health, Role, StorageState};

use crate::catalog::CatalogClient;
use crate::error::OrderError;
use crate::readiness::Readiness;
use crate::store::OrderLog;

/// Timeout of catch-up pages and `/synchronize` calls to peers.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one propagation to a follower: a follower slower than this is
/// left behind (it catches up by itself) rather than slowing every trade.
pub const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(1);

/// The role in force and the epoch it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleState {
    pub epoch: u64,
    pub role: Role,
    /// The replica this one follows (its own id while leading or catching
    /// up); `None` right after start, until a leader speaks.
    pub leader: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u32,
    pub url: String,
}

pub struct Node {
    pub id: u32,
    pub log: OrderLog,
    pub peers: Vec<Peer>,
    pub catalog: CatalogClient,
    /// Catch-up reads from peers (and `/synchronize`).
    pub client: ServiceClient,
    /// Propagation to followers (shorter timeout).
    pub propagate_client: ServiceClient,
    role: RwLock<RoleState>,
    /// Serialises epoch changes so "persist, then switch" is one step.
    transition: tokio::sync::Mutex<()>,
    /// Leader only: followers to skip until the given instant.
    pub(crate) lagging: std::sync::Mutex<HashMap<u32, Instant>>,
    /// Whether this replica can commit (see [`crate::readiness`]).
    pub readiness: Readiness,
}

impl Node {
    pub(crate) fn new(config: &Config, id: u32, log: OrderLog) -> Result<Node, OrderError> {
        let epoch = log.epoch()?;
        let token = config.token();
        let peers = config
            .orders
            .iter()
            .filter(|o| o.id != id)
            .map(|o| Peer {
                id: o.id,
                url: o.url(),
            })
            .collect();
        Ok(Node {
            id,
            log,
            peers,
            catalog: CatalogClient::new(config.catalog_url(), token),
            client: ServiceClient::new(CALL_TIMEOUT, token),
            propagate_client: ServiceClient::new(PROPAGATE_TIMEOUT, token),
            role: RwLock::new(RoleState {
                epoch,
                role: Role::Follower,
                leader: None,
            }),
            transition: tokio::sync::Mutex::new(()),
            lagging: std::sync::Mutex::new(HashMap::new()),
            readiness: Readiness::default(),
        })
    }

    pub fn role(&self) -> RoleState {
        *self
            .role
            .read()
            .expect("role lock is never poisoned: no code panics while holding it")
    }

    pub fn peer(&self, id: u32) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The state of following `leader` (or nobody) in `epoch`.
    pub fn following(epoch: u64, leader: Option<u32>) -> RoleState {
        RoleState {
            epoch,
            role: Role::Follower,
            leader,
        }
    }

    /// Moves to `next` if its epoch is at least the current one,
    /// persisting a higher epoch first. Returns the state now in force and
    /// whether the change was taken.
    pub async fn adopt(&self, next: RoleState) -> Result<(RoleState, bool), OrderError> {
        let _t = self.transition.lock().await;
        let current = self.role();
        if next.epoch < current.epoch {
            return Ok((current, false));
        }
        if next.epoch > current.epoch {
            self.log.set_epoch(next.epoch).await?;
        }
        *self.role.write().expect("role lock is never poisoned") = next;
        if current.role != next.role || current.epoch != next.epoch {
            self.readiness.leadership_changed();
        }
        if current != next {
            tracing::info!(epoch = next.epoch, role = %next.role, leader = ?next.leader, "role changed");
        }
        Ok((next, true))
    }

    /// Changes the role only if the state is still `expected` (used by
    /// background tasks, which must not undo a newer change).
    pub fn swap_if(&self, expected: RoleState, role: Role) -> bool {
        let mut guard = self.role.write().expect("role lock is never poisoned");
        if *guard != expected {
            return false;
        }
        guard.role = role;
        if role == Role::Follower {
            guard.leader = None;
        }
        drop(guard);
        self.readiness.leadership_changed();
        tracing::info!(epoch = expected.epoch, %role, "role changed");
        true
    }

    /// Steps down from leading (or catching up in) `epoch`, if that is
    /// still the state.
    pub fn step_down(&self, expected: RoleState) {
        self.swap_if(expected, Role::Follower);
    }

    pub fn health(&self) -> Health {
        let r = self.role();
        let (storage, failure) = self.log.storage();
        let verdict = match storage {
            StorageState::Ok if self.log.scan() == common::storage::ScanState::Running => {
                Err("checking the log's older records".into())
            }
            StorageState::Ok => self.readiness.verdict(),
            _ => Err(format!(
                "storage {}: {}",
                storage.as_str(),
                failure.as_deref().unwrap_or("unknown cause")
            )),
        };
        Health {
            service: "order".into(),
            id: Some(self.id),
            role: r.role,
            epoch: r.epoch,
            highest: self.log.highest(),
            ready: verdict.is_ok(),
            reason: verdict.err(),
            storage,
        }
    }
}
