//! A short, seeded chaos run: faults of every kind, gray ones included
//! (link cuts; full disks where the test runs as root), while clients
//! trade, then every guarantee checked from the dumps (the long run is
//! `bazaar chaos --duration-s 300`).

use std::time::Duration;

use bazaar::chaos::{ChaosOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_breaks_no_guarantee() {
    let report = run(&ChaosOptions {
        duration: Duration::from_secs(30),
        seed: 11,
        clients: 3,
        fault_every: Duration::from_millis(1500),
        gray: true,
    })
    .await
    .expect("the chaos run completes");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
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
