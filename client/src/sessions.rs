//! The load phase: `clients` concurrent sessions, each doing `n_request`
//! iterations of "look up a random stock, then with probability `prob`
//! trade it", and their figures merged into one [`Load`].

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::types::{TradeKind, TradeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::{Api, Outcome};
use crate::config::RunConfig;
use crate::report::{AckedTrade, Class, Recorder, TradeSample, UnknownTrade};

/// What the sessions did, merged.
pub(crate) struct Load {
    pub(crate) lookup: Recorder,
    pub(crate) trade: Recorder,
    /// Acknowledged trades, by number.
    pub(crate) trades: Vec<AckedTrade>,
    pub(crate) unknown: Vec<UnknownTrade>,
    /// Every trade's start and latency, in start order.
    pub(crate) timeline: Vec<TradeSample>,
    /// How long the load phase took.
    pub(crate) elapsed: Duration,
}

impl Load {
    fn new() -> Load {
        Load {
            lookup: Recorder::new(),
            trade: Recorder::new(),
            trades: Vec::new(),
            unknown: Vec::new(),
            timeline: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// Runs every session to its end (or `config.duration`), from `started`.
pub(crate) async fn run_sessions(
    api: &Arc<Api>,
    config: &Arc<RunConfig>,
    started: Instant,
) -> anyhow::Result<Load> {
    // The run id keeps keys unique across runs with the same seed.
    let run_id: u64 = rand::random();
    let progress = progress_bar(config);
    let sessions: Vec<_> = (0..config.clients)
        .map(|index| {
            tokio::spawn(session(
                api.clone(),
                config.clone(),
                run_id,
                index,
                progress.clone(),
                started,
            ))
        })
        .collect();
    let mut load = Load::new();
    for handle in sessions {
        let result = handle.await?;
        load.lookup.merge(&result.lookup);
        load.trade.merge(&result.trade);
        load.trades.extend(result.trades);
        load.unknown.extend(result.unknown);
        load.timeline.extend(result.timeline);
    }
    load.timeline
        .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    load.elapsed = started.elapsed();
    progress.finish_and_clear();
    load.trades.sort_by_key(|t| t.number);
    Ok(load)
}

/// A bar on stderr when asked for and stdout is a terminal; else hidden.
fn progress_bar(config: &RunConfig) -> indicatif::ProgressBar {
    if !(config.progress && std::io::stdout().is_terminal()) {
        return indicatif::ProgressBar::hidden();
    }
    let total = config.n_request.saturating_mul(config.clients as u64);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} iterations  {per_sec}  eta {eta}",
        )
        .expect("the progress template is static and valid"),
    );
    bar
}

/// One session: its own seeded random choices, its own figures.
async fn session(
    api: Arc<Api>,
    config: Arc<RunConfig>,
    run_id: u64,
    index: usize,
    progress: indicatif::ProgressBar,
    epoch: Instant,
) -> Load {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(index as u64));
    let mut result = Load::new();
    let deadline = config.duration.map(|d| epoch + d);
    for i in 0..config.n_request {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let name = &config.stocks[rng.random_range(0..config.stocks.len())];
        let started = Instant::now();
        let (outcome, attempts) = api.lookup(name).await;
        // A 404 is an error here: the client only asks for stocks it was
        // told exist.
        let class = match outcome {
            Outcome::Ok(_) => Class::Ok,
            Outcome::Rejected(..) | Outcome::Failed(_) => Class::Error,
        };
        result.lookup.record(class, started, attempts);
        if rng.random_bool(config.prob) {
            let kind = if rng.random_bool(0.5) {
                TradeKind::Buy
            } else {
                TradeKind::Sell
            };
            let request = TradeRequest {
                name: name.clone(),
                quantity: rng.random_range(1..=config.max_quantity),
                kind,
            };
            let key = format!("{run_id:016x}-{index}-{i}");
            trade(&api, &mut result, request, key, epoch).await;
        }
        progress.inc(1);
    }
    result
}

/// One trade with its key, counted in `result`.
async fn trade(api: &Api, result: &mut Load, request: TradeRequest, key: String, epoch: Instant) {
    let started = Instant::now();
    let (outcome, attempts) = api.trade(&request, &key).await;
    result.timeline.push(TradeSample {
        start_ms: started.duration_since(epoch).as_secs_f64() * 1000.0,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        acknowledged: matches!(outcome, Outcome::Ok(_)),
    });
    let class = match outcome {
        Outcome::Ok(receipt) => {
            result
                .trades
                .push(AckedTrade::new(key, receipt.transaction_number, request));
            Class::Ok
        }
        Outcome::Rejected(409, _) => Class::Rejected,
        Outcome::Rejected(..) => Class::Error,
        Outcome::Failed(_) => {
            result.unknown.push(UnknownTrade::new(key, request));
            Class::Error
        }
    };
    result.trade.record(class, started, attempts);
}
