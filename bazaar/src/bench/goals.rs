//! The goals `bazaar bench` judges (docs/PERFORMANCE.md) and the floor of a
//! trade they are judged against, measured in the same run.
//!
//! The design's critical path of one trade: front-end → leader → catalog
//! (it applies, numbers and flushes) → leader, which flushes its log while
//! the followers receive and flush theirs → front-end. That is two flushes
//! in a row (the catalog's, then the replicas' in parallel) and four
//! loopback round trips (caller → front-end, front-end → leader, leader →
//! catalog, leader → follower). The floor is those, each measured here:
//! the flushes as a write of one trade's size and a flush in a fresh
//! database on the cluster's disk, the round trip as the one-connection
//! p50 of the bare baseline server in its own process.

use std::path::Path;

use anyhow::Context;
use common::storage::floor::flush_times;
use serde::Serialize;

use super::{Phase, Rss, ServiceCpu};
use crate::cluster::Service;
use crate::scratch::Scratch;

/// The bare baseline in this process (as before).
pub(super) const BASELINE: &str = "baseline";
/// The bare baseline in a child process.
pub(super) const CHILD_BASELINE: &str = "baseline (own process)";
/// The same two servers measured in turns (`load::alternate`): the cached
/// lookups' goal compares these.
pub(super) const CHILD_BASELINE_TURNS: &str = "baseline (own process), in turns";
pub(super) const CACHED_TURNS: &str = "cached lookup, in turns";

/// Loopback round trips on the critical path of one trade.
const HOPS: u32 = 4;
/// Flushes timed for each floor figure.
const FLOOR_FLUSHES: usize = 200;
/// Time a service gets to answer `GET /metrics`.
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One service's flushes over the one-connection trade phase, from its
/// `bazaar_sled_flush_seconds` histogram.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterFlush {
    pub service: String,
    pub flushes: u64,
    pub mean_us: f64,
}

/// The floor of one trade and what it is made of.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub critical_path: String,
    /// p50 of a flush after writing one batch record (one tree), as a
    /// replica does for a trade.
    pub replica_flush_us: f64,
    /// p50 of a flush after writing three records (stock, applied order,
    /// sequence), as the catalog does for a trade.
    pub catalog_flush_us: f64,
    /// One-connection p50 of the baseline in its own process.
    pub round_trip_us: f64,
    pub hops: u32,
    /// catalog flush + replica flush + hops × round trip.
    pub floor_us: f64,
    /// The services' own flushes while the one-connection trade phase ran.
    pub in_cluster: Vec<ClusterFlush>,
    /// The stages of the leader's commit of a batch over the same phase.
    pub leader_commit: Vec<CommitStage>,
}

/// One stage of the leader's commit of a batch (its
/// `bazaar_order_commit_<stage>_seconds` histogram), over the
/// one-connection trade phase.
#[derive(Debug, Clone, Serialize)]
pub struct CommitStage {
    /// `catalog` (the `/apply` call), `append` (its own log, flush
    /// included) or `followers` (until the last one answered).
    pub stage: String,
    pub batches: u64,
    pub mean_us: f64,
}

/// The leader's commit stages, as their histograms are named.
const COMMIT_STAGES: [&str; 3] = ["catalog", "append", "followers"];

/// One goal: what was measured, the bound, and whether it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: f64,
    pub bound: f64,
    /// How the measured figure compares with the bound (`≥`, `≤`).
    pub compare: String,
    pub unit: String,
    pub met: bool,
    pub detail: String,
}

impl Goal {
    fn new(
        goal: &str,
        measured: f64,
        bound: f64,
        at_least: bool,
        unit: &str,
        detail: String,
    ) -> Goal {
        Goal {
            goal: goal.into(),
            measured,
            bound,
            compare: if at_least { "≥" } else { "≤" }.into(),
            unit: unit.into(),
            met: if at_least {
                measured >= bound
            } else {
                measured <= bound
            },
            detail,
        }
    }
}

/// Sums and counts, at one moment, of every store's flush histogram
/// (`what` is `flush`) and of the leader's commit stages (`what` is the
/// stage).
pub(super) struct Timings(Vec<Totals>);

pub(super) struct Totals {
    service: String,
    what: &'static str,
    sum: f64,
    count: f64,
}

impl Timings {
    /// Each series' count and mean since `before`.
    fn deltas<'a>(
        &'a self,
        before: &'a Timings,
    ) -> impl Iterator<Item = (&'a Totals, u64, f64)> + 'a {
        self.0.iter().map(|t| {
            let (s0, c0) = before
                .0
                .iter()
                .find(|b| b.service == t.service && b.what == t.what)
                .map_or((0.0, 0.0), |b| (b.sum, b.count));
            let n = (t.count - c0).max(0.0);
            let mean_us = if n > 0.0 { (t.sum - s0) / n * 1e6 } else { 0.0 };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (t, n as u64, mean_us)
        })
    }

    pub(super) fn since(&self, before: &Timings) -> (Vec<ClusterFlush>, Vec<CommitStage>) {
        let mut flushes = Vec::new();
        let mut stages = Vec::new();
        for (t, n, mean_us) in self.deltas(before) {
            if t.what == "flush" {
                flushes.push(ClusterFlush {
                    service: t.service.clone(),
                    flushes: n,
                    mean_us,
                });
            } else if n > 0 {
                // Only a replica that led during the phase committed.
                stages.push(CommitStage {
                    stage: t.what.to_string(),
                    batches: n,
                    mean_us,
                });
            }
        }
        (flushes, stages)
    }
}

