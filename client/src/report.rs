//! The figures of a run: a `Recorder` per request type and session
//! (latencies and counters, merged at the end), the trades the run saw
//! acknowledged or left unknown, and the [`Report`] with its human summary.

use std::time::Instant;

use common::types::{TradeKind, TradeRequest};
use hdrhistogram::Histogram;
use serde::Serialize;

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

impl AckedTrade {
    /// `request`, sent with `key`, was acknowledged as order `number`.
    pub fn new(key: String, number: u64, request: TradeRequest) -> AckedTrade {
        AckedTrade {
            key,
            number,
            name: request.name,
            kind: request.kind,
            quantity: request.quantity,
        }
    }
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

impl UnknownTrade {
    /// `request`, sent with `key`, got no final answer.
    pub fn new(key: String, request: TradeRequest) -> UnknownTrade {
        UnknownTrade {
            key,
            name: request.name,
            kind: request.kind,
            quantity: request.quantity,
        }
    }
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

/// How a request counts in the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Ok,
    /// An expected refusal (409 for a trade).
    Rejected,
    Error,
}

/// Latencies and counters of one request type, kept per session and merged.
pub(crate) struct Recorder {
    hist: Histogram<u64>,
    pub(crate) count: u64,
    errors: u64,
    rejected: u64,
    retries: u64,
}

impl Recorder {
    pub(crate) fn new() -> Self {
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

    /// Counts one request that started at `started` and took `attempts`.
    pub(crate) fn record(&mut self, class: Class, started: Instant, attempts: u32) {
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

    pub(crate) fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds always merge");
        self.count += other.count;
        self.errors += other.errors;
        self.rejected += other.rejected;
        self.retries += other.retries;
    }

    pub(crate) fn stats(&self) -> OpStats {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
