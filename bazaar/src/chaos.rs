//! `bazaar chaos`: a fresh cluster, concurrent clients with idempotent
//! retries, and a seeded random schedule of faults (`kill -9` of the
//! leader, a follower, two replicas, the catalog or the front-end; SIGSTOP
//! of the leader), each healed after a random pause. At the end everything
//! is healed, the replicas converge, every database is dumped and the
//! guarantees of CONTRACT.md §5 are checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::{AckedTrade, RunConfig, UnknownTrade};
use common::types::{Data, Stock, TradeKind, TradeReceipt, TradeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{ScratchOptions, Service};
use crate::eval::Scratch;
use crate::verify::{self, Verdict};

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub duration: Duration,
    pub seed: u64,
    pub clients: usize,
    /// Mean pause between two faults.
    pub fault_every: Duration,
}

/// One injected fault, for the report and the history file.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_s: f64,
    pub kind: &'static str,
    pub targets: Vec<String>,
    pub healed_at_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: f64,
    pub passed: bool,
    pub faults_injected: u64,
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    pub trades_acknowledged: u64,
    pub trades_unknown_outcome: u64,
    pub failed_requests: u64,
    pub lookups_checked_for_staleness: u64,
    /// Faults of the leader whose failover was measured.
    pub leader_faults: u64,
    /// Longest trade latency around each fault of the leader.
    pub failover_p50_ms: f64,
    pub failover_p99_ms: f64,
    pub orders_in_log: u64,
    pub violations: verify::Violations,
    pub examples: Vec<String>,
    /// Data, logs and history kept for inspection (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
}

/// The stock only the staleness checker trades, so it knows the quantity
/// every lookup must show.
const CHECKER_STOCK: &str = "IBM";

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillFollower,
    KillTwoReplicas,
    PauseLeader,
    KillCatalog,
    KillFrontend,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillTwoReplicas,
        Fault::PauseLeader,
        Fault::KillCatalog,
        Fault::KillFrontend,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillTwoReplicas => "kill-two-replicas",
            Fault::PauseLeader => "pause-leader",
            Fault::KillCatalog => "kill-catalog",
            Fault::KillFrontend => "kill-frontend",
        }
    }

    fn hits_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader | Fault::KillTwoReplicas | Fault::PauseLeader
        )
    }
}

/// The replica that says it leads with the highest epoch.
async fn current_leader(scratch: &Scratch, ids: &[u32]) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    for &id in ids {
        if let Some(h) = scratch.cluster.health(Service::Order(id)).await
            && h.role == "leader"
            && best.is_none_or(|(e, _)| h.epoch > e)
        {
            best = Some((h.epoch, id));
        }
    }
    best.map(|(_, id)| id)
}

/// What the staleness checker saw.
struct CheckerResult {
    acked: Vec<AckedTrade>,
    unknown: Vec<UnknownTrade>,
    stale: u64,
    checked: u64,
}

