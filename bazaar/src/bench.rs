//! `bazaar bench`: throughput and latency of every request path, measured
//! in the same run as a baseline (a bare axum server in this process
//! answering the same JSON from memory: the limit of this machine now).
//! The load generator is closed-loop over keep-alive HTTP/1.1 connections
//! (hyper's client connection, no pool), recording into HdrHistograms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use bytes::Bytes;
use common::types::{Data, Stock};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde::Serialize;

use crate::cluster::{ScratchOptions, Service};
use crate::eval::Scratch;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub duration: Duration,
    pub connections: usize,
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
}

/// How often the trade phases sample each service's RSS.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(500);

fn growth_pct(from: u64, to: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    if from == 0 {
        0.0
    } else {
        (to as f64 - from as f64) / from as f64 * 100.0
    }
}

/// Samples the RSS of `pids` until `stop` fires; returns the samples in order.
async fn sample_rss(pids: Vec<u32>, mut stop: tokio::sync::oneshot::Receiver<()>) -> Vec<Vec<u64>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => samples.push(pids.iter().map(|p| rss_kib(*p)).collect()),
            _ = &mut stop => break,
        }
    }
    samples.push(pids.iter().map(|p| rss_kib(*p)).collect());
    samples
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub nproc: usize,
    pub memory_kib: u64,
    pub duration_s: f64,
    pub phases: Vec<Phase>,
    pub rss: Vec<Rss>,
}

/// What each connection sends.
#[derive(Clone)]
enum Workload {
    /// GET one of these paths, round robin.
    Get(Arc<Vec<String>>),
    /// POST /orders alternating sell and buy of 1 share of one stock per
    /// connection, so quantities never run out.
    Trades(Arc<Vec<String>>),
}

struct Outcome {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One closed-loop connection until `until`.
async fn connection(addr: SocketAddr, work: Workload, index: usize, until: Instant) -> Outcome {
    let mut out = Outcome {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"),
        requests: 0,
        errors: 0,
    };
    let mut sender = None;
    let mut i = index;
    while Instant::now() < until {
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let request = match &work {
            Workload::Get(paths) => Request::builder()
                .method(Method::GET)
                .uri(paths[i % paths.len()].as_str())
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new())),
            Workload::Trades(names) => {
                let kind = if (i - index).is_multiple_of(2) {
                    "sell"
                } else {
                    "buy"
                };
                let body = format!(
                    r#"{{"name":"{}","quantity":1,"type":"{kind}"}}"#,
                    names[index % names.len()]
                );
                Request::builder()
                    .method(Method::POST)
                    .uri("/orders")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
            }
        }
        .expect("a static request shape");
        i += 1;
        let started = Instant::now();
        let ok = match s.send_request(request).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => {
                sender = None;
                false
            }
        };
        out.requests += 1;
        if ok {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            out.hist.saturating_record(micros.max(1));
        } else {
            out.errors += 1;
        }
    }
    out
}

/// Runs `connections` closed loops against `addr` for `duration`.
async fn measure(
    name: &str,
    addr: SocketAddr,
    work: Workload,
    connections: usize,
    duration: Duration,
) -> Phase {
    let until = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(connection(addr, work.clone(), i, until)))
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        if let Ok(o) = t.await {
            hist.add(&o.hist).expect("same bounds");
            requests += o.requests;
            errors += o.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let q = |q: f64| {
        if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(q) as f64
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let phase = Phase {
        name: name.to_string(),
        connections,
        requests,
        errors,
        rps: (requests - errors) as f64 / elapsed.max(1e-9),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        rps_ratio: 0.0,
        p50_ratio: 0.0,
    };
    eprintln!(
        "{:<24} conns {:>3}: {:>9.0} req/s  p50 {:>8.0} µs  p99 {:>8.0} µs  p99.9 {:>8.0} µs  errors {}",
        phase.name, connections, phase.rps, phase.p50_us, phase.p99_us, phase.p999_us, phase.errors
    );
    phase
}

/// The baseline server: the same JSON as a lookup, from a map in memory.
async fn baseline_server() -> anyhow::Result<SocketAddr> {
    let stocks: HashMap<String, Stock> = crate::verify::initial_stocks()
        .into_iter()
        .map(|(name, quantity)| {
            let stock = Stock {
                name: name.clone(),
                price: 10.0,
                quantity,
            };
            (name, stock)
        })
        .collect();
    async fn lookup(
        State(stocks): State<Arc<HashMap<String, Stock>>>,
        Path(name): Path<String>,
    ) -> Result<Json<Data<Stock>>, axum::http::StatusCode> {
        stocks
            .get(&name)
            .cloned()
            .map(|s| Json(Data::new(s)))
            .ok_or(axum::http::StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route("/stocks/{name}", get(lookup))
        .with_state(Arc::new(stocks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn machine_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
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

    let base = baseline_server().await?;
    phases.push(measure("baseline", base, Workload::Get(hot.clone()), 1, d).await);
    phases.push(measure("baseline", base, Workload::Get(hot.clone()), c, d).await);

    let mut scratch = Scratch::start(&ScratchOptions {
        cache_size: 5,
        health_check_interval_ms: 500,
        ..ScratchOptions::default()
    })
    .await?;
    let frontend = addr_of(&scratch.frontend_url())?;
    // Warm the cache.
    measure(
        "warm-up",
        frontend,
        Workload::Get(hot.clone()),
        1,
        Duration::from_millis(200),
    )
    .await;
    phases.push(measure("cached lookup", frontend, Workload::Get(hot.clone()), 1, d).await);
    phases.push(measure("cached lookup", frontend, Workload::Get(hot.clone()), c, d).await);

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
    let sampler = tokio::spawn(sample_rss(pids.iter().map(|(_, p)| *p).collect(), stop));
    phases.push(
        measure(
            "trade",
            frontend,
            Workload::Trades(trade_names.clone()),
            1,
            d,
        )
        .await,
    );
    phases.push(measure("trade", frontend, Workload::Trades(trade_names), c, d).await);
    let _ = stop_sampling.send(());
    let samples = sampler.await?;
    let rss: Vec<Rss> = pids
        .iter()
        .enumerate()
        .map(|(i, (service, _))| {
            let series: Vec<u64> = samples.iter().map(|s| s[i]).collect();
            let start = series.first().copied().unwrap_or(0);
            let mid = series.get(series.len() / 2).copied().unwrap_or(0);
            let end = series.last().copied().unwrap_or(0);
            Rss {
                service: service.clone(),
                start_kib: start,
                mid_kib: mid,
                peak_kib: series.iter().copied().max().unwrap_or(0),
                end_kib: end,
                growth_pct: growth_pct(start, end),
                second_half_growth_pct: growth_pct(mid, end),
            }
        })
        .collect();

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
    scratch.cluster.stop(Service::Frontend).await?;
    scratch
        .cluster
        .set_env(Service::Frontend, "BAZAAR_FRONTEND__CACHE_SIZE", Some("0"));
    scratch.cluster.start_and_wait(Service::Frontend).await?;
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

    let baseline: HashMap<usize, (f64, f64)> = phases
        .iter()
        .filter(|p| p.name == "baseline")
        .map(|p| (p.connections, (p.rps, p.p50_us)))
        .collect();
    for p in &mut phases {
        if let Some(&(rps, p50)) = baseline.get(&p.connections) {
            p.rps_ratio = p.rps / rps.max(1e-9);
            p.p50_ratio = p.p50_us / p50.max(1e-9);
        }
    }
    Ok(BenchReport {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        memory_kib: machine_memory_kib(),
        duration_s: d.as_secs_f64(),
        phases,
        rss,
    })
}
