//! An order replica: a durable, replicated log of orders. The replica the
//! front-end names leader takes trades, has the catalog apply and number
//! them, stores them, and propagates them to the followers before it
//! answers.
//!
//! Parts, by role (docs/PROTOCOL.md describes the wire):
//! - [`node`]: the replica's state: log, peers, role and epoch;
//! - [`readiness`]: whether it can commit (reaches the catalog, storage works);
//! - [`routes`]: the HTTP API; [`error`]: how failures look on the wire;
//! - [`sequencer`]: the leader's batching of trades into durable orders;
//! - [`takeover`]: becoming leader (catch up, fence and reconcile with the
//!   catalog) and the role changes a leader notice makes;
//! - [`catalog`]: the typed client of the catalog (`/fence`, `/apply`, `/applied`);
//! - [`replication`]: both sides of propagation, catch-up and the heartbeat;
//! - [`store`]: the order log on disk, the only code that knows the engine;
//! - [`metrics`]: the replica's Prometheus figures.

pub mod catalog;
pub mod error;
pub mod metrics;
pub mod node;
pub mod readiness;
pub mod replication;
pub mod routes;
pub mod sequencer;
pub mod store;
pub mod takeover;

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

/// Opens the replica's log (checking every record, see [`store`]) and starts
/// its background tasks (sequencer and leader heartbeat). The replica does
/// not serve yet. From here on a storage failure ends the process with
/// `common::EXIT_RESTART` once storage works again; a log that cannot be
/// opened for lack of space waits for space, then exits the same way.
pub fn open(config: &Config, id: u32) -> anyhow::Result<AppState> {
    let me = config
        .order(id)
        .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?;
    let service = format!("order-{id}");
    // Damage the background check of a long log finds ends the process as
    // a failed start-up check does: one line, status 1 (not restarted).
    let on_damage = |e: store::StoreError| {
        eprintln!("order: {}", open_error(e));
        std::process::exit(1)
    };
    let log = store::OrderLog::open_serving(&me.db_path, &service, on_damage)
        .map_err(|e| open_error(common::storage::restart_if_failed(&service, &me.db_path, e)))?;
    log.health().supervise();
    if log.format() == common::storage::Format::Legacy {
        tracing::warn!(
            "this log was written before records carried checksums; it is read as before. \
             --rebuild rewrites it from the peers with checksums"
        );
    }
    let node = Arc::new(node::Node::new(config, id, log)?);
    let sequencer = sequencer::Sequencer::spawn(node.clone());
    tokio::spawn(replication::run_heartbeat(node.clone()));
    tokio::spawn(probe_catalog(node.clone()));
    Ok(AppState {
        node,
        sequencer,
        token: config.token().map(Arc::from),
    })
}

/// Why the log does not open, with the way out when it is damaged.
fn open_error(e: store::StoreError) -> anyhow::Error {
    if !e.is_damage() {
        return e.into();
    }
    anyhow::anyhow!(
        "{e}; to rebuild this replica from its peers, start it with --rebuild \
         (the old directory is moved aside, not deleted)"
    )
}

/// Checks every [`readiness::PROBE_INTERVAL`] that the catalog answers, for
/// as long as the process runs (see [`readiness`]).
async fn probe_catalog(node: Arc<node::Node>) {
    let mut tick = tokio::time::interval(readiness::PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A catalog that answers but cannot apply (its storage failed) is
        // as good as unreachable for committing.
        let answer = match node.catalog.health().await {
            Ok(h) if h.ready => Ok(()),
            Ok(h) => Err(format!(
                "the catalog is not ready: {}",
                h.reason.unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        };
        node.readiness.probed(answer);
    }
}

/// `--rebuild`: moves the database directory aside so the replica starts
/// empty and pulls every order from its peers. Returns where it went.
pub fn move_aside(db_path: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(common::storage::move_aside(db_path)?)
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
    match node.log.flush().await {
        // A failed store has nothing more it could make durable; its
        // recovery watcher decides how the process ends.
        Err(e) if e.is_unavailable() => Ok(()),
        other => other.map_err(std::io::Error::other),
    }
}

/// `order dump`: reads the sled files when the replica is stopped, and asks
/// the running replica when it holds the lock (`common::storage::dump`).
pub async fn dump(
    config: &Config,
    id: u32,
    mut emit: impl FnMut(&common::types::Order) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use common::storage::dump::{Source, open_or_ask};
    let me = config
        .order(id)
        .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?;
    let what = format!("replica {id}");
    let source = open_or_ask(
        &me.db_path,
        &what,
        &me.url(),
        config.token(),
        store::OrderLog::open,
        open_error,
    )?;
    let mut from = 0u64;
    loop {
        let page = match &source {
            Source::Files(log) => log.range(from, store::MAX_RANGE)?,
            Source::Running(running) => {
                running
                    .get::<Vec<common::types::OrderRecord>>(&format!(
                        "/log?from={from}&limit={}",
                        store::MAX_RANGE
                    ))
                    .await?
            }
        };
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.number + 1;
        for r in &page {
            emit(&r.to_order())?;
        }
    }
}
