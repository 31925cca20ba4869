//! The front-end: the public gateway. It serves lookups from an LRU cache
//! or the catalog, and forwards trades and order queries to the leader
//! replica it selects and watches.

pub mod cache;
pub mod leader;
pub mod relay;
pub mod routes;
pub mod status;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::config::{Config, DEFAULT_CONFIG_PATH};
use common::http::Limits;
use tokio::net::TcpListener;

pub use routes::{AppState, router};

#[derive(Debug, Parser)]
#[command(
    name = "frontend",
    version,
    about = "Stock Bazaar front-end (public REST gateway)"
)]
pub struct Cli {
    /// Path of config.yaml.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(flatten)]
    pub log: common::telemetry::LogArgs,
}

/// Builds the state and starts the active health check of the leader.
pub fn open(config: &Config) -> AppState {
    let token = common::config::cluster_token(config);
    let leaders = Arc::new(leader::Leaders::new(config, token.as_deref()));
    let interval = Duration::from_millis(config.frontend.health_check_interval_ms);
    let checker = leaders.clone();
    tokio::spawn(async move { checker.run_health_check(interval).await });
    AppState {
        cache: Arc::new(cache::StockCache::new(config.frontend.cache_size)),
        relay: relay::TradeRelay::spawn(leaders.clone()),
        leaders,
        catalog: common::http::internal_client(routes::CATALOG_TIMEOUT, token.as_deref()),
        catalog_url: config.catalog_url().into(),
        token: token.map(Arc::from),
    }
}

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut metrics = common::metrics::MetricsBuilder::new("frontend");
    state.cache.stats.register(&mut metrics.registry);
    state.leaders.stats.register(&mut metrics.registry);
    let app = metrics.finish(router(state));
    common::http::serve(listener, app, Limits::PUBLIC, shutdown).await
}
