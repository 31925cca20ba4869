//! An order replica: a durable, replicated log of orders. The replica the
//! front-end names leader takes trades, has the catalog apply and number
//! them, stores them, and propagates them to the followers before it
//! answers.

pub mod error;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod replication;
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

#[derive(Debug, Parser)]
#[command(name = "order", version, about = "Stock Bazaar order replica")]
pub struct Cli {
    /// Path of config.yaml.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    /// Replica id (as listed under `orders` in the config).
    #[arg(long)]
    pub id: Option<u32>,
    /// Resume after a crash. Every start catches up from the peers before it
    /// serves; the flag is accepted for the original command line.
    #[arg(long)]
    pub resume: bool,
    /// Move this replica's database aside (to `<db_path>.moved-<unix time>`,
    /// never deleted) and rebuild it from the peers before serving: for a
    /// sled directory that no longer opens.
    #[arg(long)]
    pub rebuild: bool,
    #[command(flatten)]
    pub log: common::telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every order of a replica as JSON lines, ascending by number.
    Dump {
        /// Replica id (may also be given before `dump`).
        #[arg(long)]
        id: Option<u32>,
    },
}

/// Opens the replica's log and starts its background tasks (sequencer and
/// leader heartbeat). The replica does not serve yet.
pub fn open(config: &Config, id: u32) -> anyhow::Result<AppState> {
    let me = config
        .order(id)
        .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?;
    let log = store::OrderLog::open(&me.db_path).map_err(|e| {
        let hint = if e.to_string().contains("locked") {
            ""
        } else {
            "; to rebuild this replica from its peers, start it with --rebuild \
             (the old directory is moved aside, not deleted)"
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let (tx, rx) = leader::channel();
    let node = Arc::new(node::Node::new(config, id, log, tx)?);
    tokio::spawn(leader::run_sequencer(node.clone(), rx));
    tokio::spawn(leader::run_heartbeat(node.clone()));
    let token = common::config::cluster_token(config).map(Arc::from);
    Ok(AppState { node, token })
}

/// `--rebuild`: moves the database directory aside so the replica starts
/// empty and pulls every order from its peers. Returns where it went.
pub fn move_aside(db_path: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
    if !db_path.exists() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut target = db_path.as_os_str().to_owned();
    target.push(format!(".moved-{secs}"));
    let target = PathBuf::from(target);
    std::fs::rename(db_path, &target).map_err(|e| {
        anyhow::anyhow!(
            "cannot move {} aside to {}: {e}",
            db_path.display(),
            target.display()
        )
    })?;
    Ok(Some(target))
}

/// Catches up from the peers, then serves on `listener` until `shutdown`,
/// then flushes.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let node = state.node.clone();
    match replication::catch_up_from_peers(&node).await {
        Ok(n) => {
            tracing::info!(pulled = n, highest = ?node.log.highest(), "start-up catch-up done")
        }
        Err(e) => {
            tracing::warn!(error = %e, "start-up catch-up incomplete; the leader will fill the rest")
        }
    }
    metrics::METRICS.highest.set(
        node.log
            .highest()
            .map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX)),
    );
    let mut registry = common::metrics::MetricsBuilder::new(&format!("order-{}", node.id));
    metrics::register(&mut registry.registry);
    let app = registry.finish(router(state));
    common::http::serve(listener, app, Limits::INTERNAL, shutdown).await?;
    node.log.flush().await.map_err(std::io::Error::other)
}

/// `order dump`: reads the sled files when the replica is stopped, and asks
/// the running replica when it holds the lock.
pub async fn dump(
    config: &Config,
    id: u32,
    mut emit: impl FnMut(&common::types::Order) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let me = config
        .order(id)
        .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?;
    if !me.db_path.exists() {
        anyhow::bail!("no database for replica {id} at {}", me.db_path.display());
    }
    match store::OrderLog::open(&me.db_path) {
        Ok(log) => {
            let mut from = 0;
            loop {
                let page = log.range(from, store::MAX_RANGE)?;
                let Some(last) = page.last() else {
                    return Ok(());
                };
                from = last.number + 1;
                for r in &page {
                    emit(&r.to_order())?;
                }
            }
        }
        Err(store::StoreError::Open(common::storage::OpenError::Locked { .. })) => {
            let token = common::config::cluster_token(config);
            let client =
                common::http::internal_client(std::time::Duration::from_secs(10), token.as_deref());
            let url = format!("{}/log", me.url());
            let mut from = 0u64;
            loop {
                let resp = client
                    .get(&url)
                    .query(&[("from", from.to_string()), ("limit", store::MAX_RANGE.to_string())])
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("the database of replica {id} is locked by the running replica, and asking it at {url} failed: {e}"))?;
                if !resp.status().is_success() {
                    anyhow::bail!("the running replica at {url} answered {}", resp.status());
                }
                let page: Vec<common::types::OrderRecord> = resp.json().await?;
                let Some(last) = page.last() else {
                    return Ok(());
                };
                from = last.number + 1;
                for r in &page {
                    emit(&r.to_order())?;
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}
