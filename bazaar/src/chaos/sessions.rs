//! The client sessions of `bazaar chaos`, spread over the front-ends round
//! robin: session `k` runs on front-end `k mod N`. Each session is one
//! client run of one session seeded with the run's seed + `k`, the seed the
//! client gives its `k`-th session, so whatever the number of front-ends
//! every session makes the requests it would make in one client run of all
//! of them.

use std::collections::BTreeMap;

use client::{AckedTrade, RunConfig, TradeSample, UnknownTrade};
use tokio::task::JoinSet;

use serde::Serialize;

use super::checker::{CheckerResult, Frontend, FrontendLookups};

/// What the sessions did, merged.
#[derive(Debug, Default)]
pub struct Load {
    /// Acknowledged trades, by number.
    pub trades: Vec<AckedTrade>,
    pub unknown: Vec<UnknownTrade>,
    /// Every trade's start and latency, in start order.
    pub timeline: Vec<TradeSample>,
    /// Lookups, trades and order queries that failed for good.
    pub failed_requests: u64,
    /// Per front-end (by service name): sessions, and their lookups.
    pub by_frontend: BTreeMap<String, (u64, u64)>,
}

/// What went through one front-end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrontendCounts {
    /// Client sessions that ran on it.
    pub sessions: u64,
    /// Lookups those sessions made through it.
    pub client_lookups: u64,
    /// The checker's lookups of its stock through it, judged.
    pub checker: FrontendLookups,
}

/// What went through each of `frontends`, by service name, from the
/// sessions' counts ([`Load::by_frontend`]) and the checker's.
pub fn by_frontend(
    frontends: &[Frontend],
    load: &BTreeMap<String, (u64, u64)>,
    checker: &CheckerResult,
) -> BTreeMap<String, FrontendCounts> {
    let counts = |f: &Frontend| {
        let (sessions, client_lookups) = load.get(&f.name).copied().unwrap_or_default();
        FrontendCounts {
            sessions,
            client_lookups,
            checker: checker
                .by_frontend
                .get(&f.name)
                .cloned()
                .unwrap_or_default(),
        }
    };
    frontends
        .iter()
        .map(|f| (f.name.clone(), counts(f)))
        .collect()
}

/// The front-end of session `k` among `n`.
pub fn frontend_of(k: usize, n: usize) -> usize {
    k % n.max(1)
}

/// Runs `config.clients` sessions, each with `config` but its own seed and
/// front-end, to their end; merges what they saw.
pub async fn run(config: &RunConfig, frontends: &[Frontend]) -> anyhow::Result<Load> {
    anyhow::ensure!(!frontends.is_empty(), "no front-end to run the clients on");
    let mut runs = JoinSet::new();
    for k in 0..config.clients {
        let frontend = &frontends[frontend_of(k, frontends.len())];
        let mut one = config.clone();
        one.base_url.clone_from(&frontend.base);
        one.clients = 1;
        one.seed = config.seed.wrapping_add(k as u64);
        let name = frontend.name.clone();
        runs.spawn(async move { (name, client::run(one).await) });
    }
    let mut load = Load::default();
    while let Some(joined) = runs.join_next().await {
        let (name, report) = joined?;
        let report = report?;
        load.trades.extend(report.trades);
        load.unknown.extend(report.unknown);
        load.timeline.extend(report.timeline);
        load.failed_requests += report.lookup.errors + report.trade.errors + report.query.errors;
        let counts = load.by_frontend.entry(name).or_default();
        counts.0 += 1;
        counts.1 += report.lookup.count;
    }
    load.trades.sort_by_key(|t| t.number);
    load.timeline
        .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_round_robin() {
        let of: Vec<usize> = (0..5).map(|k| frontend_of(k, 2)).collect();
        assert_eq!(of, [0, 1, 0, 1, 0]);
        assert!((0..5).all(|k| frontend_of(k, 1) == 0));
    }
}