/// Reads the flush histograms of the catalog and every replica (a replica
/// named with its role, `order-3 (leader)`), and each replica's commit
/// stages (only a leader's move).
pub(super) async fn cluster_timings(scratch: &Scratch) -> Timings {
    let client = common::http::internal_client(METRICS_TIMEOUT, None);
    let mut totals = Vec::new();
    for s in scratch.cluster.services() {
        if matches!(s, Service::Frontend(_)) {
            continue;
        }
        let mut name = s.to_string();
        if let Service::Order(_) = s
            && let Some(h) = scratch.cluster.health(s).await
        {
            name = format!("{name} ({})", h.role.as_str());
        }
        let text = match client
            .get(format!("{}/metrics", scratch.cluster.url(s)))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let value = |metric: &str| common::metrics::sample(&text, metric).unwrap_or(0.0);
        for what in std::iter::once("flush").chain(COMMIT_STAGES) {
            let metric = if what == "flush" {
                "bazaar_sled_flush_seconds".to_string()
            } else {
                format!("bazaar_order_commit_{what}_seconds")
            };
            totals.push(Totals {
                service: name.clone(),
                what,
                sum: value(&format!("{metric}_sum")),
                count: value(&format!("{metric}_count")),
            });
        }
    }
    Timings(totals)
}

fn p50_us(times: &mut [std::time::Duration]) -> f64 {
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn phase<'a>(phases: &'a [Phase], name: &str, connections_one: bool) -> Option<&'a Phase> {
    phases
        .iter()
        .filter(|p| p.name == name)
        .find(|p| (p.connections == 1) == connections_one)
}

/// Measures the floor on the disk of `dir` (the scratch cluster's).
pub(super) async fn floor(
    dir: &Path,
    (in_cluster, leader_commit): (Vec<ClusterFlush>, Vec<CommitStage>),
    phases: &[Phase],
) -> anyhow::Result<Floor> {
    let probe = dir.join("flush-floor");
    let (replica, catalog) = tokio::task::spawn_blocking({
        let probe = probe.clone();
        move || -> anyhow::Result<_> {
            let mut replica = flush_times(&probe.join("replica"), 1, FLOOR_FLUSHES)?;
            let mut catalog = flush_times(&probe.join("catalog"), 2, FLOOR_FLUSHES)?;
            Ok((p50_us(&mut replica), p50_us(&mut catalog)))
        }
    })
    .await
    .context("the flush probe panicked")??;
    let _ = std::fs::remove_dir_all(&probe);
    let round_trip = phase(phases, CHILD_BASELINE, true).map_or(0.0, |p| p.p50_us);
    Ok(Floor {
        critical_path: "catalog flush, then the replicas' flushes in parallel; \
                        caller→front-end, front-end→leader, leader→catalog, leader→follower"
            .into(),
        replica_flush_us: replica,
        catalog_flush_us: catalog,
        round_trip_us: round_trip,
        hops: HOPS,
        floor_us: catalog + replica + f64::from(HOPS) * round_trip,
        in_cluster,
        leader_commit,
    })
}