/// Trades `CHECKER_STOCK` alone and looks it up after every acknowledged
/// trade: the lookup must show the post-trade quantity.
async fn staleness_checker(base: String, until: Instant, initial: u64) -> CheckerResult {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a static client configuration");
    let mut out = CheckerResult {
        acked: Vec::new(),
        unknown: Vec::new(),
        stale: 0,
        checked: 0,
    };
    // None once a trade's outcome is unknown: the quantity is then not
    // known for sure, so checking stops.
    let mut expected = Some(initial);
    let run: u64 = rand::random();
    let mut i = 0u64;
    while Instant::now() < until && expected.is_some() {
        let kind = if i.is_multiple_of(2) {
            TradeKind::Sell
        } else {
            TradeKind::Buy
        };
        let key = format!("checker-{run:016x}-{i}");
        i += 1;
        let request = TradeRequest {
            name: CHECKER_STOCK.into(),
            quantity: 1,
            kind,
        };
        // Retry until a final answer, as the client does.
        let deadline = Instant::now() + Duration::from_secs(30);
        let number = loop {
            let sent = http
                .post(format!("{base}/orders"))
                .header("idempotency-key", &key)
                .json(&request)
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status().is_success() {
                    if let Ok(d) = r.json::<Data<TradeReceipt>>().await {
                        break Some(d.data.transaction_number);
                    }
                } else if !r.status().is_server_error() {
                    break None;
                }
            }
            if Instant::now() > deadline {
                out.unknown.push(UnknownTrade {
                    key: key.clone(),
                    name: request.name.clone(),
                    kind,
                    quantity: 1,
                });
                expected = None;
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(number) = number else { continue };
        out.acked.push(AckedTrade {
            key,
            number,
            name: request.name.clone(),
            kind,
            quantity: 1,
        });
        expected = expected.map(|q| match kind {
            TradeKind::Buy => q - 1,
            TradeKind::Sell => q + 1,
        });
        // One lookup after the acknowledgement (a failed one proves nothing).
        if let Ok(r) = http
            .get(format!("{base}/stocks/{CHECKER_STOCK}"))
            .send()
            .await
            && r.status().is_success()
            && let Ok(d) = r.json::<Data<Stock>>().await
        {
            out.checked += 1;
            if Some(d.data.quantity) != expected {
                out.stale += 1;
            }
        }
    }
    out
}

/// Runs one chaos experiment.
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let mut scratch = Scratch::start(&ScratchOptions::default()).await?;
    let base = scratch.frontend_url();
    let ids: Vec<u32> = scratch.cluster.config.orders.iter().map(|o| o.id).collect();
    let started = Instant::now();

    let mut config = RunConfig::new(base.clone());
    config.n_request = u64::MAX;
    config.duration = Some(opts.duration);
    config.prob = 0.7;
    config.clients = opts.clients;
    config.seed = opts.seed;
    config.stocks.retain(|s| s != CHECKER_STOCK);
    config.retry_for = Duration::from_secs(30);
    let load = tokio::spawn(client::run(config));
    let initial = verify::initial_stocks()
        .get(CHECKER_STOCK)
        .copied()
        .unwrap_or(0);
    let checker = tokio::spawn(staleness_checker(
        base.clone(),
        started + opts.duration,
        initial,
    ));

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut leader_fault_times = Vec::new();
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
        let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
        let down = Duration::from_millis(rng.random_range(300..2500));
        let leader = current_leader(&scratch, &ids).await;
        let followers: Vec<u32> = ids.iter().copied().filter(|&i| Some(i) != leader).collect();
        let targets: Vec<Service> = match fault {
            Fault::KillLeader | Fault::PauseLeader => match leader {
                Some(l) => vec![Service::Order(l)],
                None => continue,
            },
            Fault::KillFollower => {
                vec![Service::Order(
                    followers[rng.random_range(0..followers.len())],
                )]
            }
            Fault::KillTwoReplicas => {
                let mut two = ids.clone();
                let keep = rng.random_range(0..two.len());
                two.remove(keep);
                two.into_iter().map(Service::Order).collect()
            }
            Fault::KillCatalog => vec![Service::Catalog],
            Fault::KillFrontend => vec![Service::Frontend],
        };
        let at = Instant::now();
        if fault.hits_leader() && leader.is_some_and(|l| targets.contains(&Service::Order(l))) {
            leader_fault_times.push(since(at) * 1000.0);
        }
        for &s in &targets {
            match fault {
                Fault::PauseLeader => scratch.cluster.pause(s)?,
                _ => scratch.cluster.kill(s)?,
            }
        }
        tokio::time::sleep(down).await;
        for &s in &targets {
            match fault {
                Fault::PauseLeader => scratch.cluster.resume(s)?,
                _ => scratch.cluster.start_and_wait(s).await?,
            }
        }
        let event = FaultEvent {
            at_s: since(at),
            kind: fault.name(),
            targets: targets.iter().map(ToString::to_string).collect(),
            healed_at_s: since(Instant::now()),
        };
        tracing::info!(?event, "fault injected and healed");
        events.push(event);
    }

    let report = load.await??;
    let checker = checker.await?;

    // Heal everything still down (nothing should be), then converge.
    for s in scratch.cluster.services() {
        if !scratch.cluster.is_running(s) {
            scratch.cluster.start_and_wait(s).await?;
        }
    }
    verify::wait_converged(&scratch.cluster, Duration::from_secs(60)).await?;
    let mut acked = report.trades.clone();
    acked.extend(checker.acked.iter().cloned());
    let mut unknown = report.unknown.clone();
    unknown.extend(checker.unknown.iter().cloned());
    let Verdict {
        orders_in_log,
        mut violations,
        examples,
        ..
    } = verify::check(&scratch.cluster, &acked, &unknown)?;
    violations.stale_lookups = checker.stale;

    let mut failover = crate::eval::failover_latencies(&report.timeline, &leader_fault_times);
    failover.sort_by(f64::total_cmp);
    let mut faults_by_kind = BTreeMap::new();
    for e in &events {
        *faults_by_kind.entry(e.kind).or_insert(0) += 1;
    }
    let passed = violations.total() == 0;
    let mut out = ChaosReport {
        seed: opts.seed,
        duration_s: opts.duration.as_secs_f64(),
        passed,
        faults_injected: events.len() as u64,
        faults_by_kind,
        trades_acknowledged: acked.len() as u64,
        trades_unknown_outcome: unknown.len() as u64,
        failed_requests: report.lookup.errors + report.trade.errors + report.query.errors,
        lookups_checked_for_staleness: checker.checked,
        leader_faults: failover.len() as u64,
        failover_p50_ms: crate::eval::nearest_rank(&failover, 50),
        failover_p99_ms: crate::eval::nearest_rank(&failover, 99),
        orders_in_log,
        violations,
        examples,
        kept: None,
    };
    // The operation history, beside the data, in case it is kept.
    let history = serde_json::json!({
        "faults": events,
        "acknowledged": acked,
        "unknown_outcome": unknown,
        "report": &out,
    });
    std::fs::write(
        scratch.dir.path().join("history.json"),
        serde_json::to_vec_pretty(&history)?,
    )?;
    if passed {
        scratch.cluster.stop_all().await?;
    } else {
        out.kept = Some(scratch.keep().await);
    }
    Ok(out)
}
