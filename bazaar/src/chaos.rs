//! `bazaar chaos`: a fresh cluster with one front-end or more, concurrent
//! clients with idempotent retries spread over the front-ends
//! ([`sessions`]), and a seeded random schedule of faults, each healed
//! after a random pause (see [`faults`] for the kinds): process faults
//! (`kill -9` of any service, SIGSTOP) and, unless `gray` is off, gray
//! faults (link cuts through fault proxies, full disks on small tmpfs
//! mounts where the run may mount them). A checker session judges every
//! lookup of the stock it trades alone, through every front-end
//! ([`checker`]). At the end everything is healed, the replicas converge,
//! every database is dumped and the system's guarantees are checked (see
//! [`crate::verify`]).

pub mod checker;
pub mod disks;
pub mod faults;
pub mod links;
pub mod sessions;

pub use sessions::FrontendCounts;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::RunConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{Cluster, ScratchOptions, Service, write_scratch_config};
use crate::scratch::Scratch;
use crate::verify::{self, Verdict};
use checker::{CHECKER_STOCK, Frontend};
pub use disks::disk_bytes;
use disks::{Disks, skip_note};
use faults::{Fault, Rig, Targets};
use links::Links;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    /// Mean pause between two faults.
    pub fault_every: Duration,
    /// Also gray faults: link cuts, and full disks where the run can mount
    /// a tmpfs (root).
    pub gray: bool,
    /// Front-ends of the cluster (1 and up): the client sessions go to
    /// them round robin, a front-end fault hits any of them, and the
    /// checker looks its stock up through each.
    pub frontends: u32,
}

/// One injected fault, for the report and the history file.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_s: f64,
    pub kind: &'static str,
    pub targets: Vec<String>,
    pub healed_at_s: f64,
    /// What the services a gray fault hit said while it lasted
    /// (`order-2 storage full`, `order-3 not ready`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

/// The failover measured around the faults of one kind that hit the leader.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub faults: u64,
    /// Longest trade latency around each such fault: median and maximum.
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// The small disks of a run with disk faults.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Size of each tmpfs.
    pub size_bytes: u64,
    /// What each database took at the end (after compaction by nobody: the
    /// run's whole growth), the filler not counted.
    pub used_bytes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: f64,
    pub passed: bool,
    /// Front-ends of the cluster.
    pub frontends: u32,
    /// Whether gray faults were on.
    pub gray: bool,
    /// The kinds the schedule drew from.
    pub fault_kinds: Vec<&'static str>,
    /// Kinds left out, and why (disk faults where no tmpfs can be mounted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_fault_kinds: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<String>,
    pub faults_injected: u64,
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    /// Gray faults, per kind, during which a service they hit was seen not
    /// ready, without storage or not answering (the rest did not bite
    /// before they were healed). Each fault's states are in history.json.
    pub gray_faults_seen_biting: BTreeMap<&'static str, u64>,
    pub trades_acknowledged: u64,
    pub trades_unknown_outcome: u64,
    pub failed_requests: u64,
    /// Lookups of the checker's stock judged (stale or unexplained).
    pub lookups_checked_for_staleness: u64,
    /// Per front-end (by service name): the sessions and lookups that went
    /// through it, and the checker's lookups judged there.
    pub by_frontend: BTreeMap<String, FrontendCounts>,
    /// Faults of the leader whose failover was measured.
    pub leader_faults: u64,
    /// Longest trade latency around each fault of the leader.
    pub failover_p50_ms: f64,
    pub failover_p99_ms: f64,
    /// The same, per kind of fault of the leader.
    pub failover_by_kind: BTreeMap<&'static str, Failover>,
    pub orders_in_log: u64,
    /// Restarts by the supervisor, per service: a service whose storage
    /// failed exits to be restarted once it works again.
    pub supervisor_restarts: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<DiskReport>,
    pub violations: verify::Violations,
    pub examples: Vec<String>,
    /// Data, logs and history kept for inspection (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
}