/// `service figure, service figure, ...` for a goal's detail.
fn each<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    items.iter().map(show).collect::<Vec<_>>().join(", ")
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The goals of docs/PERFORMANCE.md against this run's figures.
pub(super) fn verdicts(
    phases: &[Phase],
    cpu: &[ServiceCpu],
    rss: &[Rss],
    floor: &Floor,
) -> Vec<Goal> {
    let rps = |name, one| phase(phases, name, one).map_or(0.0, |p| p.rps);
    let mut goals = Vec::new();
    let mut goal = |name: &str, measured: f64, bound: f64, at_least: bool, unit: &str, detail| {
        goals.push(Goal::new(name, measured, bound, at_least, unit, detail));
    };
    let (trades, base) = (rps("trade", false), rps(BASELINE, false));
    goal(
        "trades at many connections / baseline",
        trades / base.max(1e-9),
        0.15,
        true,
        "×",
        format!("{trades:.0} trades/s vs {base:.0} req/s"),
    );
    let total: f64 = cpu.iter().map(|c| c.us_per_request).sum();
    goal(
        "cluster CPU per trade",
        total,
        100.0,
        false,
        "µs",
        each(cpu, |c| format!("{} {:.0}", c.service, c.us_per_request)),
    );
    let single = phase(phases, "trade", true).map_or(0.0, |p| p.p50_us);
    goal(
        "single trade p50 / floor",
        single / floor.floor_us.max(1e-9),
        1.3,
        false,
        "×",
        format!("{single:.0} µs vs floor {:.0} µs", floor.floor_us),
    );
    let (cached, child) = (rps(CACHED_TURNS, false), rps(CHILD_BASELINE_TURNS, false));
    let (cached_alone, child_alone) = (rps("cached lookup", false), rps(CHILD_BASELINE, false));
    goal(
        "cached lookups at many connections / baseline in its own process",
        cached / child.max(1e-9),
        0.8,
        true,
        "×",
        format!(
            "in turns of {} s: {cached:.0} req/s vs {child:.0} (own process); \
             as phases of their own: {cached_alone:.0} vs {child_alone:.0} ({:.3}×) and {base:.0} (in process)",
            super::load::TURN.as_secs(),
            cached_alone / child_alone.max(1e-9)
        ),
    );
    let largest = rss.iter().map(|r| r.end_kib).max().unwrap_or(0);
    goal(
        "largest service RSS at the end of the trade phases",
        mib(largest),
        64.0,
        false,
        "MiB",
        each(rss, |r| format!("{} {:.1}", r.service, mib(r.end_kib))),
    );
    let worst = rss
        .iter()
        .map(|r| r.steady_trend_pct.abs())
        .fold(0.0, f64::max);
    goal(
        "RSS trend over the 64-connection trade phase (median of its second half over its first)",
        worst,
        10.0,
        false,
        "%",
        each(rss, |r| {
            format!(
                "{} {:+.1} (peak {:+.0} over the phase's median; last sample over the middle one {:+.1})",
                r.service, r.steady_trend_pct, r.steady_peak_over_median_pct, r.steady_growth_pct
            )
        }),
    );
    goals
}

/// The goals of `bazaar bench --fill N`: every service's RSS at the last
/// checkpoint, and restart and empty catch-up times growing no faster than
/// the log (time per order at the last checkpoint over the first,
/// with a fifth of slack for the machine's spread).
pub(super) fn fill_verdicts(checkpoints: &[super::fill::Checkpoint]) -> Vec<Goal> {
    let mut goals = Vec::new();
    let Some(last) = checkpoints.last() else {
        return goals;
    };
    let largest = last.rss.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    goals.push(Goal::new(
        &format!("largest service RSS at {} orders", last.orders),
        mib(largest),
        64.0,
        false,
        "MiB",
        each(&last.rss, |r| {
            format!("{} {:.1}", r.service, mib(r.rss_kib))
        }),
    ));
    let first = &checkpoints[0];
    if checkpoints.len() < 2 {
        return goals;
    }
    #[allow(clippy::cast_precision_loss)]
    let per_order = |ms: f64, c: &super::fill::Checkpoint| ms / c.orders.max(1) as f64;
    type Figure = fn(&super::fill::Checkpoint) -> f64;
    let figures: [(&str, Figure); 2] = [
        ("restart", |c| c.restart.ms),
        ("empty catch-up", |c| c.empty_catch_up.ms),
    ];
    for (what, at) in figures {
        goals.push(Goal::new(
            &format!(
                "{what} time per order at {} / at {} orders",
                last.orders, first.orders
            ),
            per_order(at(last), last) / per_order(at(first), first).max(1e-12),
            1.2,
            false,
            "×",
            format!(
                "{:.0} ms at {} orders, {:.0} ms at {}",
                at(first),
                first.orders,
                at(last),
                last.orders
            ),
        ));
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::super::fill::{Checkpoint, Dump, Rejoin, ServiceRss};
    use super::*;

    fn checkpoint(orders: u64, ms: f64, rss_kib: u64) -> Checkpoint {
        let rejoin = |ms| Rejoin {
            service: "order-1".into(),
            ms,
            rss_kib,
        };
        Checkpoint {
            orders,
            highest: orders - 1,
            fill_rate: 1.0,
            rss: vec![ServiceRss {
                service: "order-1".into(),
                rss_kib,
            }],
            dumps: vec![Dump {
                command: "order dump --id 1".into(),
                ms,
                lines: orders,
            }],
            restart: rejoin(ms),
            empty_catch_up: rejoin(ms),
        }
    }

    #[test]
    fn fill_verdicts_judge_memory_and_growth_per_order() {
        // Ten times the orders in ten times the time: linear, met.
        let linear = fill_verdicts(&[
            checkpoint(100_000, 100.0, 40 * 1024),
            checkpoint(1_000_000, 1000.0, 60 * 1024),
        ]);
        assert_eq!(linear.len(), 3, "{linear:?}");
        assert!(linear.iter().all(|g| g.met), "{linear:?}");
        // Thirty times the time, and 65 MiB: every goal missed.
        let worse = fill_verdicts(&[
            checkpoint(100_000, 100.0, 40 * 1024),
            checkpoint(1_000_000, 3000.0, 65 * 1024),
        ]);
        assert!(worse.iter().all(|g| !g.met), "{worse:?}");
        assert!((worse[1].measured - 3.0).abs() < 1e-9, "{worse:?}");
        assert!(fill_verdicts(&[]).is_empty());
    }
}
