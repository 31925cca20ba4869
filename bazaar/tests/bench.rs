//! The benchmark's short form: every phase completes with zero errors. The
//! figures themselves are read from `bazaar bench` runs (docs/PERFORMANCE.md),
//! never asserted on timing here.

use std::time::Duration;

use bazaar::bench::{BenchOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_phase_completes_without_errors() {
    let report = run(&BenchOptions {
        duration: Duration::from_secs(3),
        connections: 16,
        frontends: 1,
    })
    .await
    .expect("the bench completes");
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    for phase in [
        "baseline",
        "baseline (own process)",
        "cached lookup",
        "uncached lookup",
        "trade",
        "order query",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == phase).count(),
            2,
            "{phase} at 1 and 16 connections: {names:?}"
        );
    }
    // The cached lookups and the own-process baseline, measured in turns
    // at 16 connections for the goal's ratio.
    for phase in [
        "baseline (own process), in turns",
        "cached lookup, in turns",
    ] {
        let turns: Vec<_> = report.phases.iter().filter(|p| p.name == phase).collect();
        assert_eq!(turns.len(), 1, "{phase}: {names:?}");
        assert_eq!(turns[0].connections, 16, "{:?}", turns[0]);
    }
    for p in &report.phases {
        assert_eq!(p.errors, 0, "{p:?}");
        assert!(p.requests > 0, "{p:?}");
    }
    assert_eq!(report.rss.len(), 5);
    // CPU per trade of every service, the floor's parts, and a verdict
    // for each goal: present and sane, never judged here.
    assert_eq!(report.trade_cpu.len(), 5, "{:?}", report.trade_cpu);
    assert!(
        report.trade_cpu.iter().any(|c| c.cpu_ms > 0.0),
        "{:?}",
        report.trade_cpu
    );
    // A trade crosses processes: at one connection every one of them
    // sleeps between trades, so each service's threads switch at least
    // once per trade.
    assert_eq!(report.single_trade_cpu.len(), 5);
    assert!(
        report
            .single_trade_cpu
            .iter()
            .all(|c| c.switches_per_request >= 1.0),
        "{:?}",
        report.single_trade_cpu
    );
    let f = &report.floor;
    assert!(
        f.replica_flush_us > 0.0 && f.catalog_flush_us > 0.0 && f.round_trip_us > 0.0,
        "{f:?}"
    );
    assert_eq!(f.in_cluster.len(), 4, "{f:?}");
    assert!(f.in_cluster.iter().all(|c| c.flushes > 0), "{f:?}");
    let stages: Vec<&str> = f.leader_commit.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, ["catalog", "append", "followers"], "{f:?}");
    assert!(f.leader_commit.iter().all(|s| s.batches > 0), "{f:?}");
    assert_eq!(report.goals.len(), 6, "{:?}", report.goals);
    assert!(
        report
            .goals
            .iter()
            .all(|g| g.measured.is_finite() && g.measured >= 0.0),
        "{:?}",
        report.goals
    );
    for r in &report.rss {
        assert!(r.start_kib > 0 && r.mid_kib > 0 && r.end_kib > 0, "{r:?}");
        assert!(
            r.peak_kib >= r.start_kib.max(r.mid_kib).max(r.end_kib),
            "{r:?}"
        );
    }
}

/// `bazaar bench --fill 2000`: the fill commits every order with zero
/// errors and every figure of its one checkpoint is there (none timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fill_completes_without_errors() {
    use bazaar::bench::fill::{FillOptions, checkpoints, run as fill};
    assert_eq!(checkpoints(2000), [2000]);
    assert_eq!(checkpoints(1_000_000), [100_000, 500_000, 1_000_000]);
    let report = fill(&FillOptions {
        orders: 2000,
        in_flight: 4,
    })
    .await
    .expect("the fill completes");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.committed, 2000, "{report:?}");
    assert_eq!(report.checkpoints.len(), 1, "{report:?}");
    let c = &report.checkpoints[0];
    assert!(c.highest + 1 >= 2000, "{c:?} (orders are numbered from 0)");
    assert_eq!(c.rss.len(), 5, "{c:?}");
    assert!(c.rss.iter().all(|r| r.rss_kib > 0), "{c:?}");
    assert_eq!(c.dumps.len(), 4, "{c:?}");
    for d in &c.dumps {
        let expected = if d.command.starts_with("order") {
            2000
        } else {
            1
        };
        assert!(d.lines >= expected, "{d:?}");
    }
    assert!(
        c.restart.rss_kib > 0 && c.empty_catch_up.rss_kib > 0,
        "{c:?}"
    );
    // One checkpoint: only the memory verdict (the others compare two).
    assert_eq!(report.goals.len(), 1, "{:?}", report.goals);
    assert!(report.goals[0].measured > 0.0, "{:?}", report.goals);
}
