//! `bazaar bench`: throughput and latency of every request path, measured
//! in the same run as two baselines (a bare axum server answering the same
//! JSON from memory, in this process and in a child process: the limit of
//! this machine now), the floor of a trade (a flush of its size on the same
//! disk, a loopback round trip), the CPU each service spends per trade and
//! its memory; then a verdict against each performance goal.
//!
//! This file runs the phases and holds the report; `load` is the
//! closed-loop load generator, `baseline` the bare server, `memory` the RSS
//! sampling, `cpu` the CPU accounting, `goals` the floor and the verdicts;
//! `fill` is `bazaar bench --fill N` (memory, restart, catch-up and dump
//! times as the log grows).

mod baseline;
mod cpu;
pub mod fill;
mod goals;
mod load;
mod memory;

pub use baseline::serve_child as serve_baseline;
pub use cpu::ServiceCpu;
pub use goals::{Floor, Goal};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cluster::{ScratchOptions, Service};
use crate::scratch::Scratch;

use load::{Workload, alternate, measure};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub duration: Duration,
    pub connections: usize,
    /// Front-ends of the cluster; the connections of a phase go to them
    /// round robin (a one-connection phase uses front-end 1).
    pub frontends: u32,
}

/// Figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub connections: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Throughput / the baseline's throughput at the same connections.
    pub rps_ratio: f64,
    /// p50 / the baseline's p50 at the same connections.
    pub p50_ratio: f64,
}

/// Resident memory of a service over the trade phases, sampled every
/// [`RSS_SAMPLE_EVERY`]: a bounded cache that fills shows as growth in the
/// first half and none in the second; a leak grows in both.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub service: String,
    pub start_kib: u64,
    /// At the middle of the trade phases.
    pub mid_kib: u64,
    pub peak_kib: u64,
    pub end_kib: u64,
    /// End over start.
    pub growth_pct: f64,
    /// End over the middle.
    pub second_half_growth_pct: f64,
    /// The 64-connection trade phase alone (steady load, the log growing
    /// throughout): at its middle, and its end over its middle. Across both
    /// trade phases the load steps up in the middle, and the memory a
    /// higher load holds shows as growth there.
    pub steady_mid_kib: u64,
    pub steady_growth_pct: f64,
    /// The median of the 64-connection phase's second half over that of
    /// its first: growth with the log, unmoved by where one sample falls
    /// in the rise and fall of a segment's life (the goal's figure).
    pub steady_trend_pct: f64,
    /// The phase's highest sample over its median: how far the memory
    /// rises for a moment (at a segment's close) without growing.
    pub steady_peak_over_median_pct: f64,
}

/// How often the trade phases sample each service's RSS.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub nproc: usize,
    pub memory_kib: u64,
    pub duration_s: f64,
    /// Front-ends the cluster phases spread their connections over.
    pub frontends: u32,
    pub phases: Vec<Phase>,
    pub rss: Vec<Rss>,
    /// CPU and context switches of each service over the multi-connection
    /// trade phase, per durable trade.
    pub trade_cpu: Vec<ServiceCpu>,
    /// The same over the one-connection trade phase: what a single trade
    /// costs each service, and how many times its threads sleep and wake.
    pub single_trade_cpu: Vec<ServiceCpu>,
    /// The floor of one trade, measured in this run.
    pub floor: Floor,
    /// One verdict per performance goal (docs/PERFORMANCE.md).
    pub goals: Vec<Goal>,
}

fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("{url} is not an ip:port URL"))
}

