//! The front-end: the public gateway. It serves lookups from an LRU cache
//! or the catalog, and forwards trades and order queries to the leader
//! replica it selects and watches.
//!
//! Parts: [`state`] (what every route shares), [`routes`] (the public API
//! and the invalidation hook), [`cache`] (the exact LRU of stocks),
//! [`selection`] (who leads; the active health check), [`forward`]
//! (requests to the leader, with failover), [`relay`] (trades batched on
//! their way to the leader), [`status`] (`GET /status`).

pub mod cache;
pub mod forward;
pub mod relay;
pub mod routes;
pub mod selection;
pub mod state;
pub mod status;

use std::future::Future;
use std::path::PathBuf;

use clap::Parser;
use common::config::{Config, DEFAULT_CONFIG_PATH};
use common::http::Limits;
use tokio::net::TcpListener;

pub use routes::router;
pub use state::AppState;

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
    /// Which front-end this is: 1 is `frontend:` in the config, 2 and up
    /// are listed under `extra_frontends`.
    #[arg(long, default_value_t = 1)]
    pub id: u32,
    #[command(flatten)]
    pub log: common::telemetry::LogArgs,
}

/// Builds the state of front-end 1 and starts the active health check of
/// the leader.
pub fn open(config: &Config) -> AppState {
    AppState::open(config, 1)
}

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut metrics = common::metrics::MetricsBuilder::new(&state.name());
    state.cache.stats.register(&mut metrics.registry);
    state.selector.stats.register(&mut metrics.registry);
    state.relay.stats.register(&mut metrics.registry);
    let app = metrics.finish(router(state));
    common::http::serve(listener, app, Limits::PUBLIC, shutdown).await
}
