//! The read-back at the end of a run: every acknowledged trade is asked for
//! with `GET /orders/{n}` and compared, and no number may have been
//! acknowledged for two trades. The helpers here are shared with
//! `bazaar`'s end-of-run checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use common::types::TradeKind;
use futures_util::StreamExt;

use crate::api::{Api, Outcome};
use crate::report::{AckedTrade, Class, Recorder};

/// Most mismatch examples kept for the report.
const MAX_EXAMPLES: usize = 20;

/// A trade as people read it: `buy 3 AAPL`.
pub fn describe(kind: TradeKind, quantity: u64, name: &str) -> String {
    format!("{} {quantity} {name}", kind.as_str())
}

/// Indexes acknowledged trades by number. Also returns every trade whose
/// number an earlier trade already got, with that earlier trade: two
/// acknowledgements of one number are a violation.
pub fn index_by_number(
    trades: &[AckedTrade],
) -> (HashMap<u64, &AckedTrade>, Vec<(&AckedTrade, &AckedTrade)>) {
    let mut by_number: HashMap<u64, &AckedTrade> = HashMap::new();
    let mut twice = Vec::new();
    for trade in trades {
        if let Some(earlier) = by_number.insert(trade.number, trade) {
            twice.push((earlier, trade));
        }
    }
    (by_number, twice)
}

/// What the read-back found.
pub(crate) struct ReadBack {
    pub(crate) query: Recorder,
    /// Trades read back different or missing, and numbers acknowledged twice.
    pub(crate) mismatches: u64,
    /// Trades that could not be read back.
    pub(crate) unverified: u64,
    /// The first mismatches, described.
    pub(crate) examples: Vec<String>,
}

impl ReadBack {
    fn mismatch(&mut self, text: String) {
        self.mismatches += 1;
        self.note(text);
    }

    fn note(&mut self, text: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// Reads back every acknowledged trade, `concurrency` at a time.
pub(crate) async fn read_back(
    api: &Arc<Api>,
    trades: &[AckedTrade],
    concurrency: usize,
) -> ReadBack {
    let mut out = ReadBack {
        query: Recorder::new(),
        mismatches: 0,
        unverified: 0,
        examples: Vec::new(),
    };
    for (earlier, trade) in index_by_number(trades).1 {
        out.mismatch(format!(
            "order {} was acknowledged for two trades (keys {} and {})",
            trade.number, earlier.key, trade.key
        ));
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
        let class = if matches!(outcome, Outcome::Ok(_)) {
            Class::Ok
        } else {
            Class::Error
        };
        out.query.record(class, started, attempts);
        let acknowledged = describe(trade.kind, trade.quantity, &trade.name);
        match outcome {
            Outcome::Ok(order) => {
                if order.number != trade.number
                    || order.name != trade.name
                    || order.kind != trade.kind
                    || order.quantity != trade.quantity
                {
                    out.mismatch(format!(
                        "order {}: acknowledged {acknowledged}, read back {} (number {})",
                        trade.number,
                        describe(order.kind, order.quantity, &order.name),
                        order.number
                    ));
                }
            }
            // A final answer that the order is not there: it was lost.
            Outcome::Rejected(status, message) => out.mismatch(format!(
                "order {} ({acknowledged}): {status} {message}",
                trade.number
            )),
            Outcome::Failed(e) => {
                out.unverified += 1;
                out.note(format!("order {}: not readable: {e}", trade.number));
            }
        }
    }
    out
}
