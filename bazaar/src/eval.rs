//! `bazaar eval`: the latency evaluation (trade probability × cache on/off,
//! each on a fresh cluster), the cache-contents trace, and the failover
//! mode that kills replicas while clients run. Writes `eval.csv` here and
//! the SVG plots through `plot`.

mod plot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use client::{Report, RunConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{ScratchOptions, Service};
use crate::scratch::Scratch;
use crate::verify;

/// Options of a latency evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub probs: Vec<f64>,
    pub n_request: u64,
    pub clients: usize,
    pub seed: u64,
    pub cache_size: usize,
    pub out: PathBuf,
}

/// One cell of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    pub cache: bool,
    pub prob: f64,
    pub report: Report,
}

/// Runs the grid, writes `eval.csv`, `latency.svg` and `cache.svg` under
/// `opts.out`, and returns the rows.
pub async fn run(opts: &EvalOptions) -> anyhow::Result<Vec<EvalRow>> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut rows = Vec::new();
    for cache in [true, false] {
        for &prob in &opts.probs {
            let scratch = Scratch::start(&ScratchOptions {
                cache_size: if cache { opts.cache_size } else { 0 },
                ..ScratchOptions::default()
            })
            .await?;
            let mut config = RunConfig::new(scratch.frontend_url());
            config.n_request = opts.n_request;
            config.prob = prob;
            config.clients = opts.clients;
            config.seed = opts.seed;
            let report = client::run(config).await?;
            eprintln!(
                "cache {:<3} p={prob:.1}: lookup p50 {:.3} ms p99 {:.3} ms | trade p50 {:.3} ms p99 {:.3} ms | query p50 {:.3} ms | errors {} | verified {}",
                if cache { "on" } else { "off" },
                report.lookup.p50_ms,
                report.lookup.p99_ms,
                report.trade.p50_ms,
                report.trade.p99_ms,
                report.query.p50_ms,
                report.lookup.errors + report.trade.errors + report.query.errors,
                report.verified
            );
            let mut scratch = scratch;
            scratch.cluster.stop_all().await?;
            rows.push(EvalRow {
                cache,
                prob,
                report,
            });
        }
    }
    write_csv(&opts.out.join("eval.csv"), &rows)?;
    plot::latency(&opts.out.join("latency.svg"), &rows)?;
    let trace = cache_trace(opts).await?;
    plot::cache(&opts.out.join("cache.svg"), &trace, opts.cache_size)?;
    Ok(rows)
}

fn write_csv(path: &Path, rows: &[EvalRow]) -> anyhow::Result<()> {
    let mut out = String::from("cache,prob,request,count,errors,mean_ms,p50_ms,p99_ms\n");
    for row in rows {
        for (name, s) in [
            ("lookup", &row.report.lookup),
            ("trade", &row.report.trade),
            ("query", &row.report.query),
        ] {
            out.push_str(&format!(
                "{},{},{name},{},{},{:.3},{:.3},{:.3}\n",
                if row.cache { "on" } else { "off" },
                row.prob,
                s.count,
                s.errors,
                s.mean_ms,
                s.p50_ms,
                s.p99_ms
            ));
        }
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The cache after each request of a sequential walk.
pub struct CacheTrace {
    /// Per request: the stock asked for, whether it was a trade, and the
    /// cache contents after it (most recently used first).
    pub steps: Vec<(String, bool, Vec<String>)>,
    pub stocks: Vec<String>,
}

/// Requests in the cache trace.
const TRACE_STEPS: usize = 120;

/// One request at a time, reading `/status` after each: which stocks the
/// cache holds (LRU order), what each lookup evicts, and how a trade drops
/// its stock. Stocks are drawn with a skew (a few hot ones), the way real
/// traffic looks, so the hot ones stay cached and the cold ones come and go.
async fn cache_trace(opts: &EvalOptions) -> anyhow::Result<CacheTrace> {
    let mut scratch = Scratch::start(&ScratchOptions {
        cache_size: opts.cache_size,
        ..ScratchOptions::default()
    })
    .await?;
    let base = scratch.frontend_url();
    let stocks = client::default_stocks();
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut steps = Vec::with_capacity(TRACE_STEPS);
    for i in 0..TRACE_STEPS {
        // The smaller of two uniform draws: low indices are hot.
        let index = rng
            .random_range(0..stocks.len())
            .min(rng.random_range(0..stocks.len()));
        let name = &stocks[index];
        let trade = rng.random_bool(0.2);
        if trade {
            let body = serde_json::json!({"name": name, "quantity": 1, "type": if i % 2 == 0 { "sell" } else { "buy" }});
            http.post(format!("{base}/orders"))
                .json(&body)
                .send()
                .await?;
        } else {
            http.get(format!("{base}/stocks/{name}")).send().await?;
        }
        let status: common::types::ClusterStatus = http
            .get(format!("{base}/status"))
            .send()
            .await?
            .json()
            .await?;
        steps.push((name.clone(), trade, status.cache.entries));
    }
    scratch.cluster.stop_all().await?;
    Ok(CacheTrace { steps, stocks })
}

/// Options of the failover mode.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub duration: Duration,
    pub kill_every: Duration,
    pub down_for: Duration,
    pub clients: usize,
    pub prob: f64,
    pub seed: u64,
}

/// What the failover mode reports.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub kills: u64,
    pub leader_kills: u64,
    pub trades_acknowledged: u64,
    /// Requests that failed as the clients saw them (after their retries).
    pub failed_requests: u64,
    /// Per leader kill: the longest trade latency among trades started
    /// from 100 ms before the kill to 1 s after it.
    pub failover_ms: Vec<f64>,
    pub failover_p50_ms: f64,
    pub failover_max_ms: f64,
    pub trade_p50_ms: f64,
    pub trade_p99_ms: f64,
    pub replicas_identical: bool,
    pub verdict: verify::Verdict,
}