/// Sets up the cluster of a run: small disks and proxies when gray faults
/// are on, supervision (a service whose storage failed exits to be
/// restarted), then starts every service.
async fn rig(opts: &ChaosOptions) -> anyhow::Result<(Rig, Option<String>)> {
    let mut skipped = None;
    let mut scratch_opts = ScratchOptions {
        frontends: opts.frontends,
        ..ScratchOptions::default()
    };
    let disks = if opts.gray {
        let mut on = vec![Service::Catalog];
        on.extend((1..=scratch_opts.replicas).map(Service::Order));
        match Disks::mount(&on, disk_bytes(opts.duration)) {
            Ok(d) => Some(Arc::new(d)),
            Err(why) => {
                eprintln!("{}", skip_note(&why));
                skipped = Some(why);
                None
            }
        }
    } else {
        None
    };
    scratch_opts.db_paths = disks.as_ref().map(|d| d.db_paths()).unwrap_or_default();
    let dir = tempfile::Builder::new().prefix("bazaar-").tempdir()?;
    let config = write_scratch_config(dir.path(), &scratch_opts)?;
    let mut cluster = Cluster::new(&config, &dir.path().join("logs"))?;
    let links = if opts.gray {
        Some(Links::install(&mut cluster).await?)
    } else {
        None
    };
    cluster.supervise(true)?;
    let mut rig = Rig {
        scratch: Scratch { cluster, dir },
        links,
        disks,
    };
    rig.scratch.cluster.start_all().await?;
    Ok((rig, skipped))
}

fn failover_stats(mut latencies: Vec<f64>) -> Failover {
    latencies.sort_by(f64::total_cmp);
    Failover {
        faults: latencies.len() as u64,
        p50_ms: crate::eval::nearest_rank(&latencies, 50),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
}

/// Runs one chaos experiment. Interrupted (SIGINT, SIGTERM), it stops the
/// cluster and unmounts its disks before it returns the error.
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        report = run_to_end(opts) => report,
        _ = interrupt.recv() => anyhow::bail!("interrupted; the cluster is stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated; the cluster is stopped"),
    }
}

