//! `bazaar bench --fill N`: how memory, restart, catch-up and dumps grow
//! with the log. A fresh scratch cluster's log is filled through the
//! leader's `POST /orders/batch` (cluster token, a unique key per trade,
//! sell then buy of one share of a stock so quantities never run out, a
//! bounded number of batches in flight) and, at each checkpoint (100k, 500k,
//! 1M and N, those ≤ N), the fill pauses while every service's RSS is read,
//! every replica's log and the catalog are dumped, one follower is killed
//! (-9) and restarted, and the same follower is stopped, emptied (its
//! database moved aside) and started again, each until its `/health` shows
//! the leader's highest order.

mod load;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::client::ServiceClient;
use common::types::MAX_TRADE_BATCH;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::Goal;
use crate::cluster::{Cluster, ScratchOptions, Service};
use crate::scratch::Scratch;
use load::{Counts, Shared, fill, find_leader};

/// The checkpoints every fill measures; N itself is always one.
pub const CHECKPOINTS: [u64; 3] = [100_000, 500_000, 1_000_000];
/// How long a replica gets to catch up (a restart or a refill from empty).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
pub struct FillOptions {
    /// Orders in the log at the end.
    pub orders: u64,
    /// Batches of [`MAX_TRADE_BATCH`] trades in flight at once.
    pub in_flight: usize,
}

/// What one service's resident memory was at a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRss {
    pub service: String,
    pub rss_kib: u64,
}

/// One replica rejoining, until its `/health` showed the leader's highest.
#[derive(Debug, Clone, Serialize)]
pub struct Rejoin {
    pub service: String,
    pub ms: f64,
    /// Its RSS once caught up.
    pub rss_kib: u64,
}

