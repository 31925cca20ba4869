//! The catalog service: stock prices and quantities, the single place where
//! trades are applied and numbered, and the record of every applied order.
//!
//! Its parts:
//! - [`routes`]: the HTTP endpoints and [`AppState`];
//! - [`error`]: [`CatalogError`], the one error type, and the answer each
//!   failure gives;
//! - [`rules`]: the trade arithmetic, a pure function;
//! - [`store`]: [`Catalog`], the database (stocks, applied orders, epoch),
//!   the only code that names the storage engine besides `common::storage`;
//! - [`rebuild`]: `catalog --rebuild`, a new database from the stocks file
//!   and the order log;
//! - [`invalidate`]: cache invalidation at the front-ends, and their
//!   cache leases when there are several;
//! - [`metrics`]: the catalog's own Prometheus figures;
//! - this file: the CLI, [`open`], [`run`] and [`dump`].

pub mod error;
pub mod invalidate;
pub mod metrics;
pub mod rebuild;
pub mod routes;
pub mod rules;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use common::config::{Config, DEFAULT_CONFIG_PATH};
use common::http::Limits;
use common::storage::{Format, StoreError};
use common::types::StockRow;
use tokio::net::TcpListener;

pub use error::CatalogError;
pub use routes::{AppState, router};
pub use store::Catalog;

#[derive(Debug, Parser)]
#[command(name = "catalog", version, about = "Stock Bazaar catalog service")]
pub struct Cli {
    /// Path of config.yaml.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    /// Rebuild the database from the stocks file and the order log of the
    /// running order replicas, then serve: for a database that is damaged.
    /// The old directory is moved aside (`<db_path>.moved-<unix time>`),
    /// never deleted.
    #[arg(long)]
    pub rebuild: bool,
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

/// The name of the catalog's storage in its log lines and recovery line.
const SERVICE: &str = "catalog";

/// Serves the catalog on `listener` until `shutdown` completes, then
/// flushes the database (unless its storage failed).
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
    match catalog.flush().await {
        // A failed store has nothing more it can make durable.
        Err(e) if e.is_unavailable() => Ok(()),
        flushed => flushed.map_err(std::io::Error::other),
    }
}

/// Opens the database (checking every record, and comparing its last order
/// with the running replicas': [`rebuild::compare_with_log`]), loads the
/// initial stocks if it is empty, and builds the state `run` needs. From here on a storage
/// failure ends the process with `common::EXIT_RESTART` once storage works
/// again; a database that cannot be opened or loaded for lack of space
/// waits for space, then exits the same way.
pub async fn open(config: &Config) -> anyhow::Result<AppState> {
    let path = &config.catalog.db_path;
    // Damage the background check of a long record finds ends the process
    // as a failed start-up check does: one line, status 1 (not restarted).
    let on_damage = |e: StoreError| {
        eprintln!("catalog: {}", open_error(e));
        std::process::exit(1)
    };
    let catalog = Catalog::open_serving(path, on_damage)
        .map_err(|e| open_error(common::storage::restart_if_failed(SERVICE, path, e)))?;
    rebuild::compare_with_log(config, catalog.position().await.1).await?;
    serve(config, catalog).await
}

/// `catalog --rebuild` ([`rebuild`]), then the state `run` needs.
pub async fn rebuild_and_open(config: &Config) -> anyhow::Result<AppState> {
    let rebuilt = rebuild::rebuild(config).await?;
    tracing::warn!("{rebuilt}");
    serve(config, rebuilt.catalog).await
}

async fn serve(config: &Config, catalog: Catalog) -> anyhow::Result<AppState> {
    let path = &config.catalog.db_path;
    if catalog.format() == Format::Legacy {
        tracing::warn!(
            "this database was written before records carried checksums; it is read as before. \
             catalog --rebuild rewrites it from the stocks file and the order log"
        );
    }
    let loaded = match catalog.load_initial(&config.catalog.stocks).await {
        Ok(n) => n,
        Err(CatalogError::Store(e)) => {
            return Err(open_error(common::storage::restart_if_failed(
                SERVICE, path, e,
            )));
        }
        Err(e) => return Err(e.into()),
    };
    catalog.health().supervise();
    if loaded > 0 {
        tracing::info!(stocks = loaded, from = %config.catalog.stocks.display(), "loaded initial stocks");
    }
    let token = config.token();
    let invalidator = invalidate::Invalidator::spawn(config);
    Ok(AppState {
        catalog: Arc::new(catalog),
        invalidator: Some(invalidator),
        token: token.map(Arc::from),
    })
}

/// Why the database does not open, with the way out when it is damaged.
fn open_error(e: StoreError) -> anyhow::Error {
    if !e.is_damage() {
        return e.into();
    }
    anyhow::anyhow!(
        "{e}; to rebuild the catalog from the stocks file and the order log of the running \
         replicas, start it with --rebuild (the old directory is moved aside, not deleted)"
    )
}

/// `catalog dump`: reads the database files when the catalog is stopped
/// (refusing, as a start does, files that hold fewer orders than the
/// running replicas), and asks the running catalog when it holds the lock
/// (`common::storage::dump`).
pub async fn dump(config: &Config) -> anyhow::Result<Vec<StockRow>> {
    use common::storage::dump::{Source, open_or_ask};
    let source = open_or_ask(
        &config.catalog.db_path,
        "catalog",
        &config.catalog_url(),
        config.token(),
        Catalog::open,
        open_error,
    )?;
    match source {
        Source::Files(catalog) => {
            rebuild::compare_with_log(config, catalog.position().await.1).await?;
            Ok(catalog.dump()?)
        }
        Source::Running(running) => running.get("/dump").await,
    }
}
