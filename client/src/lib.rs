//! The load-generating, self-verifying client (README, "The client").
//!
//! [`run`] drives `clients` concurrent sessions against a front-end. Each
//! session looks up a random stock and, with probability `prob`, trades it.
//! Every trade carries an `Idempotency-Key`; when its outcome is unknown
//! (timeout, reset connection, 5xx) the same request is sent again with the
//! same key, so a failover never creates an order the client does not know
//! about. At the end every acknowledged trade is read back with
//! `GET /orders/{n}` and compared.
//!
//! The parts:
//! - [`config`]: what a run does ([`RunConfig`]) and its validation; the
//!   shipped stock list.
//! - [`api`]: HTTP with retries: lookup, trade with its key ([`Api::trade`],
//!   also used by `bazaar`), order query, the reachability check.
//! - `sessions`: the concurrent sessions of the load phase.
//! - [`report`]: per-request figures, the trades seen, the [`Report`] and
//!   its summary.
//! - [`verify`]: the read-back of every acknowledged trade.

pub mod api;
pub mod config;
pub mod report;
mod sessions;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

pub use api::{Api, Outcome};
pub use config::{RunConfig, default_stocks};
pub use report::{AckedTrade, OpStats, Report, TradeSample, UnknownTrade};

/// Runs the load, then verifies every acknowledged trade.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let http = api::http_client(config.attempt_timeout, config.clients)?;
    let api = Arc::new(Api::new(http, &config.base_url, config.retry_for));
    api.wait_reachable(config.retry_for.min(api::REACHABLE_WITHIN))
        .await?;
    let config = Arc::new(config);

    let started = Instant::now();
    let load = sessions::run_sessions(&api, &config, started).await?;
    let read_back = verify::read_back(&api, &load.trades, config.clients).await;

    #[allow(clippy::cast_precision_loss)]
    let throughput_rps =
        (load.lookup.count + load.trade.count) as f64 / load.elapsed.as_secs_f64().max(1e-9);
    Ok(Report {
        lookup: load.lookup.stats(),
        trade: load.trade.stats(),
        query: read_back.query.stats(),
        verified: read_back.mismatches == 0 && read_back.unverified == 0,
        mismatches: read_back.mismatches,
        unverified: read_back.unverified,
        throughput_rps,
        elapsed_s: started.elapsed().as_secs_f64(),
        clients: config.clients,
        seed: config.seed,
        trades_acknowledged: load.trades.len() as u64,
        mismatch_examples: read_back.examples,
        trades: load.trades,
        unknown: load.unknown,
        timeline: load.timeline,
    })
}