/// One dump through the real binary (`order dump --id N`, `catalog dump`).
#[derive(Debug, Clone, Serialize)]
pub struct Dump {
    pub command: String,
    pub ms: f64,
    pub lines: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Orders committed by the fill so far.
    pub orders: u64,
    /// The leader's highest order number.
    pub highest: u64,
    /// Orders per second of the fill since the previous checkpoint.
    pub fill_rate: f64,
    /// Every service, measured before anything below disturbed it.
    pub rss: Vec<ServiceRss>,
    pub dumps: Vec<Dump>,
    /// A follower killed with -9 and started again.
    pub restart: Rejoin,
    /// The same follower stopped, its database moved aside, started empty.
    pub empty_catch_up: Rejoin,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FillReport {
    pub nproc: usize,
    pub memory_kib: u64,
    pub target: u64,
    pub committed: u64,
    /// Trades refused, or not committed after every attempt.
    pub errors: u64,
    /// Trades answered `retry` and resent with the same key.
    pub retries: u64,
    pub batch: usize,
    pub in_flight: usize,
    /// Seconds spent filling (the checkpoints' measurements not counted).
    pub fill_s: f64,
    /// Orders per second over the whole fill.
    pub fill_rate: f64,
    pub leader: String,
    pub follower: String,
    pub checkpoints: Vec<Checkpoint>,
    /// The memory and linearity goals (docs/PERFORMANCE.md).
    pub goals: Vec<Goal>,
}

/// The checkpoints of a fill to `n`: those of [`CHECKPOINTS`] below `n`, then `n`.
pub fn checkpoints(n: u64) -> Vec<u64> {
    let mut c: Vec<u64> = CHECKPOINTS.into_iter().filter(|&c| c < n).collect();
    c.push(n);
    c
}

/// Fills a fresh scratch cluster to `opts.orders`, measuring at each checkpoint.
pub async fn run(opts: &FillOptions) -> anyhow::Result<FillReport> {
    anyhow::ensure!(opts.orders > 0, "--fill must be at least 1");
    let in_flight = opts.in_flight.max(1);
    // A fresh token per run (the config takes 16 or more characters).
    let token = format!("bench-fill-{:016x}", rand::random::<u64>());
    let mut scratch = Scratch::start(&ScratchOptions {
        token: Some(token.clone()),
        ..ScratchOptions::default()
    })
    .await?;
    let shared = Arc::new(Shared {
        client: ServiceClient::new(Duration::from_secs(60), Some(&token)),
        names: crate::verify::initial_stocks().into_keys().collect(),
        counts: Counts::default(),
    });
    let counts = &shared.counts;
    let mut report = FillReport {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        memory_kib: super::memory::machine_kib(),
        target: opts.orders,
        batch: MAX_TRADE_BATCH,
        in_flight,
        ..FillReport::default()
    };
    let mut filled = 0u64;
    for target in checkpoints(opts.orders) {
        let leader = find_leader(&scratch.cluster).await?;
        let follower = scratch
            .cluster
            .services()
            .into_iter()
            .find(|s| matches!(s, Service::Order(_)) && *s != leader)
            .context("the cluster has no follower")?;
        report.leader = leader.to_string();
        report.follower = follower.to_string();
        let started = Instant::now();
        fill(
            &shared,
            &scratch.cluster.url(leader),
            filled..target,
            in_flight,
        )
        .await;
        let took = started.elapsed().as_secs_f64();
        report.fill_s += took;
        #[allow(clippy::cast_precision_loss)]
        let fill_rate = (target - filled) as f64 / took.max(1e-9);
        filled = target;
        let committed = counts.committed.load(Ordering::Relaxed);
        eprintln!(
            "filled to {target} ({committed} committed, {} errors) at {fill_rate:.0} orders/s; measuring",
            counts.errors.load(Ordering::Relaxed)
        );
        let checkpoint = measure(&mut scratch, leader, follower, committed, fill_rate).await?;
        eprintln!(
            "  restart {:.0} ms, empty catch-up {:.0} ms",
            checkpoint.restart.ms, checkpoint.empty_catch_up.ms
        );
        report.checkpoints.push(checkpoint);
    }
    scratch.cluster.stop_all().await?;
    report.committed = counts.committed.load(Ordering::Relaxed);
    report.errors = counts.errors.load(Ordering::Relaxed);
    report.retries = counts.retries.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    {
        report.fill_rate = report.committed as f64 / report.fill_s.max(1e-9);
    }
    report.goals = super::goals::fill_verdicts(&report.checkpoints);
    Ok(report)
}

/// The figures of one checkpoint, the fill paused.
async fn measure(
    scratch: &mut Scratch,
    leader: Service,
    follower: Service,
    orders: u64,
    fill_rate: f64,
) -> anyhow::Result<Checkpoint> {
    let cluster = &mut scratch.cluster;
    let highest = cluster
        .health(leader)
        .await
        .and_then(|h| h.highest)
        .context("the leader does not answer /health")?;
    // Every replica holds the whole log before anything is measured.
    for s in cluster.services() {
        if matches!(s, Service::Order(_)) {
            wait_caught_up(cluster, s, highest).await?;
        }
    }
    let rss = cluster
        .services()
        .into_iter()
        .map(|s| ServiceRss {
            service: s.to_string(),
            rss_kib: cluster.pid(s).map_or(0, super::memory::rss_kib),
        })
        .collect();
    let mut dumps = Vec::new();
    for s in cluster.services() {
        match s {
            Service::Order(id) => {
                let id = id.to_string();
                dumps.push(dump(cluster, "order", &["dump", "--id", &id]).await?);
            }
            Service::Catalog => dumps.push(dump(cluster, "catalog", &["dump"]).await?),
            Service::Frontend(_) => {}
        }
    }

    let started = Instant::now();
    cluster.kill(follower)?;
    cluster.start(follower)?;
    wait_caught_up(cluster, follower, highest).await?;
    let restart = rejoined(cluster, follower, started);

    let db = cluster
        .config
        .order(match follower {
            Service::Order(id) => id,
            _ => 0,
        })
        .map(|o| o.db_path.clone())
        .context("the follower has no db_path")?;
    cluster.stop(follower).await?;
    let aside = db.with_extension("aside");
    std::fs::rename(&db, &aside).with_context(|| format!("cannot move {} aside", db.display()))?;
    let started = Instant::now();
    cluster.start(follower)?;
    wait_caught_up(cluster, follower, highest).await?;
    let empty_catch_up = rejoined(cluster, follower, started);
    std::fs::remove_dir_all(&aside)
        .with_context(|| format!("cannot remove {}", aside.display()))?;

    Ok(Checkpoint {
        orders,
        highest,
        fill_rate,
        rss,
        dumps,
        restart,
        empty_catch_up,
    })
}

fn rejoined(cluster: &Cluster, s: Service, started: Instant) -> Rejoin {
    Rejoin {
        service: s.to_string(),
        ms: started.elapsed().as_secs_f64() * 1000.0,
        rss_kib: cluster.pid(s).map_or(0, super::memory::rss_kib),
    }
}

/// Polls `s`'s `/health` until it holds order `highest`.
async fn wait_caught_up(cluster: &mut Cluster, s: Service, highest: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        if let Some(h) = cluster.health(s).await
            && s.answers_as(&h)
            && h.highest.unwrap_or(0) >= highest
        {
            return Ok(());
        }
        if !cluster.is_running(s) {
            bail!(
                "{s} exited while catching up; see {}",
                cluster.log_path(s).display()
            );
        }
        if Instant::now() > deadline {
            bail!("{s} did not reach order {highest} within {CATCH_UP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `bin args --config <the cluster's>` to the end, counting its lines.
async fn dump(cluster: &Cluster, bin: &str, args: &[&str]) -> anyhow::Result<Dump> {
    let command = format!("{bin} {}", args.join(" "));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(cluster.bin(bin))
        .args(args)
        .arg("--config")
        .arg(&cluster.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {command}"))?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        lines += u64::try_from(buf[..n].iter().filter(|&&b| b == b'\n').count()).unwrap_or(0);
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("{command} exited with {status}");
    }
    Ok(Dump {
        command,
        ms: started.elapsed().as_secs_f64() * 1000.0,
        lines,
    })
}
