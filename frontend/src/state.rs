//! The front-end's shared state, which the routes and `/status` both read.

use std::sync::Arc;
use std::time::Duration;

use common::client::ServiceClient;
use common::config::Config;
use common::types::{Health, Role};

use crate::cache::StockCache;
use crate::forward::Forwarder;
use crate::relay::TradeRelay;
use crate::selection::Selector;

/// Timeout of a lookup at the catalog.
pub const CATALOG_TIMEOUT: Duration = Duration::from_secs(2);

/// What every route shares, behind one `Arc`: axum clones the state for
/// every request (more than once through the layers), and cloning and
/// dropping the fields one by one was about 14% of the front-end's samples
/// on cached lookups (`perf record`, docs/PERFORMANCE.md).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// Which front-end this is (1 is `frontend:` in the config).
    pub id: u32,
    pub cache: Arc<StockCache>,
    /// Who leads, and the active health check.
    pub selector: Arc<Selector>,
    /// Order queries (and single trades) go to the leader through here.
    pub forward: Arc<Forwarder>,
    /// Trades go to the leader through here, batched when they overlap.
    pub relay: TradeRelay,
    pub catalog: ServiceClient,
    pub catalog_url: Arc<str>,
    /// The other front-ends of the config (name, URL), for `/status`.
    pub other_frontends: Arc<[(String, String)]>,
    pub token: Option<Arc<str>>,
}

impl AppState {
    /// Builds the state and starts the active health check of the leader
    /// and the trade relay.
    pub fn open(config: &Config, id: u32) -> AppState {
        let token = config.token();
        let selector = Arc::new(Selector::new(config));
        let interval = Duration::from_millis(config.frontend.health_check_interval_ms);
        let checker = selector.clone();
        tokio::spawn(async move { checker.run_health_check(interval).await });
        let forward = Arc::new(Forwarder::new(selector.clone(), token));
        let cache = Arc::new(StockCache::new(config.frontend.cache_size));
        if config.frontends().len() > 1 {
            // With several front-ends a trade can pass another one, so this
            // cache serves only under the catalog's lease, which its
            // invalidations renew (crate::cache).
            cache.enforce_lease();
        }
        AppState(Arc::new(Shared {
            id,
            cache,
            relay: TradeRelay::spawn(forward.clone()),
            forward,
            selector,
            catalog: ServiceClient::new(CATALOG_TIMEOUT, token),
            catalog_url: config.catalog_url().into(),
            other_frontends: config
                .frontends()
                .into_iter()
                .filter(|f| f.id != id)
                .map(|f| (frontend_name(f.id), f.url()))
                .collect(),
            token: token.map(Arc::from),
        }))
    }

    /// `frontend` for front-end 1, `frontend-N` for the others: the name
    /// in `/status`, `/metrics` and `bazaar status`.
    pub fn name(&self) -> String {
        frontend_name(self.id)
    }

    /// The front-end's own health: up, and the leader it routes to (`id`).
    pub fn health(&self) -> Health {
        let leader = self.selector.current();
        Health {
            service: self.name(),
            id: leader.as_ref().map(|l| l.id),
            role: Role::Up,
            epoch: leader.map_or(0, |l| l.epoch),
            highest: None,
            ready: true,
            reason: None,
            storage: common::types::StorageState::Ok,
        }
    }
}

/// `frontend` for front-end 1, `frontend-N` for the others.
pub fn frontend_name(id: u32) -> String {
    if id == 1 {
        "frontend".into()
    } else {
        format!("frontend-{id}")
    }
}
