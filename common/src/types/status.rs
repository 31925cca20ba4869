//! What services say about themselves: the role, readiness and storage of
//! `GET /health`, and the front-end's `GET /status` view of the cluster.

use serde::{Deserialize, Serialize};

/// Header on a replica's 503 saying why it refused: `follower` (ask the
/// leader), `catching-up` (the leader, not ready yet: retry shortly) or
/// `leader` (ready, but a dependency failed).
pub const ROLE_HEADER: &str = "x-bazaar-role";

/// What a service is doing, as `/health` reports it and as a replica's 503
/// says in the `x-bazaar-role` header. On the wire it is the lower-case,
/// hyphenated name (`leader`, `catching-up`, `follower`, `up`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The replica that takes trades.
    Leader,
    /// Selected as leader, still catching up before it takes trades.
    CatchingUp,
    /// A replica that follows the leader (or has not been told who leads).
    Follower,
    /// The catalog or a front-end: no replication role.
    Up,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::CatchingUp => "catching-up",
            Role::Follower => "follower",
            Role::Up => "up",
        }
    }

    /// Reads the wire name (e.g. from the `x-bazaar-role` header).
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Leader, Role::CatchingUp, Role::Follower, Role::Up]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Lets a role be compared with its wire name (`h.role == "leader"`).
impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Role {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a service's storage, as `/health` reports it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StorageState {
    /// Writes and flushes succeed.
    #[default]
    Ok,
    /// A write or flush failed for lack of space.
    Full,
    /// A write or flush failed otherwise (I/O error, corruption).
    Error,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Ok => "ok",
            StorageState::Full => "full",
            StorageState::Error => "error",
        }
    }
}

fn yes() -> bool {
    true
}

/// What every service answers on `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    pub role: Role,
    /// Highest leader epoch this process has seen.
    pub epoch: u64,
    /// Highest order number held (replicas) or applied (catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest: Option<u64>,
    /// Whether the service can do its job now: a replica can commit trades
    /// (it reaches the catalog, its storage works), the catalog can apply
    /// them. A service that answers but is not ready is alive, not healthy.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub storage: StorageState,
}

/// The front-end's `GET /status`: the whole cluster as it sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub leader: Option<LeaderInfo>,
    /// Leader selections since the front-end started.
    pub selections: u64,
    /// The latest leader changes, oldest first.
    pub leader_changes: Vec<LeaderChange>,
    /// Catalog, then every replica (highest id first), then this front-end,
    /// then the other front-ends of the config.
    pub services: Vec<ServiceStatus>,
    pub cache: CacheStatus,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: u32,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderChange {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `None` when no replica answered.
    pub id: Option<u32>,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `catalog`, `order-N` or `frontend`.
    pub service: String,
    pub url: String,
    pub up: bool,
    /// What its `/health` said, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStatus {
    pub capacity: usize,
    /// Cached stock names, most recently used first.
    pub entries: Vec<String>,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub invalidations: u64,
}
