//! Short, seeded chaos runs: faults of every kind, gray ones included
//! (link cuts; full disks where the test runs as root), while clients
//! trade, then every guarantee checked from the dumps (the long run is
//! `bazaar chaos --duration-s 300`). One run on one front-end, one on two
//! (either killed or cut off, the checker's lookups through both).

use std::time::Duration;

use bazaar::chaos::{ChaosOptions, ChaosReport, run};

/// The runs share two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos(duration_s: u64, seed: u64, frontends: u32) -> ChaosReport {
    let _one = ONE_AT_A_TIME.lock().await;
    let report = run(&ChaosOptions {
        duration: Duration::from_secs(duration_s),
        seed,
        clients: 3,
        fault_every: Duration::from_millis(1500),
        gray: true,
        frontends,
    })
    .await
    .expect("the chaos run completes");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    report
}

/// What every run must show: faults of several kinds, gray ones among
/// them, trades and judged lookups, and no violation.
fn assert_clean(report: &ChaosReport) {
    assert!(report.faults_injected >= 5, "{report:?}");
    assert!(
        report.fault_kinds.contains(&"cut-leader-catalog"),
        "{report:?}"
    );
    let gray = report
        .faults_by_kind
        .keys()
        .filter(|k| k.starts_with("cut-") || k.starts_with("fill-"))
        .count();
    assert!(gray > 0, "no gray fault was injected: {report:?}");
    assert!(report.trades_acknowledged > 100, "{report:?}");
    assert!(report.lookups_checked_for_staleness > 10, "{report:?}");
    assert_eq!(report.violations.total(), 0, "{report:?}");
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert!(report.passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_breaks_no_guarantee() {
    let report = chaos(30, 11, 1).await;
    assert_clean(&report);
    assert_eq!(report.frontends, 1);
    assert!(
        !report.fault_kinds.contains(&"cut-catalog-frontend"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_on_two_front_ends_breaks_no_guarantee() {
    let report = chaos(20, 16, 2).await;
    assert_clean(&report);
    assert_eq!(report.frontends, 2);
    assert!(
        report.fault_kinds.contains(&"cut-catalog-frontend"),
        "{report:?}"
    );
    // Sessions on both, and the checker's lookups judged through both.
    assert_eq!(report.by_frontend.len(), 2, "{report:?}");
    for (name, f) in &report.by_frontend {
        assert!(f.sessions >= 1 && f.client_lookups > 0, "{name}: {f:?}");
        assert!(f.checker.checked > 10, "{name}: {f:?}");
    }
}
