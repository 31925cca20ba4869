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

#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<StockCache>,
    /// Who leads, and the active health check.
    pub selector: Arc<Selector>,
    /// Order queries (and single trades) go to the leader through here.
    pub forward: Arc<Forwarder>,
    /// Trades go to the leader through here, batched when they overlap.
    pub relay: TradeRelay,
    pub catalog: ServiceClient,
    pub catalog_url: Arc<str>,
    pub token: Option<Arc<str>>,
}

impl AppState {
    /// Builds the state and starts the active health check of the leader
    /// and the trade relay.
    pub fn open(config: &Config) -> AppState {
        let token = config.token();
        let selector = Arc::new(Selector::new(config));
        let interval = Duration::from_millis(config.frontend.health_check_interval_ms);
        let checker = selector.clone();
        tokio::spawn(async move { checker.run_health_check(interval).await });
        let forward = Arc::new(Forwarder::new(selector.clone(), token));
        AppState {
            cache: Arc::new(StockCache::new(config.frontend.cache_size)),
            relay: TradeRelay::spawn(forward.clone()),
            forward,
            selector,
            catalog: ServiceClient::new(CATALOG_TIMEOUT, token),
            catalog_url: config.catalog_url().into(),
            token: token.map(Arc::from),
        }
    }

    /// The front-end's own health: up, and the leader it routes to.
    pub fn health(&self) -> Health {
        let leader = self.selector.current();
        Health {
            service: "frontend".into(),
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