/// Runs every phase and returns the figures.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let d = opts.duration;
    let c = opts.connections.max(1);
    let names: Vec<String> = crate::verify::initial_stocks().into_keys().collect();
    // Five names: they all fit the shipped cache of 5.
    let hot: Vec<String> = names
        .iter()
        .take(5)
        .map(|n| format!("/stocks/{n}"))
        .collect();
    let hot = Arc::new(hot);
    let mut phases = Vec::new();

    let base = [baseline::server().await?];
    phases.push(measure("baseline", &base, Workload::Get(hot.clone()), 1, d).await);
    phases.push(measure("baseline", &base, Workload::Get(hot.clone()), c, d).await);
    // The child runs until the cached lookups have been measured in turns
    // with it.
    let (child_process, child) = baseline::child().await?;
    let child = [child];
    let name = goals::CHILD_BASELINE;
    phases.push(measure(name, &child, Workload::Get(hot.clone()), 1, d).await);
    phases.push(measure(name, &child, Workload::Get(hot.clone()), c, d).await);

    let mut scratch = Scratch::start(&ScratchOptions {
        cache_size: 5,
        health_check_interval_ms: 500,
        frontends: opts.frontends,
        ..ScratchOptions::default()
    })
    .await?;
    let frontend: Vec<SocketAddr> = scratch
        .frontend_urls()
        .iter()
        .map(|u| addr_of(u))
        .collect::<anyhow::Result<_>>()?;
    let frontend = frontend.as_slice();
    // Warm every front-end's cache.
    measure(
        "warm-up",
        frontend,
        Workload::Get(hot.clone()),
        frontend.len(),
        Duration::from_millis(200),
    )
    .await;
    phases.push(measure("cached lookup", frontend, Workload::Get(hot.clone()), 1, d).await);
    phases.push(measure("cached lookup", frontend, Workload::Get(hot.clone()), c, d).await);
    phases.extend(
        alternate(
            (goals::CHILD_BASELINE_TURNS, &child),
            (goals::CACHED_TURNS, frontend),
            Workload::Get(hot.clone()),
            c,
            d,
        )
        .await,
    );
    drop(child_process);

    let pids: Vec<(String, u32)> = scratch
        .cluster
        .services()
        .into_iter()
        .filter_map(|s| scratch.cluster.pid(s).map(|p| (s.to_string(), p)))
        .collect();
    let trade_names = Arc::new(names.clone());
    // Warm the trade path (connection pools, sled caches) before taking the
    // starting RSS, so growth means a leak, not start-up.
    measure(
        "trade warm-up",
        frontend,
        Workload::Trades(trade_names.clone()),
        c,
        d.min(Duration::from_secs(2)),
    )
    .await;
    let (stop_sampling, stop) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(memory::sample_rss(
        pids.iter().map(|(_, p)| *p).collect(),
        stop,
    ));
    let timings_before = goals::cluster_timings(&scratch).await;
    let single_before = cpu::mark(&pids);
    let single = measure(
        "trade",
        frontend,
        Workload::Trades(trade_names.clone()),
        1,
        d,
    )
    .await;
    let single_trade_cpu = cpu::since(&pids, &single_before, single.requests - single.errors);
    phases.push(single);
    let timings = goals::cluster_timings(&scratch)
        .await
        .since(&timings_before);
    let cpu_before = cpu::mark(&pids);
    let (stop_steady, steady) = tokio::sync::oneshot::channel();
    let steady = tokio::spawn(memory::sample_rss(
        pids.iter().map(|(_, p)| *p).collect(),
        steady,
    ));
    let trades = measure("trade", frontend, Workload::Trades(trade_names), c, d).await;
    let trade_cpu = cpu::since(&pids, &cpu_before, trades.requests - trades.errors);
    phases.push(trades);
    let _ = stop_sampling.send(());
    let _ = stop_steady.send(());
    let rss = memory::summarize(&pids, &sampler.await?, &steady.await?);

    let highest = scratch
        .cluster
        .health(Service::Order(3))
        .await
        .and_then(|h| h.highest)
        .unwrap_or(0);
    let queries: Vec<String> = (0..=highest.min(10_000))
        .map(|n| format!("/orders/{}", highest - n))
        .collect();
    let queries = Arc::new(queries);
    phases.push(
        measure(
            "order query",
            frontend,
            Workload::Get(queries.clone()),
            1,
            d,
        )
        .await,
    );
    phases.push(measure("order query", frontend, Workload::Get(queries), c, d).await);

    // The same cluster with the cache off: every lookup reaches the catalog.
    for f in scratch.cluster.frontends() {
        scratch.cluster.stop(f).await?;
        scratch
            .cluster
            .set_env(f, "BAZAAR_FRONTEND__CACHE_SIZE", Some("0"));
        scratch.cluster.start_and_wait(f).await?;
    }
    phases.push(
        measure(
            "uncached lookup",
            frontend,
            Workload::Get(hot.clone()),
            1,
            d,
        )
        .await,
    );
    phases.push(measure("uncached lookup", frontend, Workload::Get(hot), c, d).await);
    scratch.cluster.stop_all().await?;
    let floor = goals::floor(scratch.dir.path(), timings, &phases).await?;

    let at_baseline: HashMap<usize, (f64, f64)> = phases
        .iter()
        .filter(|p| p.name == goals::BASELINE)
        .map(|p| (p.connections, (p.rps, p.p50_us)))
        .collect();
    for p in &mut phases {
        if let Some(&(rps, p50)) = at_baseline.get(&p.connections) {
            p.rps_ratio = p.rps / rps.max(1e-9);
            p.p50_ratio = p.p50_us / p50.max(1e-9);
        }
    }
    let goals = goals::verdicts(&phases, &trade_cpu, &rss, &floor);
    Ok(BenchReport {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        memory_kib: memory::machine_kib(),
        duration_s: d.as_secs_f64(),
        frontends: opts.frontends,
        phases,
        rss,
        trade_cpu,
        single_trade_cpu,
        floor,
        goals,
    })
}