/// Kills a random replica (the leader included) every `kill_every` while
/// clients run, restarts it after `down_for`, then heals and checks.
pub async fn failover(opts: &FailoverOptions) -> anyhow::Result<FailoverReport> {
    let mut scratch = Scratch::start(&ScratchOptions::default()).await?;
    let base = scratch.frontend_url();
    let mut config = RunConfig::new(base.clone());
    config.n_request = u64::MAX;
    config.duration = Some(opts.duration);
    config.prob = opts.prob;
    config.clients = opts.clients;
    config.seed = opts.seed;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    let load = tokio::spawn(client::run(config));
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let ids: Vec<u32> = scratch.cluster.config.orders.iter().map(|o| o.id).collect();
    let mut kills = 0u64;
    let mut leader_kill_times = Vec::new();
    while started.elapsed() + opts.kill_every + opts.down_for < opts.duration {
        tokio::time::sleep(opts.kill_every).await;
        let id = ids[rng.random_range(0..ids.len())];
        let leader = http
            .get(format!("{base}/status"))
            .send()
            .await
            .ok()
            .map(|r| r.json::<common::types::ClusterStatus>());
        let leader = match leader {
            Some(f) => f.await.ok().and_then(|s| s.leader.map(|l| l.id)),
            None => None,
        };
        let at = started.elapsed();
        scratch.cluster.kill(Service::Order(id))?;
        kills += 1;
        if leader == Some(id) {
            leader_kill_times.push(at.as_secs_f64() * 1000.0);
        }
        eprintln!(
            "{:>6.1}s kill -9 order-{id}{}",
            at.as_secs_f64(),
            if leader == Some(id) { " (leader)" } else { "" }
        );
        tokio::time::sleep(opts.down_for).await;
        scratch.cluster.start_and_wait(Service::Order(id)).await?;
        eprintln!(
            "{:>6.1}s order-{id} is back",
            started.elapsed().as_secs_f64()
        );
    }
    let report = load.await??;
    verify::wait_converged(&scratch.cluster, Duration::from_secs(30)).await?;
    let verdict = verify::check(&scratch.cluster, &report.trades, &report.unknown)?;

    let by_kill = failover_latencies(&report.timeline, &leader_kill_times);
    let mut failover_ms = by_kill.clone();
    failover_ms.sort_by(f64::total_cmp);
    let out = FailoverReport {
        kills,
        leader_kills: leader_kill_times.len() as u64,
        trades_acknowledged: report.trades_acknowledged,
        failed_requests: report.lookup.errors + report.trade.errors + report.query.errors,
        failover_p50_ms: nearest_rank(&failover_ms, 50),
        failover_max_ms: nearest_rank(&failover_ms, 100),
        failover_ms: by_kill,
        trade_p50_ms: report.trade.p50_ms,
        trade_p99_ms: report.trade.p99_ms,
        replicas_identical: verdict.replicas_identical,
        verdict,
    };
    if out.verdict.violations.total() > 0 || out.failed_requests > 0 {
        let dir = scratch.keep().await;
        eprintln!("data and logs kept in {}", dir.display());
    } else {
        scratch.cluster.stop_all().await?;
    }
    Ok(out)
}

/// For each fault of the leader (ms since the run began): the longest
/// latency of a trade started from 100 ms before it to 1 s after it, i.e.
/// how long the failover held a client up.
pub fn failover_latencies(timeline: &[client::TradeSample], faults_ms: &[f64]) -> Vec<f64> {
    faults_ms
        .iter()
        .map(|&at| {
            timeline
                .iter()
                .filter(|s| s.start_ms >= at - 100.0 && s.start_ms <= at + 1000.0)
                .map(|s| s.latency_ms)
                .fold(0.0, f64::max)
        })
        .collect()
}

/// Nearest-rank quantile of sorted figures, `percent` in 0..=100; 0 when empty.
pub fn nearest_rank(sorted: &[f64], percent: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() - 1) * percent.min(100) / 100]
}
