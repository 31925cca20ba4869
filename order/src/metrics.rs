//! The replica's own Prometheus metrics (one replica per process, so they
//! are process-wide); `/metrics` also has the shared HTTP figures.

use std::sync::LazyLock;

use common::metrics::{FlushMetrics, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct OrderMetrics {
    /// Highest order number held; -1 while the log is empty.
    pub highest: Gauge,
    /// Orders the leader holds that this replica does not (followers).
    pub replication_lag: Gauge,
    pub propagation_failures: Counter,
    pub catch_up_runs: Counter,
    pub orders_pulled: Counter,
    /// Flushes of the order log; `store::OrderLog` counts and times them.
    pub flush: FlushMetrics,
    /// Trades committed by this replica as leader.
    pub trades_committed: Counter,
    /// The stages of the leader's commit of one batch, each timed from
    /// where the leader waits for it (so a call's time includes its hop).
    pub commit: CommitStages,
}

/// Where a leader's commit of one batch spends its time.
pub struct CommitStages {
    /// The catalog's `/apply`, from the request's start to its answer.
    pub catalog: Histogram,
    /// The append to this replica's own log, flush included.
    pub append: Histogram,
    /// The propagation to the followers, until the last one answered.
    pub followers: Histogram,
}

pub static METRICS: LazyLock<OrderMetrics> = LazyLock::new(|| {
    let highest = Gauge::default();
    highest.set(-1);
    OrderMetrics {
        highest,
        replication_lag: Gauge::default(),
        propagation_failures: Counter::default(),
        catch_up_runs: Counter::default(),
        orders_pulled: Counter::default(),
        flush: FlushMetrics::default(),
        trades_committed: Counter::default(),
        commit: CommitStages {
            catalog: latency_histogram(),
            append: latency_histogram(),
            followers: latency_histogram(),
        },
    }
});

pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "order_highest",
        "Highest order number this replica holds (-1: none)",
        m.highest.clone(),
    );
    registry.register(
        "order_replication_lag",
        "Orders the leader announced that this follower does not hold yet",
        m.replication_lag.clone(),
    );
    registry.register(
        "order_propagation_failures",
        "Propagations to a follower that failed (leader)",
        m.propagation_failures.clone(),
    );
    registry.register(
        "order_catch_up_runs",
        "Pulls of missing orders from a peer, the leader or the catalog",
        m.catch_up_runs.clone(),
    );
    registry.register(
        "order_orders_pulled",
        "Orders received by pulling rather than propagation",
        m.orders_pulled.clone(),
    );
    m.flush.register(registry);
    registry.register(
        "order_trades_committed",
        "Trades this replica committed as leader",
        m.trades_committed.clone(),
    );
    for (name, help, histogram) in [
        (
            "order_commit_catalog_seconds",
            "Leader: the catalog's /apply of one batch, as the leader waits for it",
            &m.commit.catalog,
        ),
        (
            "order_commit_append_seconds",
            "Leader: the append of one batch to its own log, flush included",
            &m.commit.append,
        ),
        (
            "order_commit_followers_seconds",
            "Leader: the propagation of one batch until the last follower answered",
            &m.commit.followers,
        ),
    ] {
        registry.register(name, help, histogram.clone());
    }
}
