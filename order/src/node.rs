//! One replica's state: its log, its peers, and its role in the current
//! leader epoch. Roles change only through [`Node::adopt`], which records a
//! higher epoch durably before it takes effect.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::config::Config;
use common::types::Health;
use tokio::sync::mpsc;

use crate::error::OrderError;
use crate::leader::Pending;
use crate::store::OrderLog;

/// Timeout of calls to the catalog and of catch-up pages.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one propagation to a follower: a follower slower than this is
/// left behind (it catches up by itself) rather than slowing every trade.
pub const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed propagation a follower is skipped this long before the
/// leader tries it again, so a dead follower costs one timeout per interval.
pub const FOLLOWER_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows `leader` (unknown right after start).
    Follower { leader: Option<u32> },
    /// Selected as leader; syncing with peers and the catalog before it takes trades.
    CatchingUp,
    /// Takes trades.
    Leader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower { .. } => "follower",
            Role::CatchingUp => "catching-up",
            Role::Leader => "leader",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleState {
    pub epoch: u64,
    pub role: Role,
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
    pub catalog_url: String,
    /// Calls to the catalog and catch-up reads.
    pub client: reqwest::Client,
    /// Propagation to followers (shorter timeout).
    pub propagate_client: reqwest::Client,
    pub(crate) sequencer: mpsc::Sender<Pending>,
    role: RwLock<RoleState>,
    /// Serialises epoch changes so "persist, then switch" is one step.
    transition: tokio::sync::Mutex<()>,
    /// Leader only: followers to skip until the given instant.
    pub(crate) lagging: std::sync::Mutex<HashMap<u32, Instant>>,
}

impl Node {
    pub(crate) fn new(
        config: &Config,
        id: u32,
        log: OrderLog,
        sequencer: mpsc::Sender<Pending>,
    ) -> Result<Node, OrderError> {
        let epoch = log.epoch()?;
        let token = common::config::cluster_token(config);
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
            catalog_url: config.catalog_url(),
            client: common::http::internal_client(CALL_TIMEOUT, token.as_deref()),
            propagate_client: common::http::internal_client(PROPAGATE_TIMEOUT, token.as_deref()),
            sequencer,
            role: RwLock::new(RoleState {
                epoch,
                role: Role::Follower { leader: None },
            }),
            transition: tokio::sync::Mutex::new(()),
            lagging: std::sync::Mutex::new(HashMap::new()),
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

    /// Moves to `role` in `epoch` if `epoch` is at least the current one,
    /// persisting a higher epoch first. Returns the state now in force and
    /// whether the change was taken.
    pub async fn adopt(&self, epoch: u64, role: Role) -> Result<(RoleState, bool), OrderError> {
        let _t = self.transition.lock().await;
        let current = self.role();
        if epoch < current.epoch {
            return Ok((current, false));
        }
        if epoch > current.epoch {
            self.log.set_epoch(epoch).await?;
        }
        let next = RoleState { epoch, role };
        *self.role.write().expect("role lock is never poisoned") = next;
        if current != next {
            tracing::info!(epoch, role = role.name(), "role changed");
        }
        Ok((next, true))
    }

    /// Changes the role only if the state is still `expected` (used by the
    /// background leadership task, which must not undo a newer change).
    pub fn swap_if(&self, expected: RoleState, role: Role) -> bool {
        let mut guard = self.role.write().expect("role lock is never poisoned");
        if *guard != expected {
            return false;
        }
        guard.role = role;
        tracing::info!(epoch = expected.epoch, role = role.name(), "role changed");
        true
    }

    pub fn health(&self) -> Health {
        let r = self.role();
        Health {
            service: "order".into(),
            id: Some(self.id),
            role: r.role.name().into(),
            epoch: r.epoch,
            highest: self.log.highest(),
        }
    }
}
