//! `catalog --rebuild`: a new catalog database from the stocks file and the
//! order log, for a catalog whose files are damaged. The catalog has no
//! peer, but every trade it applied is in the order log: replaying the log
//! through the same write as `/apply` ([`crate::rules::trade`])
//! recomputes the quantities, the volumes, the applied record and the next
//! number. The log comes from the running replicas (`GET /log` pages with
//! the cluster token), from the one holding the most orders; the epoch is
//! the highest any replica reports, so the current leader is not fenced out.
//!
//! The new database is built beside the old one (`<db>.rebuilding`); only
//! when it is complete is the old one moved aside (`<db>.moved-<unix
//! time>`, never deleted) and the new one put in its place. A batch the
//! catalog applied but no replica stored yet (the leader failed between
//! the two) is not in the log and is not rebuilt: it was never
//! acknowledged, and its caller's retry (same key) applies it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::ServiceClient;
use common::config::Config;
use common::storage::{MAX_RANGE, OpenError, StoreError};
use common::types::{ApplyBatch, OrderRecord, TradeCommand, TradeOutcome};

use crate::store::Catalog;

/// Timeout of one call to a replica (a health probe or one page of 1,000
/// orders).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the rebuilt database may stay locked by the engine's threads
/// of the build, which let go of it a moment after it is closed.
const UNLOCK_WAIT: Duration = Duration::from_secs(10);

/// What a rebuild did, for its one line.
pub struct Rebuilt {
    pub catalog: Catalog,
    pub stocks: usize,
    pub orders: u64,
    pub epoch: u64,
    /// The replica whose log was replayed.
    pub replica: u32,
    /// Where the old database went.
    pub moved: Option<PathBuf>,
}

impl std::fmt::Display for Rebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rebuilt the catalog from the stocks file ({} stocks) and the order log of replica {} \
             ({} orders replayed, epoch {})",
            self.stocks, self.replica, self.orders, self.epoch
        )?;
        match &self.moved {
            Some(moved) => write!(f, "; the old database is kept at {}", moved.display()),
            None => write!(f, "; there was no old database"),
        }
    }
}

/// Rebuilds the catalog database of `config` and returns it opened.
pub async fn rebuild(config: &Config) -> anyhow::Result<Rebuilt> {
    let client = ServiceClient::new(CALL_TIMEOUT, config.token());
    let (replica, url, epoch) = best_replica(config, &client).await?;
    let path = &config.catalog.db_path;
    let staging = sibling(path, ".rebuilding");
    if staging.exists() {
        // Our own leftover from a rebuild that did not finish.
        std::fs::remove_dir_all(&staging).map_err(|e| {
            anyhow::anyhow!(
                "cannot clear the unfinished rebuild at {}: {e}",
                staging.display()
            )
        })?;
    }
    let building = Arc::new(Catalog::open(&staging)?);
    let stocks = building.load_initial(&config.catalog.stocks).await?;
    building.fence(epoch, None).await?;
    let orders = replay(&building, &client, &url, epoch, &config.catalog.stocks).await?;
    building.flush().await?;
    drop(building);
    let moved = common::storage::move_aside(path)?;
    std::fs::rename(&staging, path).map_err(|e| {
        anyhow::anyhow!(
            "cannot put the rebuilt catalog {} in place of {}: {e}",
            staging.display(),
            path.display()
        )
    })?;
    let catalog = open_when_unlocked(path).await?;
    Ok(Rebuilt {
        catalog,
        stocks,
        orders,
        epoch,
        replica,
        moved,
    })
}

/// The replica holding the most orders (its id and URL), and the highest
/// epoch any replica reports.
async fn best_replica(
    config: &Config,
    client: &ServiceClient,
) -> anyhow::Result<(u32, String, u64)> {
    let mut best: Option<(Option<u64>, u32, String)> = None;
    let mut epoch = 0;
    let mut silent = Vec::new();
    for o in &config.orders {
        let url = o.url();
        match client.health(&url).await {
            Ok(h) => {
                epoch = epoch.max(h.epoch);
                if best.as_ref().is_none_or(|(most, ..)| h.highest > *most) {
                    best = Some((h.highest, o.id, url));
                }
            }
            Err(e) => silent.push(format!("replica {} at {url}: {e}", o.id)),
        }
    }
    match best {
        Some((_, id, url)) => {
            if !silent.is_empty() {
                tracing::warn!(silent = ?silent, "some replicas did not answer; using the others");
            }
            Ok((id, url, epoch))
        }
        None => anyhow::bail!(
            "catalog --rebuild replays the order log of the running replicas, and none answered \
             ({}); start them first",
            silent.join("; ")
        ),
    }
}

