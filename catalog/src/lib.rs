//! The catalog service: stock prices and quantities, the single place where
//! trades are applied and numbered, and the record of every applied order.

pub mod invalidate;
pub mod metrics;
pub mod routes;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use common::config::{Config, DEFAULT_CONFIG_PATH};
use common::http::Limits;
use tokio::net::TcpListener;

pub use routes::{AppState, router};
pub use store::Catalog;

#[derive(Debug, Parser)]
#[command(name = "catalog", version, about = "Stock Bazaar catalog service")]
pub struct Cli {
    /// Path of config.yaml.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    #[command(flatten)]
    pub log: common::telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every stock as JSON lines, ascending by name.
    Dump,
}

/// Serves the catalog on `listener` until `shutdown` completes, then
/// flushes the database.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let catalog = state.catalog.clone();
    let mut registry = common::metrics::MetricsBuilder::new("catalog");
    metrics::register(&mut registry.registry);
    let app = registry.finish(router(state));
    common::http::serve(listener, app, Limits::INTERNAL, shutdown).await?;
    catalog.flush().await.map_err(std::io::Error::other)
}

/// Opens the database, loads the initial stocks if it is empty, and builds
/// the state `run` needs.
pub async fn open(config: &Config) -> anyhow::Result<AppState> {
    let catalog = Catalog::open(&config.catalog.db_path)?;
    let loaded = catalog.load_initial(&config.catalog.stocks).await?;
    if loaded > 0 {
        tracing::info!(stocks = loaded, from = %config.catalog.stocks.display(), "loaded initial stocks");
    }
    let token = common::config::cluster_token(config);
    let invalidator = invalidate::Invalidator::spawn(config.frontend_url(), token.as_deref());
    Ok(AppState {
        catalog: Arc::new(catalog),
        invalidator: Some(invalidator),
        token: token.map(Arc::from),
    })
}

/// `catalog dump`: reads the sled files when the catalog is stopped, and
/// asks the running catalog when it holds the lock.
pub async fn dump(config: &Config) -> anyhow::Result<Vec<common::types::StockRow>> {
    let path = &config.catalog.db_path;
    if !path.exists() {
        anyhow::bail!("no catalog database at {}", path.display());
    }
    match Catalog::open(path) {
        Ok(c) => Ok(c.dump()?),
        Err(store::StoreError::Open(common::storage::OpenError::Locked { .. })) => {
            let token = common::config::cluster_token(config);
            let client =
                common::http::internal_client(std::time::Duration::from_secs(10), token.as_deref());
            let url = format!("{}/dump", config.catalog_url());
            let resp = client.get(&url).send().await.map_err(|e| {
                anyhow::anyhow!("the database at {} is locked by a running catalog, and asking it at {url} failed: {e}", path.display())
            })?;
            if !resp.status().is_success() {
                anyhow::bail!("the running catalog at {url} answered {}", resp.status());
            }
            Ok(resp.json().await?)
        }
        Err(e) => Err(e.into()),
    }
}
