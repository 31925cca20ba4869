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
    for p in &report.phases {
        assert_eq!(p.errors, 0, "{p:?}");
        assert!(p.requests > 0, "{p:?}");
    }
    assert_eq!(report.rss.len(), 5);
    for r in &report.rss {
        assert!(r.start_kib > 0 && r.mid_kib > 0 && r.end_kib > 0, "{r:?}");
        assert!(
            r.peak_kib >= r.start_kib.max(r.mid_kib).max(r.end_kib),
            "{r:?}"
        );
    }
}
