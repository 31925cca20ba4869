//! Shared helpers of the system tests: a scratch cluster of the real
//! binaries, HTTP calls to the front-end, and the invariant checks the
//! README's Testing section names (identical replicas, contiguous numbers,
//! catalog conservation). Waiting is `common::wait`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use bazaar::cluster::{Cluster, ScratchOptions, Service, bin_dir, write_scratch_config};
use common::types::{Order, StockRow, TradeKind};
use common::wait::{poll, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

pub struct TestCluster {
    pub cluster: Cluster,
    pub http: reqwest::Client,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(opts: ScratchOptions) -> TestCluster {
        Self::start_with_env(opts, &[]).await
    }

    /// Starts a cluster where `service` runs with the extra environment
    /// variables given (e.g. a fault point).
    pub async fn start_with_env(
        opts: ScratchOptions,
        env: &[(Service, &str, &str)],
    ) -> TestCluster {
        let mut t = Self::prepare(opts);
        for (service, key, value) in env {
            t.cluster.set_env(*service, key, Some(value));
        }
        t.launch().await;
        t
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET reaches the front-end");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("POST reaches the front-end");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn trade(
        &self,
        name: &str,
        kind: TradeKind,
        quantity: u64,
        key: Option<&str>,
    ) -> (u16, Value) {
        let body = json!({"name": name, "quantity": quantity, "type": kind.as_str()}).to_string();
        let mut headers = vec![("content-type", "application/json")];
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        self.post("/orders", &body, &headers).await
    }

    /// A trade retried with its key until it gets an answer that is not a
    /// 503 (the front-end answers 503 only when no leader could take it).
    pub async fn trade_until_done(
        &self,
        name: &str,
        kind: TradeKind,
        quantity: u64,
        key: &str,
    ) -> (u16, Value) {
        poll(
            &format!("an answer to trade {key} that is not a 503"),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async move {
                let body =
                    json!({"name": name, "quantity": quantity, "type": kind.as_str()}).to_string();
                let r = self
                    .http
                    .post(format!("{}/orders", self.base))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                if status == 503 {
                    return None;
                }
                Some((status, r.json().await.unwrap_or(Value::Null)))
            },
        )
        .await
    }

    pub async fn quantity(&self, name: &str) -> u64 {
        let (status, body) = self.get(&format!("/stocks/{name}")).await;
        assert_eq!(status, 200, "lookup of {name}: {body}");
        body["data"]["quantity"].as_u64().expect("quantity")
    }

    /// Highest order number a replica holds, from its health answer.
    pub async fn replica_highest(&self, id: u32) -> Option<Option<u64>> {
        self.cluster
            .health(Service::Order(id))
            .await
            .map(|h| h.highest)
    }

    /// Waits until every replica answers and holds `highest`.
    pub async fn wait_replicas_at(&self, highest: Option<u64>) {
        let ids: Vec<u32> = self.cluster.config.orders.iter().map(|o| o.id).collect();
        wait_until(
            "all replicas to hold the same highest order",
            Duration::from_secs(30),
            || async {
                for &id in &ids {
                    if self.replica_highest(id).await != Some(highest) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.cluster);
        }
    }
}

/// A cache counter of front-end `id` from its `/metrics`
/// (`bazaar_cache_<counter>_total`, summed over its labels).
pub async fn cache_counter(t: &TestCluster, id: u32, counter: &str) -> u64 {
    let name = format!("bazaar_cache_{counter}_total");
    let text = t
        .http
        .get(format!("{}/metrics", t.cluster.url(Service::Frontend(id))))
        .send()
        .await
        .expect("front-end answers /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(&name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Prints the tail of every service log: a failed test shows what the services said.
pub fn dump_logs(cluster: &Cluster) {
    for s in cluster.services() {
        let text = std::fs::read_to_string(cluster.log_path(s)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("----- {s} log (last {} lines) -----", tail.len());
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Asserts the error body of docs/PROTOCOL.md with the given status.
pub fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "unexpected status; body {body}");
    assert_eq!(
        body["error"]["code"].as_u64(),
        Some(u64::from(expected)),
        "error body {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error body {body}"
    );
}

/// Numbers are 0..n without gaps or repeats.
pub fn assert_contiguous(orders: &[Order]) {
    for (i, o) in orders.iter().enumerate() {
        assert_eq!(
            o.number, i as u64,
            "order log has a gap or repeat at position {i}"
        );
    }
}

/// quantity = initial − Σbuy + Σsell and volume = Σquantity for every stock.
pub fn assert_conservation(stocks: &[StockRow], orders: &[Order], initial: u64) {
    let mut delta: HashMap<&str, i128> = HashMap::new();
    let mut volume: HashMap<&str, u64> = HashMap::new();
    for o in orders {
        let d = i128::from(o.quantity);
        *delta.entry(&o.name).or_default() += if o.kind == TradeKind::Buy { -d } else { d };
        *volume.entry(&o.name).or_default() += o.quantity;
    }
    for s in stocks {
        let expected = i128::from(initial) + delta.get(s.name.as_str()).copied().unwrap_or(0);
        assert_eq!(
            i128::from(s.quantity),
            expected,
            "catalog quantity of {} does not match the order log",
            s.name
        );
        assert_eq!(
            s.volume,
            volume.get(s.name.as_str()).copied().unwrap_or(0),
            "volume of {}",
            s.name
        );
    }
}

/// The orders the client was told about, keyed by number.
pub type Acked = BTreeMap<u64, Order>;

// ----- `bazaar` commands (tests/launcher.rs, tests/frontends.rs) -----

/// `bazaar --config <config> <args>`, run to its end.
pub fn bazaar(config: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().unwrap().join("bazaar"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("bazaar runs")
}

/// `bazaar --config <config> up <args>` in the background, its stderr
/// dropped; stopped with Ctrl-C (SIGINT) on drop if it still runs.
pub struct Up(pub Child);

impl Up {
    pub fn start(config: &Path, args: &[&str], stdout: Stdio) -> Up {
        Up(Command::new(bin_dir().unwrap().join("bazaar"))
            .arg("--config")
            .arg(config)
            .arg("up")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap())
    }

    /// Ctrl-C: sends SIGINT and waits up to `timeout` for the exit.
    pub fn interrupt(&mut self, timeout: Duration) -> ExitStatus {
        kill(Pid::from_raw(self.0.id().cast_signed()), Signal::SIGINT).unwrap();
        common::wait::try_poll_blocking(
            "bazaar up to stop",
            timeout,
            Duration::from_millis(50),
            || self.0.try_wait().unwrap(),
        )
        .unwrap_or_else(|e| panic!("bazaar up did not stop: {e}"))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id().cast_signed()), Signal::SIGINT);
            let _ = self.0.wait();
        }
    }
}

// ----- Gray-failure helpers (tests/gray.rs, tests/gray_disk.rs) -----

impl TestCluster {
    /// A cluster whose config is written but whose services are not started,
    /// so a test can set a service's environment or arguments first (a
    /// fault proxy's port, a database on a small disk); then [`launch`](Self::launch).
    pub fn prepare(opts: ScratchOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_scratch_config(dir.path(), &opts).expect("scratch config");
        let cluster = Cluster::new(&config, &dir.path().join("logs")).expect("cluster");
        let base = cluster.config.frontend_url();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        TestCluster {
            cluster,
            http,
            base,
            _dir: dir,
        }
    }

    /// Starts every service of a [`prepare`](Self::prepare)d cluster.
    pub async fn launch(&mut self) {
        if let Err(e) = self.cluster.start_all().await {
            dump_logs(&self.cluster);
            panic!("cluster did not start: {e:#}");
        }
    }

    /// The scratch directory (config, logs, databases).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The replica the front-end sends trades to now, from its `/health`.
    pub async fn frontend_leader(&self) -> Option<u32> {
        self.cluster
            .health(Service::Frontend(1))
            .await
            .and_then(|h| h.id)
    }

    /// Waits for the front-end of a new cluster to pick order-3 as leader.
    pub async fn wait_first_leader(&self) {
        wait_until(
            "the front-end to pick order-3 (highest id) as leader",
            Duration::from_secs(10),
            || async { self.frontend_leader().await == Some(3) },
        )
        .await;
    }

    /// Waits for the front-end to move the leadership away from order-`id`,
    /// prints where to and how long after `since` (the fault, named by
    /// `fault`), and returns the new leader.
    pub async fn wait_leader_moved_from(&self, id: u32, since: Instant, fault: &str) -> u32 {
        let moved = poll(
            &format!("the front-end to move the leadership away from order-{id}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async { self.frontend_leader().await.filter(|&l| l != id) },
        )
        .await;
        eprintln!(
            "leadership moved to order-{moved} ({:?} after {fault})",
            since.elapsed()
        );
        moved
    }

    /// Calls `check` with the front-end's leader every 100 ms (a
    /// health-check interval) for `how_long`.
    pub async fn watch_leader(&self, how_long: Duration, mut check: impl AsyncFnMut(Option<u32>)) {
        let watch_from = Instant::now();
        while watch_from.elapsed() < how_long {
            check(self.frontend_leader().await).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What [`stop_and_verify`] found.
pub struct Verified {
    pub outcome: TrickleOutcome,
    /// The highest order number the replicas agreed on.
    pub highest: Option<u64>,
    pub verdict: bazaar::verify::Verdict,
}

/// Stops the trickle (none of its trades refused for good), waits for the
/// replicas to agree (`after` names what they converge after), stops the
/// cluster and checks every guarantee on the dumps.
pub async fn stop_and_verify(t: &mut TestCluster, trickle: Trickle, after: &str) -> Verified {
    let outcome = trickle.stop().await;
    assert!(
        outcome.rejected.is_empty(),
        "trades refused for good: {:?}",
        outcome.rejected
    );
    eprintln!(
        "trickle: {} acknowledged, {} unknown",
        outcome.acked.len(),
        outcome.unknown.len()
    );
    let highest = bazaar::verify::wait_converged(&t.cluster, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("replicas converge {after}: {e:?}"));
    t.cluster.stop_all().await.expect("clean stop");
    let verdict =
        bazaar::verify::check(&t.cluster, &outcome.acked, &outcome.unknown).expect("dumps");
    assert_eq!(
        verdict.violations.total(),
        0,
        "{}: {:?}",
        verdict.violations,
        verdict.examples
    );
    assert!(verdict.replicas_identical, "{:?}", verdict.examples);
    Verified {
        outcome,
        highest,
        verdict,
    }
}

/// Waits until `s` answers `/health` with `cond` holding and returns that
/// answer; on timeout fails with what it last answered.
pub async fn wait_health(
    t: &TestCluster,
    s: Service,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&common::types::Health) -> bool,
) -> common::types::Health {
    let last = std::sync::Mutex::new(None);
    let (cond, last_ref) = (&cond, &last);
    let found = common::wait::try_poll(
        &format!("{s} to report {what}"),
        timeout,
        Duration::from_millis(20),
        || async move {
            let h = t.cluster.health(s).await;
            let found = h.clone().filter(cond);
            *last_ref.lock().expect("lock") = Some(h);
            found
        },
    )
    .await;
    found.unwrap_or_else(|e| {
        panic!(
            "{e}; it last answered {:?}",
            last.lock().expect("lock").take()
        )
    })
}

/// Asserts that trades were unavailable for at most `bound` at a time from
/// `since` on (the longest stretch without an acknowledged trade), prints
/// that figure, and returns it.
pub fn assert_longest_gap(
    trickle: &Trickle,
    since: std::time::Instant,
    bound: Duration,
    what: &str,
) -> Duration {
    let gap = trickle
        .longest_gap_since(since)
        .unwrap_or_else(|| panic!("{what}: no trade was acknowledged after the fault"));
    eprintln!("{what}: longest time without an acknowledged trade: {gap:?}");
    assert!(
        gap <= bound,
        "{what}: trades were unavailable for {gap:?} (bound {bound:?})"
    );
    gap
}

/// One answer to one attempt of a [`Trickle`] trade.
#[derive(Debug, Clone)]
pub struct TrickleAnswer {
    pub key: String,
    /// When the attempt was sent.
    pub sent: std::time::Instant,
    /// When its answer (or failure) came.
    pub at: std::time::Instant,
    /// The status, `None` when no answer came (timeout, connection error).
    pub status: Option<u16>,
}

/// What became of every trade of a [`Trickle`].
#[derive(Debug, Default)]
pub struct TrickleOutcome {
    pub acked: Vec<client::AckedTrade>,
    /// Trades that never got a final answer within their retry budget.
    pub unknown: Vec<client::UnknownTrade>,
    /// Trades refused for good (a 4xx other than 408/429): none expected.
    pub rejected: Vec<(String, u16, Value)>,
    pub answers: Vec<TrickleAnswer>,
}

impl TrickleOutcome {
    /// Time from `t` to the first 200 answer of an attempt sent at or
    /// after `t`.
    pub fn first_success_since(&self, t: std::time::Instant) -> Option<Duration> {
        self.answers
            .iter()
            .filter(|a| a.status == Some(200) && a.sent >= t)
            .map(|a| a.at.duration_since(t))
            .min()
    }

    /// 200 answers to attempts sent at or after `t`.
    pub fn successes_since(&self, t: std::time::Instant) -> usize {
        self.answers
            .iter()
            .filter(|a| a.status == Some(200) && a.sent >= t)
            .count()
    }

    /// Attempts sent at or after `t` that failed (no answer, or not a 200).
    pub fn failures_since(&self, t: std::time::Instant) -> usize {
        self.answers
            .iter()
            .filter(|a| a.status != Some(200) && a.sent >= t)
            .count()
    }

    /// The longest time without a 200 answer from `t` to the last 200
    /// answer: how long trades were unavailable after a fault at `t`
    /// (`None` before any 200 answer after `t`).
    pub fn longest_gap_since(&self, t: std::time::Instant) -> Option<Duration> {
        let mut times: Vec<std::time::Instant> = self
            .answers
            .iter()
            .filter(|a| a.status == Some(200) && a.at >= t)
            .map(|a| a.at)
            .collect();
        times.sort();
        let first = times.first()?.duration_since(t);
        Some(
            times
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .fold(first, Duration::max),
        )
    }
}

/// A steady trickle of small trades through the front-end (one every
/// `every`, each retried with its Idempotency-Key until it gets a final
/// answer), recording every answer for recovery times and the guarantees.
pub struct Trickle {
    outcome: std::sync::Arc<std::sync::Mutex<TrickleOutcome>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long one trade of a trickle is retried before its outcome counts as
/// unknown.
pub const TRICKLE_RETRY_BUDGET: Duration = Duration::from_secs(40);
/// Trades of a trickle in flight at once; the trickle slows down beyond.
const TRICKLE_IN_FLIGHT: usize = 32;

impl Trickle {
    pub fn start(base: &str, every: Duration) -> Trickle {
        Self::start_keyed(base, every, "trickle")
    }

    /// [`start`](Self::start) with Idempotency-Keys `<prefix>-<i>`, so
    /// several trickles (one per front-end) do not share keys.
    pub fn start_keyed(base: &str, every: Duration, prefix: &str) -> Trickle {
        use std::sync::atomic::Ordering;
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(TrickleOutcome::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let (base, out, halt) = (base.to_string(), outcome.clone(), stop.clone());
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(TRICKLE_IN_FLIGHT));
            let mut trades = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(every);
            let names = ["AAPL", "MSFT", "GOOG", "AMZN"];
            let mut i = 0usize;
            while !halt.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let kind = if (i / names.len()).is_multiple_of(2) {
                    TradeKind::Buy
                } else {
                    TradeKind::Sell
                };
                let request = common::types::TradeRequest {
                    name: names[i % names.len()].to_string(),
                    quantity: 1,
                    kind,
                };
                let key = format!("{prefix}-{i}");
                let (http, base, out) = (http.clone(), base.clone(), out.clone());
                trades.spawn(async move {
                    trickle_trade(&http, &base, key, request, &out).await;
                    drop(slot);
                });
                while trades.try_join_next().is_some() {}
                i += 1;
            }
            while trades.join_next().await.is_some() {}
        });
        Trickle {
            outcome,
            stop,
            task,
        }
    }

    pub fn acked(&self) -> usize {
        self.outcome.lock().expect("trickle lock").acked.len()
    }

    /// See [`TrickleOutcome::first_success_since`].
    pub fn first_success_since(&self, t: std::time::Instant) -> Option<Duration> {
        self.outcome
            .lock()
            .expect("trickle lock")
            .first_success_since(t)
    }

    /// See [`TrickleOutcome::failures_since`].
    pub fn failures_since(&self, t: std::time::Instant) -> usize {
        self.outcome.lock().expect("trickle lock").failures_since(t)
    }

    /// See [`TrickleOutcome::longest_gap_since`].
    pub fn longest_gap_since(&self, t: std::time::Instant) -> Option<Duration> {
        self.outcome
            .lock()
            .expect("trickle lock")
            .longest_gap_since(t)
    }

    /// See [`TrickleOutcome::successes_since`].
    pub fn successes_since(&self, t: std::time::Instant) -> usize {
        self.outcome
            .lock()
            .expect("trickle lock")
            .successes_since(t)
    }

    /// Waits up to 20 s until `n` trades are acknowledged (of those sent
    /// after `since`, if given); the wait is named `{n} trades acknowledged{what}`.
    pub async fn wait_acked(&self, n: usize, since: Option<Instant>, what: &str) {
        wait_until(
            &format!("{n} trades acknowledged{what}"),
            Duration::from_secs(20),
            || async {
                match since {
                    Some(t) => self.successes_since(t) >= n,
                    None => self.acked() >= n,
                }
            },
        )
        .await;
    }

    /// Waits up to 30 s for a trade sent after `since` (the fault, named
    /// by `fault`) to succeed; returns how long after `since` it succeeded.
    pub async fn wait_recovered(&self, since: Instant, fault: &str) -> Duration {
        poll(
            &format!("a trade sent after {fault} to succeed"),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || async { self.first_success_since(since) },
        )
        .await
    }

    /// Stops sending new trades, waits for the ones in flight (each within
    /// [`TRICKLE_RETRY_BUDGET`]) and returns what became of them all.
    pub async fn stop(self) -> TrickleOutcome {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the trickle task does not panic");
        std::mem::take(&mut *self.outcome.lock().expect("trickle lock"))
    }
}

async fn trickle_trade(
    http: &reqwest::Client,
    base: &str,
    key: String,
    request: common::types::TradeRequest,
    out: &std::sync::Mutex<TrickleOutcome>,
) {
    let started = std::time::Instant::now();
    let body =
        json!({"name": request.name, "quantity": request.quantity, "type": request.kind.as_str()})
            .to_string();
    while started.elapsed() < TRICKLE_RETRY_BUDGET {
        let sent = std::time::Instant::now();
        let answer = http
            .post(format!("{base}/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.clone())
            .send()
            .await;
        let (status, json) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (Some(status), r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (None, Value::Null),
        };
        let done = {
            let mut o = out.lock().expect("trickle lock");
            o.answers.push(TrickleAnswer {
                key: key.clone(),
                sent,
                at: std::time::Instant::now(),
                status,
            });
            match status {
                Some(200) => {
                    let number = json["data"]["transaction_number"]
                        .as_u64()
                        .expect("a 200 carries the transaction number");
                    o.acked.push(client::AckedTrade {
                        key: key.clone(),
                        number,
                        name: request.name.clone(),
                        kind: request.kind,
                        quantity: request.quantity,
                    });
                    true
                }
                Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    o.rejected.push((key.clone(), s, json));
                    true
                }
                _ => false,
            }
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.lock()
        .expect("trickle lock")
        .unknown
        .push(client::UnknownTrade {
            key,
            name: request.name,
            kind: request.kind,
            quantity: request.quantity,
        });
}
