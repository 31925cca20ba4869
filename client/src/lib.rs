//! The load-generating, self-verifying client (CONTRACT.md §4).
//!
//! [`run`] drives `clients` concurrent sessions against a front-end. Each
//! session looks up a random stock and, with probability `prob`, trades it.
//! Every trade carries an `Idempotency-Key`; when its outcome is unknown
//! (timeout, reset connection, 5xx) the same request is sent again with the
//! same key, so a failover never creates an order the client does not know
//! about. At the end every acknowledged trade is read back with
//! `GET /orders/{n}` and compared.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::types::{
    Data, IDEMPOTENCY_HEADER, Order, Stock, TradeKind, TradeReceipt, TradeRequest,
};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The stock names of the shipped `data/stocks.csv`, used unless `--stocks`
/// names others.
pub fn default_stocks() -> Vec<String> {
    include_str!("../../data/stocks.csv")
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next())
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port` of the front-end, without a trailing slash.
    pub base_url: String,
    /// Iterations per session.
    pub n_request: u64,
    /// Probability that an iteration trades after its lookup.
    pub prob: f64,
    /// Concurrent sessions.
    pub clients: usize,
    /// Seed of the random choices; the same seed makes the same requests.
    pub seed: u64,
    /// Stocks to pick from.
    pub stocks: Vec<String>,
    /// Largest quantity of one trade (each trade takes 1..=this).
    pub max_quantity: u64,
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// How long a request whose outcome is unknown is retried.
    pub retry_for: Duration,
    /// Draw a progress bar on stderr (only when stdout is a terminal).
    pub progress: bool,
    /// Stop every session after this long, even before `n_request`.
    pub duration: Option<Duration>,
}

impl RunConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            n_request: 100,
            prob: 0.5,
            clients: 1,
            seed: 0,
            stocks: default_stocks(),
            max_quantity: 5,
            attempt_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            progress: false,
            duration: None,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.prob),
            "--prob must be in 0..=1, got {}",
            self.prob
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.clients),
            "--clients must be in 1..=10000, got {}",
            self.clients
        );
        anyhow::ensure!(!self.stocks.is_empty(), "no stocks to trade");
        for name in &self.stocks {
            common::types::validate_stock_name(name)
                .map_err(|e| anyhow::anyhow!("--stocks: {e}"))?;
        }
        anyhow::ensure!(
            (1..=common::types::MAX_TRADE_QUANTITY).contains(&self.max_quantity),
            "the largest trade quantity must be in 1..={}",
            common::types::MAX_TRADE_QUANTITY
        );
        Ok(())
    }
}

/// Figures of one request type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpStats {
    /// Requests issued (each counted once, however often it was retried).
    pub count: u64,
    /// Requests that failed: no answer within the retry window, a 5xx at
    /// its end, or an answer the client did not expect.
    pub errors: u64,
    /// Requests the service refused for a business reason the client
    /// expects: 409 (not enough stock) for trades.
    pub rejected: u64,
    /// Attempts beyond the first, over all requests of this type.
    pub retries: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One trade the front-end acknowledged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AckedTrade {
    pub key: String,
    pub number: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TradeKind,
    pub quantity: u64,
}

/// A trade whose outcome stayed unknown: it may or may not be an order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnknownTrade {
    pub key: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TradeKind,
    pub quantity: u64,
}

/// When a trade started (since the run began) and how it ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TradeSample {
    pub start_ms: f64,
    pub latency_ms: f64,
    pub acknowledged: bool,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lookup: OpStats,
    pub trade: OpStats,
    pub query: OpStats,
    /// Every acknowledged trade was read back and matched.
    pub verified: bool,
    /// Trades whose read-back differed or was missing, plus numbers that
    /// were acknowledged for two different trades.
    pub mismatches: u64,
    /// Acknowledged trades that could not be read back (query errors).
    pub unverified: u64,
    /// Lookups and trades per second during the load phase.
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub clients: usize,
    pub seed: u64,
    pub trades_acknowledged: u64,
    /// Human descriptions of the first mismatches (at most 20).
    pub mismatch_examples: Vec<String>,
    /// Every acknowledged trade, by number.
    #[serde(skip)]
    pub trades: Vec<AckedTrade>,
    /// Trades that got no final answer within the retry window.
    #[serde(skip)]
    pub unknown: Vec<UnknownTrade>,
    /// Every trade's start and latency, in start order.
    #[serde(skip)]
    pub timeline: Vec<TradeSample>,
}

impl Report {
    /// The human summary the client prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8}{:>9}{:>8}{:>10}{:>9}{:>10}{:>10}{:>10}",
            "request", "count", "errors", "rejected", "retries", "mean_ms", "p50_ms", "p99_ms"
        );
        for (name, s) in [
            ("lookup", &self.lookup),
            ("trade", &self.trade),
            ("query", &self.query),
        ] {
            let _ = writeln!(
                out,
                "{:<8}{:>9}{:>8}{:>10}{:>9}{:>10.3}{:>10.3}{:>10.3}",
                name, s.count, s.errors, s.rejected, s.retries, s.mean_ms, s.p50_ms, s.p99_ms
            );
        }
        let _ = writeln!(
            out,
            "throughput: {:.1} requests/s over {:.2} s ({} clients, seed {})",
            self.throughput_rps, self.elapsed_s, self.clients, self.seed
        );
        if self.verified {
            let _ = writeln!(
                out,
                "verification: OK, {} acknowledged trades read back, 0 mismatches",
                self.trades_acknowledged
            );
        } else {
            let _ = writeln!(
                out,
                "verification: FAILED, {} mismatches, {} not readable, of {} acknowledged trades",
                self.mismatches, self.unverified, self.trades_acknowledged
            );
            for example in &self.mismatch_examples {
                let _ = writeln!(out, "  {example}");
            }
        }
        out
    }
}

/// Latencies and counters of one request type, kept per session and merged.
struct Recorder {
    hist: Histogram<u64>,
    count: u64,
    errors: u64,
    rejected: u64,
    retries: u64,
}

impl Recorder {
    fn new() -> Self {
        Self {
            // 1 µs .. 10 min at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("the histogram bounds are static and valid"),
            count: 0,
            errors: 0,
            rejected: 0,
            retries: 0,
        }
    }

    fn record(&mut self, class: Class, started: Instant, attempts: u32) {
        self.count += 1;
        self.retries += u64::from(attempts.saturating_sub(1));
        match class {
            Class::Ok => self.record_latency(started),
            Class::Rejected => {
                self.rejected += 1;
                self.record_latency(started);
            }
            Class::Error => self.errors += 1,
        }
    }

    fn record_latency(&mut self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(micros.max(1));
    }

    fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds always merge");
        self.count += other.count;
        self.errors += other.errors;
        self.rejected += other.rejected;
        self.retries += other.retries;
    }

    fn stats(&self) -> OpStats {
        let ms = |micros: f64| micros / 1000.0;
        let empty = self.hist.is_empty();
        #[allow(clippy::cast_precision_loss)]
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(self.hist.value_at_quantile(quantile) as f64)
            }
        };
        #[allow(clippy::cast_precision_loss)]
        OpStats {
            count: self.count,
            errors: self.errors,
            rejected: self.rejected,
            retries: self.retries,
            mean_ms: if empty { 0.0 } else { ms(self.hist.mean()) },
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: if empty {
                0.0
            } else {
                ms(self.hist.max() as f64)
            },
        }
    }
}

/// How a request counts in the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ok,
    /// An expected refusal (409 for a trade).
    Rejected,
    Error,
}

/// How one request ended, after any retries.
#[derive(Debug)]
enum Outcome<T> {
    Ok(T),
    /// A final 4xx answer.
    Rejected(u16, String),
    /// No usable answer.
    Failed(String),
}

/// The shared HTTP side of a run.
struct Api {
    http: reqwest::Client,
    base: String,
    retry_for: Duration,
}

/// Statuses after which the outcome of a request is unknown or transient,
/// so it is sent again (with the same idempotency key for trades).
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

impl Api {
    /// Sends the request built by `build` until it gets a final answer or
    /// the retry window closes. Returns the outcome and the attempts made.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> (Outcome<T>, u32) {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last_error = match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) if status.is_success() => {
                            return match serde_json::from_slice::<Data<T>>(&body) {
                                Ok(data) => (Outcome::Ok(data.data), attempts),
                                Err(e) => (
                                    Outcome::Failed(format!("unexpected success body: {e}")),
                                    attempts,
                                ),
                            };
                        }
                        Ok(body) if !retryable(status) => {
                            return (
                                Outcome::Rejected(status.as_u16(), error_message(&body)),
                                attempts,
                            );
                        }
                        Ok(body) => format!("{status}: {}", error_message(&body)),
                        Err(e) => format!("reading the answer: {e}"),
                    }
                }
                Err(e) => format!("{e}"),
            };
            if Instant::now() + backoff >= deadline {
                return (Outcome::Failed(last_error), attempts);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn lookup(&self, name: &str) -> (Outcome<Stock>, u32) {
        let url = format!("{}/stocks/{name}", self.base);
        self.call(|| self.http.get(&url)).await
    }

    async fn trade(&self, request: &TradeRequest, key: &str) -> (Outcome<TradeReceipt>, u32) {
        let url = format!("{}/orders", self.base);
        self.call(|| {
            self.http
                .post(&url)
                .header(IDEMPOTENCY_HEADER, key)
                .json(request)
        })
        .await
    }

    async fn query(&self, number: u64) -> (Outcome<Order>, u32) {
        let url = format!("{}/orders/{number}", self.base);
        self.call(|| self.http.get(&url)).await
    }
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

struct SessionResult {
    lookup: Recorder,
    trade: Recorder,
    trades: Vec<AckedTrade>,
    unknown: Vec<UnknownTrade>,
    timeline: Vec<TradeSample>,
}

async fn session(
    api: Arc<Api>,
    config: Arc<RunConfig>,
    run_id: u64,
    index: usize,
    progress: indicatif::ProgressBar,
    epoch: Instant,
) -> SessionResult {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(index as u64));
    let mut result = SessionResult {
        lookup: Recorder::new(),
        trade: Recorder::new(),
        trades: Vec::new(),
        unknown: Vec::new(),
        timeline: Vec::new(),
    };
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
            // The run id keeps keys unique across runs with the same seed.
            let key = format!("{run_id:016x}-{index}-{i}");
            let started = Instant::now();
            let (outcome, attempts) = api.trade(&request, &key).await;
            result.timeline.push(TradeSample {
                start_ms: started.duration_since(epoch).as_secs_f64() * 1000.0,
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                acknowledged: matches!(outcome, Outcome::Ok(_)),
            });
            let class = match outcome {
                Outcome::Ok(receipt) => {
                    result.trades.push(AckedTrade {
                        key,
                        number: receipt.transaction_number,
                        name: request.name,
                        kind: request.kind,
                        quantity: request.quantity,
                    });
                    Class::Ok
                }
                Outcome::Rejected(409, _) => Class::Rejected,
                Outcome::Rejected(..) => Class::Error,
                Outcome::Failed(_) => {
                    result.unknown.push(UnknownTrade {
                        key,
                        name: request.name,
                        kind: request.kind,
                        quantity: request.quantity,
                    });
                    Class::Error
                }
            };
            result.trade.record(class, started, attempts);
        }
        progress.inc(1);
    }
    result
}

/// Reads back every acknowledged trade; returns the query figures, the
/// mismatches (with examples) and the trades that could not be read.
async fn verify(
    api: &Arc<Api>,
    trades: &[AckedTrade],
    concurrency: usize,
) -> (Recorder, u64, u64, Vec<String>) {
    let mut recorder = Recorder::new();
    let mut mismatches = 0u64;
    let mut unverified = 0u64;
    let mut examples = Vec::new();
    let note = |text: String, examples: &mut Vec<String>| {
        if examples.len() < 20 {
            examples.push(text);
        }
    };

    // Two different trades acknowledged with the same number.
    let mut by_number: HashMap<u64, &AckedTrade> = HashMap::new();
    for trade in trades {
        if let Some(other) = by_number.insert(trade.number, trade) {
            mismatches += 1;
            note(
                format!(
                    "order {} was acknowledged for two trades (keys {} and {})",
                    trade.number, other.key, trade.key
                ),
                &mut examples,
            );
        }
    }

    // Owned values in the futures keep them `Send` for `tokio::spawn`.
    let mut answers = futures_util::stream::iter(trades.iter().cloned().map(|trade| {
        let api = api.clone();
        async move {
            let started = Instant::now();
            let (outcome, attempts) = api.query(trade.number).await;
            (trade, outcome, started, attempts)
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((trade, outcome, started, attempts)) = answers.next().await {
        recorder.record(
            if matches!(outcome, Outcome::Ok(_)) {
                Class::Ok
            } else {
                Class::Error
            },
            started,
            attempts,
        );
        match outcome {
            Outcome::Ok(order) => {
                if order.number != trade.number
                    || order.name != trade.name
                    || order.kind != trade.kind
                    || order.quantity != trade.quantity
                {
                    mismatches += 1;
                    note(
                        format!(
                            "order {}: acknowledged {} {} {}, read back {} {} {} (number {})",
                            trade.number,
                            trade.kind.as_str(),
                            trade.quantity,
                            trade.name,
                            order.kind.as_str(),
                            order.quantity,
                            order.name,
                            order.number
                        ),
                        &mut examples,
                    );
                }
            }
            Outcome::Rejected(status, message) => {
                // A final answer that the order is not there: it was lost.
                mismatches += 1;
                note(
                    format!(
                        "order {} ({} {} {}): {status} {message}",
                        trade.number,
                        trade.kind.as_str(),
                        trade.quantity,
                        trade.name
                    ),
                    &mut examples,
                );
            }
            Outcome::Failed(e) => {
                unverified += 1;
                note(
                    format!("order {}: not readable: {e}", trade.number),
                    &mut examples,
                );
            }
        }
    }
    (recorder, mismatches, unverified, examples)
}

/// How long a run waits for the front-end to accept connections at all
/// before giving up (a cluster that is still starting gets this long).
const REACHABLE_WITHIN: Duration = Duration::from_secs(10);

/// Fails fast when nothing answers at the front-end's address, instead of
/// retrying every request for the whole retry window. Any HTTP answer counts.
async fn wait_reachable(api: &Api, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match api.http.get(format!("{}/health", api.base)).send().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                // Printed with `{:#}`: the causes (e.g. "Connection refused") follow.
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the front-end at {}; is the cluster running? (`bazaar up`)",
                    api.base
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the load, then verifies every acknowledged trade.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let http = reqwest::Client::builder()
        .timeout(config.attempt_timeout)
        .connect_timeout(config.attempt_timeout.min(Duration::from_secs(2)))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(config.clients.max(1))
        .build()?;
    let api = Arc::new(Api {
        http,
        base: config.base_url.trim_end_matches('/').to_string(),
        retry_for: config.retry_for,
    });
    wait_reachable(&api, config.retry_for.min(REACHABLE_WITHIN)).await?;
    let config = Arc::new(config);
    let run_id: u64 = rand::random();

    let total = config.n_request.saturating_mul(config.clients as u64);
    let progress = if config.progress && std::io::stdout().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} iterations  {per_sec}  eta {eta}",
            )
            .expect("the progress template is static and valid"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let started = Instant::now();
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
    let mut lookup = Recorder::new();
    let mut trade = Recorder::new();
    let mut trades = Vec::new();
    let mut unknown = Vec::new();
    let mut timeline = Vec::new();
    for handle in sessions {
        let result = handle.await?;
        lookup.merge(&result.lookup);
        trade.merge(&result.trade);
        trades.extend(result.trades);
        unknown.extend(result.unknown);
        timeline.extend(result.timeline);
    }
    timeline.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let load_elapsed = started.elapsed();
    progress.finish_and_clear();
    trades.sort_by_key(|t| t.number);

    let (query, mismatches, unverified, mismatch_examples) =
        verify(&api, &trades, config.clients).await;

    #[allow(clippy::cast_precision_loss)]
    let throughput_rps = (lookup.count + trade.count) as f64 / load_elapsed.as_secs_f64().max(1e-9);
    Ok(Report {
        lookup: lookup.stats(),
        trade: trade.stats(),
        query: query.stats(),
        verified: mismatches == 0 && unverified == 0,
        mismatches,
        unverified,
        throughput_rps,
        elapsed_s: started.elapsed().as_secs_f64(),
        clients: config.clients,
        seed: config.seed,
        trades_acknowledged: trades.len() as u64,
        mismatch_examples,
        trades,
        unknown,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stocks_come_from_the_shipped_csv() {
        let stocks = default_stocks();
        assert!(stocks.len() >= 10, "{stocks:?}");
        assert!(stocks.iter().any(|s| s == "AAPL"));
        assert!(!stocks.iter().any(|s| s == "name"));
    }

    #[test]
    fn stats_reflect_recorded_latencies() {
        let mut r = Recorder::new();
        for micros in 1..=1000u64 {
            r.hist.record(micros * 1000).unwrap();
        }
        r.count = 1000;
        let s = r.stats();
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.mean_ms - 500.5).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn empty_stats_are_zero() {
        let s = Recorder::new().stats();
        assert_eq!(s.count, 0);
        assert_eq!(s.p99_ms, 0.0);
        assert_eq!(s.mean_ms, 0.0);
    }

    #[test]
    fn merge_adds_counts_and_samples() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(Class::Ok, Instant::now(), 1);
        b.record(Class::Error, Instant::now(), 3);
        b.record(Class::Rejected, Instant::now(), 1);
        a.merge(&b);
        let s = a.stats();
        assert_eq!((s.count, s.errors, s.rejected, s.retries), (3, 1, 1, 2));
        assert_eq!(a.hist.len(), 2, "failed requests have no latency");
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.prob = 1.5;
        assert!(c.validate().is_err());
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.clients = 0;
        assert!(c.validate().is_err());
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.stocks = vec!["A/B".into()];
        assert!(c.validate().is_err());
    }
}
