//! The lookup checker of `bazaar chaos`: one session trades
//! [`CHECKER_STOCK`] alone (sell 1, buy 1, ...), so it knows what every
//! lookup of it may show ([`SoleTrader`]). It trades through the first
//! front-end and, after every trade, looks the stock up through every
//! front-end, so a cache that another front-end's trade did not reach
//! shows as stale; a sampler looks it up all the time, through each
//! front-end in turn, also while a trade is retried through a fault (the
//! moments a service may serve state that is not durable). A lookup that
//! misses a trade acknowledged before it began is stale; one that no set of
//! the acknowledged trades, the trades of unknown outcome and those under
//! way while it ran explains is unexplained.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use client::api::{self, Api, Outcome};
use client::{AckedTrade, UnknownTrade};
use common::client::ServiceClient;
use common::types::{Data, Stock, TradeKind, TradeRequest};
use serde::Serialize;

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

/// The checker's lookups through one front-end.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FrontendLookups {
    /// Lookups judged (a failed lookup proves nothing and is not counted).
    pub checked: u64,
    pub stale: u64,
    pub unexplained: u64,
}

/// What the checker saw.
#[derive(Default)]
pub struct CheckerResult {
    pub acked: Vec<AckedTrade>,
    pub unknown: Vec<UnknownTrade>,
    pub stale: u64,
    pub unexplained: u64,
    /// Lookups judged (a failed lookup proves nothing and is not counted).
    pub checked: u64,
    /// The same, per front-end (by service name).
    pub by_frontend: BTreeMap<String, FrontendLookups>,
    pub examples: Vec<String>,
}

/// A front-end the checker looks up through: its service name (`frontend`,
/// `frontend-2`) and its `http://host:port`.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub name: String,
    pub base: String,
}

/// What the trader knows and what the lookups found, shared by the loops.
struct Known {
    trader: SoleTrader,
    result: CheckerResult,
}

/// The checker's two loops.
#[derive(Clone)]
struct Checker {
    known: Arc<Mutex<Known>>,
    lookups: ServiceClient,
    /// Every front-end: its name and the stock's URL there.
    urls: Arc<[(String, String)]>,
    started: Instant,
}

impl Checker {
    fn with<T>(&self, f: impl FnOnce(&mut Known) -> T) -> T {
        f(&mut self.known.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// One lookup through front-end `i` (of [`Checker::urls`], modulo
    /// their number), judged once it has ended by what was known when it
    /// began; `after` says when it was made, for the examples.
    async fn look(&self, i: usize, after: &str) {
        let (name, url) = &self.urls[i % self.urls.len()];
        let mark = self.with(|k| k.trader.mark());
        let Ok(d) = self.lookups.get::<Data<Stock>>(url).await else {
            return;
        };
        let shown = d.data.quantity;
        let at = self.started.elapsed().as_secs_f64();
        self.with(|k| {
            let verdict = k.trader.judge(mark, shown);
            let counts = k.result.by_frontend.entry(name.clone()).or_default();
            k.result.checked += 1;
            counts.checked += 1;
            match verdict {
                LookupVerdict::Explained => return,
                LookupVerdict::Stale => {
                    k.result.stale += 1;
                    counts.stale += 1;
                }
                LookupVerdict::Unexplained => {
                    k.result.unexplained += 1;
                    counts.unexplained += 1;
                }
            }
            if k.result.examples.len() < MAX_EXAMPLES {
                k.result.examples.push(format!(
                    "{verdict:?} lookup through {name} at {at:.1} s ({after}): {CHECKER_STOCK} \
                     showed {shown}; the checker's trades explain {}",
                    k.trader.expected(mark)
                ));
            }
        });
    }

    /// One lookup through every front-end, one after the other.
    async fn look_everywhere(&self, after: &str) {
        for i in 0..self.urls.len() {
            self.look(i, after).await;
        }
    }
}

/// Trades [`CHECKER_STOCK`] through the first of `frontends` until `until`
/// and judges every lookup of it, through every front-end. `started` is the
/// run's start, for the examples.
pub async fn run(
    frontends: &[Frontend],
    started: Instant,
    until: Instant,
    initial: u64,
) -> CheckerResult {
    let Some(trading) = frontends.first() else {
        return CheckerResult::default();
    };
    let http = api::http_client(ATTEMPT_TIMEOUT, 2 * frontends.len())
        .expect("a static client configuration");
    let checker = Checker {
        known: Arc::new(Mutex::new(Known {
            trader: SoleTrader::new(initial),
            result: CheckerResult::default(),
        })),
        lookups: ServiceClient::from_http(http.clone()),
        urls: frontends
            .iter()
            .map(|f| (f.name.clone(), format!("{}/stocks/{CHECKER_STOCK}", f.base)))
            .collect(),
        started,
    };
    let sampler = {
        let checker = checker.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                checker.look(i, "sampled").await;
                i += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let api = Api::new(http, &trading.base, RETRY_FOR);
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
            checker.look_everywhere(&after).await;
        }
    }
    // The sampler ends by itself at `until` (a lookup takes at most
    // ATTEMPT_TIMEOUT); its panic would be a bug of this module.
    let _ = sampler.await;
    checker.with(|k| std::mem::take(&mut k.result))
}