/// Applies every order of the replica at `url`, page by page, each under
/// its own number; returns how many.
async fn replay(
    catalog: &Arc<Catalog>,
    client: &ServiceClient,
    url: &str,
    epoch: u64,
    stocks: &Path,
) -> anyhow::Result<u64> {
    let mut from = 0u64;
    loop {
        let page: Vec<OrderRecord> = client
            .get(format!("{url}/log?from={from}&limit={MAX_RANGE}"))
            .await
            .map_err(|e| anyhow::anyhow!("reading the order log at {url} from {from}: {e}"))?;
        if page.is_empty() {
            return Ok(from);
        }
        if let Some((r, _)) = page.iter().zip(from..).find(|(r, n)| r.number != *n) {
            anyhow::bail!(
                "the order log at {url} skips from {from} to order {}",
                r.number
            );
        }
        let batch = ApplyBatch {
            leader_id: None,
            epoch,
            base: from,
            trades: page
                .iter()
                .map(|r| TradeCommand {
                    name: r.name.clone(),
                    kind: r.kind,
                    quantity: r.quantity,
                    key: r.key.clone(),
                })
                .collect(),
        };
        let outcomes = catalog.apply(&batch).await?;
        for (r, o) in page.iter().zip(&outcomes) {
            if *o != (TradeOutcome::Applied { number: r.number }) {
                anyhow::bail!(
                    "order {} ({} {} {}) does not replay on the stocks of {}: {o:?}",
                    r.number,
                    r.name,
                    r.kind.as_str(),
                    r.quantity,
                    stocks.display()
                );
            }
        }
        from += u64::try_from(page.len())?;
    }
}

/// Timeout of the start-up comparison with a replica: a replica that does
/// not answer within it is left out, not waited for.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the order log holds orders the catalog does not: the catalog
/// applies every order before any replica stores it, so a replica holding
/// order `next` or above means the catalog lost orders it applied. That is
/// what a damaged file looks like to sled, which ends its recovery at the
/// first damaged record it meets and opens what came before as if whole.
/// Asked of the running replicas at start-up (and by `catalog dump`); one
/// that does not answer is left out. Returns an error naming `--rebuild`.
pub async fn compare_with_log(config: &Config, next: u64) -> anyhow::Result<()> {
    let client = ServiceClient::new(COMPARE_TIMEOUT, config.token());
    let mut asks = tokio::task::JoinSet::new();
    for o in &config.orders {
        let (client, id, url) = (client.clone(), o.id, o.url());
        asks.spawn(async move { (id, client.health(&url).await) });
    }
    let mut ahead: Option<(u32, u64)> = None;
    while let Some(answer) = asks.join_next().await {
        if let Ok((id, Ok(h))) = answer
            && let Some(highest) = h.highest.filter(|&h| h >= next)
            && ahead.is_none_or(|(_, most)| highest > most)
        {
            ahead = Some((id, highest));
        }
    }
    match ahead {
        None => Ok(()),
        Some((id, highest)) => anyhow::bail!(
            "the catalog database at {} holds applied orders below {next} only, but replica {id} \
             holds order {highest}: the catalog lost orders it applied (its files are damaged or \
             were replaced); to rebuild the catalog from the stocks file and the order log of the \
             running replicas, start it with --rebuild (the old directory is moved aside, not \
             deleted)",
            config.catalog.db_path.display()
        ),
    }
}

/// `path` with `suffix` added to its last component.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn open_when_unlocked(path: &Path) -> Result<Catalog, StoreError> {
    let started = Instant::now();
    loop {
        match Catalog::open(path) {
            Err(StoreError::Open(OpenError::Locked { .. })) if started.elapsed() < UNLOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}
