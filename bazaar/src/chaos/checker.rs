//! The lookup checker of `bazaar chaos`: one session trades
//! [`CHECKER_STOCK`] alone (sell 1, buy 1, ...), so it knows what every
//! lookup of it may show ([`SoleTrader`]). It looks the stock up after
//! every trade, and a sampler looks it up all the time, also while a trade
//! is retried through a fault (the moments a service may serve state that
//! is not durable). A lookup that misses a trade acknowledged before it
//! began is stale; one that no set of the acknowledged trades, the trades
//! of unknown outcome and those under way while it ran explains is
//! unexplained.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use client::api::{self, Api, Outcome};
use client::{AckedTrade, UnknownTrade};
use common::client::ServiceClient;
use common::types::{Data, Stock, TradeKind, TradeRequest};

use crate::verify::{LookupVerdict, SoleTrader};

/// The stock only the checker trades.
pub const CHECKER_STOCK: &str = "IBM";

/// Timeout of one request of the checker.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the checker retries a trade with its key, as the client does.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Pause between two lookups of the sampler.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Examples of bad lookups kept for the report.
const MAX_EXAMPLES: usize = 5;

/// What the checker saw.
#[derive(Default)]
pub struct CheckerResult {
    pub acked: Vec<AckedTrade>,
    pub unknown: Vec<UnknownTrade>,
    pub stale: u64,
    pub unexplained: u64,
    /// Lookups judged (a failed lookup proves nothing and is not counted).
    pub checked: u64,
    pub examples: Vec<String>,
}

/// What the trader knows and what the lookups found, shared by the loops.
struct Known {
    trader: SoleTrader,
    result: CheckerResult,
}

/// The checker's two loops, on one front-end.
#[derive(Clone)]
struct Checker {
    known: Arc<Mutex<Known>>,
    lookups: ServiceClient,
    url: String,
    started: Instant,
}

impl Checker {
    fn with<T>(&self, f: impl FnOnce(&mut Known) -> T) -> T {
        f(&mut self.known.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// One lookup, judged once it has ended by what was known when it
    /// began; `after` says when it was made, for the examples.
    async fn look(&self, after: &str) {
        let mark = self.with(|k| k.trader.mark());
        let Ok(d) = self.lookups.get::<Data<Stock>>(&self.url).await else {
            return;
        };
        let shown = d.data.quantity;
        let at = self.started.elapsed().as_secs_f64();
        self.with(|k| {
            k.result.checked += 1;
            let verdict = k.trader.judge(mark, shown);
            match verdict {
                LookupVerdict::Explained => return,
                LookupVerdict::Stale => k.result.stale += 1,
                LookupVerdict::Unexplained => k.result.unexplained += 1,
            }
            if k.result.examples.len() < MAX_EXAMPLES {
                k.result.examples.push(format!(
                    "{verdict:?} lookup at {at:.1} s ({after}): {CHECKER_STOCK} showed \
                     {shown}; the checker's trades explain {}",
                    k.trader.expected(mark)
                ));
            }
        });
    }
}

/// Trades [`CHECKER_STOCK`] through the front-end at `base` until `until`
/// and judges every lookup of it. `started` is the run's start, for the
/// examples.
pub async fn run(base: String, started: Instant, until: Instant, initial: u64) -> CheckerResult {
    let http = api::http_client(ATTEMPT_TIMEOUT, 2).expect("a static client configuration");
    let checker = Checker {
        known: Arc::new(Mutex::new(Known {
            trader: SoleTrader::new(initial),
            result: CheckerResult::default(),
        })),
        lookups: ServiceClient::from_http(http.clone()),
        url: format!("{base}/stocks/{CHECKER_STOCK}"),
        started,
    };
    let sampler = {
        let checker = checker.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                checker.look("sampled").await;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let api = Api::new(http, &base, RETRY_FOR);
    let run: u64 = rand::random();
    let mut i = 0u64;
    while Instant::now() < until {
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
        let index = checker.with(|k| k.trader.sent(kind, 1));
        let outcome = api.trade(&request, &key).await.0;
        let after = checker.with(|k| match outcome {
            Outcome::Ok(receipt) => {
                let number = receipt.transaction_number;
                k.trader.acknowledged(index);
                k.result.acked.push(AckedTrade::new(key, number, request));
                Some(format!("after order {number}, {} 1", kind.as_str()))
            }
            // A final refusal is no order.
            Outcome::Rejected(..) => {
                k.trader.refused(index);
                None
            }
            Outcome::Failed(why) => {
                k.trader.unknown(index);
                let after = format!("after trade {key} got no answer: {why}");
                k.result.unknown.push(UnknownTrade::new(key, request));
                Some(after)
            }
        });
        if let Some(after) = after {
            checker.look(&after).await;
        }
    }
    // The sampler ends by itself at `until` (a lookup takes at most
    // ATTEMPT_TIMEOUT); its panic would be a bug of this module.
    let _ = sampler.await;
    checker.with(|k| std::mem::take(&mut k.result))
}