async fn run_to_end(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let (mut rig, skipped_because) = rig(opts).await?;
    let mut kinds: Vec<Fault> = Fault::PROCESS.to_vec();
    let mut skipped: Vec<Fault> = Vec::new();
    if opts.gray {
        kinds.extend(Fault::LINKS);
        if opts.frontends > 1 {
            kinds.extend(Fault::FRONTEND_LINKS);
        }
        if rig.disks.is_some() {
            kinds.extend(Fault::DISKS);
        } else {
            skipped.extend(Fault::DISKS);
        }
    }
    let cluster_config = &rig.scratch.cluster.config;
    let frontends: Vec<Frontend> = cluster_config
        .frontends()
        .iter()
        .map(|f| Frontend {
            name: Service::Frontend(f.id).to_string(),
            base: f.url(),
        })
        .collect();
    let targets = Targets {
        replicas: cluster_config.orders.iter().map(|o| o.id).collect(),
        frontends: cluster_config.frontends().iter().map(|f| f.id).collect(),
    };
    let started = Instant::now();

    let mut config = RunConfig::new(rig.scratch.frontend_url());
    config.n_request = u64::MAX;
    config.duration = Some(opts.duration);
    config.prob = 0.7;
    config.clients = opts.clients;
    config.seed = opts.seed;
    config.stocks.retain(|s| s != CHECKER_STOCK);
    config.retry_for = Duration::from_secs(30);
    let load = {
        let frontends = frontends.clone();
        tokio::spawn(async move { sessions::run(&config, &frontends).await })
    };
    let initial = verify::initial_stocks()
        .get(CHECKER_STOCK)
        .copied()
        .unwrap_or(0);
    let checker = {
        let frontends = frontends.clone();
        let until = started + opts.duration;
        tokio::spawn(async move { checker::run(&frontends, started, until, initial).await })
    };

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut leader_faults: Vec<(&'static str, f64)> = Vec::new();
    let mut unhealed: Vec<String> = Vec::new();
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    // Leave time at the end for the clients to finish under a healed cluster.
    let stop_faults_at = opts.duration.saturating_sub(Duration::from_secs(3));
    loop {
        let mean = opts.fault_every.as_secs_f64().max(0.1);
        let pause = Duration::from_secs_f64(rng.random_range(0.5 * mean..1.5 * mean));
        if started.elapsed() + pause >= stop_faults_at {
            break;
        }
        tokio::time::sleep(pause).await;
        if let Some(d) = &rig.disks {
            let d = Arc::clone(d);
            tokio::task::spawn_blocking(move || d.keep_headroom()).await??;
        }
        let fault = kinds[rng.random_range(0..kinds.len())];
        let down = fault.draw_pause(&mut rng);
        let leader = faults::current_leader(&rig.scratch, &targets.replicas).await;
        let Some(action) = faults::aim(fault, leader, &targets, &mut rng) else {
            continue;
        };
        let at = Instant::now();
        if fault.hits_leader() && leader.is_some() {
            leader_faults.push((fault.name(), since(at) * 1000.0));
        }
        faults::inject(&mut rig, &action).await?;
        let seen = faults::watch(&rig, &action, down).await;
        for u in faults::heal(&mut rig, &action).await? {
            unhealed.push(format!("{} at {:.1} s: {u}", fault.name(), since(at)));
        }
        let event = FaultEvent {
            at_s: since(at),
            kind: fault.name(),
            targets: action.targets(),
            healed_at_s: since(Instant::now()),
            seen,
        };
        tracing::info!(?event, "fault injected and healed");
        events.push(event);
    }

    let report = load.await??;
    let checker = checker.await?;

    // Heal everything still down (nothing should be), then converge.
    let cluster = &mut rig.scratch.cluster;
    for s in cluster.services() {
        if !cluster.is_running(s) {
            cluster.start_and_wait(s).await?;
        }
    }
    verify::wait_converged(cluster, Duration::from_secs(60)).await?;
    let mut acked = report.trades;
    acked.extend(checker.acked.iter().cloned());
    let mut unknown = report.unknown;
    unknown.extend(checker.unknown.iter().cloned());
    let Verdict {
        orders_in_log,
        mut violations,
        mut examples,
        ..
    } = verify::check(cluster, &acked, &unknown)?;
    violations.stale_lookups = checker.stale;
    violations.unexplained_lookups = checker.unexplained;
    violations.unhealed_faults = unhealed.len() as u64;
    examples.extend(checker.examples.iter().cloned());
    examples.extend(unhealed);

    let all_times: Vec<f64> = leader_faults.iter().map(|&(_, t)| t).collect();
    let mut failover = crate::eval::failover_latencies(&report.timeline, &all_times);
    let mut by_kind: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (&(kind, _), &latency) in leader_faults.iter().zip(&failover) {
        by_kind.entry(kind).or_default().push(latency);
    }
    failover.sort_by(f64::total_cmp);
    let mut faults_by_kind = BTreeMap::new();
    let mut biting = BTreeMap::new();
    for e in &events {
        *faults_by_kind.entry(e.kind).or_insert(0) += 1;
        if !e.seen.is_empty() {
            *biting.entry(e.kind).or_insert(0) += 1;
        }
    }
    let passed = violations.total() == 0;
    let mut out = ChaosReport {
        seed: opts.seed,
        duration_s: opts.duration.as_secs_f64(),
        passed,
        frontends: opts.frontends,
        gray: opts.gray,
        fault_kinds: kinds.iter().map(|f| f.name()).collect(),
        skipped_fault_kinds: skipped.iter().map(|f| f.name()).collect(),
        skipped_because,
        faults_injected: events.len() as u64,
        faults_by_kind,
        gray_faults_seen_biting: biting,
        trades_acknowledged: acked.len() as u64,
        trades_unknown_outcome: unknown.len() as u64,
        failed_requests: report.failed_requests,
        lookups_checked_for_staleness: checker.checked,
        by_frontend: sessions::by_frontend(&frontends, &report.by_frontend, &checker),
        leader_faults: failover.len() as u64,
        failover_p50_ms: crate::eval::nearest_rank(&failover, 50),
        failover_p99_ms: crate::eval::nearest_rank(&failover, 99),
        failover_by_kind: by_kind
            .into_iter()
            .map(|(k, v)| (k, failover_stats(v)))
            .collect(),
        orders_in_log,
        supervisor_restarts: cluster
            .services()
            .into_iter()
            .map(|s| (s.to_string(), cluster.supervised(s).restarts))
            .filter(|&(_, n)| n > 0)
            .collect(),
        disks: rig.disks.as_ref().map(|d| DiskReport {
            size_bytes: d.bytes(),
            used_bytes: d
                .used()
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect(),
        }),
        violations,
        examples,
        kept: None,
    };
    // The operation history, beside the data, in case it is kept.
    let history = serde_json::json!({
        "faults": events,
        "links": rig.links.as_ref().map(Links::accepted),
        "acknowledged": acked,
        "unknown_outcome": unknown,
        "report": &out,
    });
    std::fs::write(
        rig.scratch.dir.path().join("history.json"),
        serde_json::to_vec_pretty(&history)?,
    )?;
    let Rig {
        mut scratch,
        links,
        disks,
    } = rig;
    if passed {
        scratch.cluster.stop_all().await?;
    } else {
        let kept = scratch.keep().await;
        // The databases on the small disks go with the rest before the
        // disks are unmounted.
        if let Some(d) = &disks
            && let Err(e) = d.copy_into(&kept.join("db-from-small-disks"))
        {
            eprintln!("bazaar chaos: cannot keep the databases of the small disks: {e}");
        }
        out.kept = Some(kept);
    }
    drop(links);
    drop(disks);
    Ok(out)
}
