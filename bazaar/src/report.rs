//! What `bazaar status`, `bench`, `chaos` and `eval` print: each report as
//! a table or lines for a person, or as pretty JSON with `--json`.

use std::path::Path;

use common::types::{ClusterStatus, ServiceStatus};
use serde::Serialize;

use crate::bench::fill::FillReport;
use crate::bench::{BenchReport, Goal};
use crate::chaos::ChaosReport;
use crate::eval::{EvalRow, FailoverReport};
use crate::status::UpView;

/// Prints `value` as pretty JSON on stdout.
fn json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `bazaar status`: every service's health, what the front-end sees (its
/// leader and cache) and, under `bazaar up`, who is frozen and what the
/// supervisor restarted, as one JSON object or as tables.
pub fn status(
    rows: &[ServiceStatus],
    up: &UpView,
    frontend: Option<&ClusterStatus>,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        return json(&serde_json::json!({
            "services": rows,
            "paused": up.paused,
            "supervisor": up.supervised,
            "frontend": frontend,
        }));
    }
    crate::status::print_table(rows, up);
    if let Some(view) = frontend {
        crate::status::print_frontend_view(view);
    }
    Ok(())
}

/// `bazaar bench`: the machine, one row per phase, one line per service's RSS.
pub fn bench(report: &BenchReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    println!(
        "{} cores, {} MiB; {} s per phase; {} front-end{}{}",
        report.nproc,
        report.memory_kib / 1024,
        report.duration_s,
        report.frontends,
        if report.frontends == 1 { "" } else { "s" },
        if report.frontends > 1 {
            " (the connections of a phase round robin over them)"
        } else {
            ""
        }
    );
    println!(
        "{:<24}{:>6}{:>11}{:>10}{:>10}{:>10}{:>8}{:>9}{:>8}",
        "phase", "conns", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "errors", "×rps", "×p50"
    );
    for p in &report.phases {
        println!(
            "{:<24}{:>6}{:>11.0}{:>10.0}{:>10.0}{:>10.0}{:>8}{:>9.3}{:>8.2}",
            p.name,
            p.connections,
            p.rps,
            p.p50_us,
            p.p99_us,
            p.p999_us,
            p.errors,
            p.rps_ratio,
            p.p50_ratio
        );
    }
    for r in &report.rss {
        println!(
            "rss {:<10} {:>8} KiB -> {:>8} KiB -> {:>8} KiB (start, middle, end of the trade phases; peak {} KiB): {:+.1}% overall, {:+.1}% in the second half; {:+.1}% over the second half of the 64-connection phase (from {} KiB); in that phase the median of the second half {:+.1}% over the first's, the peak {:+.0}% over the median",
            r.service,
            r.start_kib,
            r.mid_kib,
            r.end_kib,
            r.peak_kib,
            r.growth_pct,
            r.second_half_growth_pct,
            r.steady_growth_pct,
            r.steady_mid_kib,
            r.steady_trend_pct,
            r.steady_peak_over_median_pct
        );
    }
    for (phase, cpu) in [
        ("64-connection phase", &report.trade_cpu),
        ("one connection", &report.single_trade_cpu),
    ] {
        println!(
            "cpu per durable trade ({phase}): {}; context switches per trade: {} (in all {:.1})",
            cpu.iter()
                .map(|c| format!("{} {:.0} µs", c.service, c.us_per_request))
                .collect::<Vec<_>>()
                .join(", "),
            cpu.iter()
                .map(|c| format!("{} {:.1}", c.service, c.switches_per_request))
                .collect::<Vec<_>>()
                .join(", "),
            cpu.iter().map(|c| c.switches_per_request).sum::<f64>()
        );
    }
    let f = &report.floor;
    println!(
        "floor of one trade: {:.0} µs = catalog flush {:.0} µs + replica flush {:.0} µs + {} × round trip {:.0} µs ({})",
        f.floor_us,
        f.catalog_flush_us,
        f.replica_flush_us,
        f.hops,
        f.round_trip_us,
        f.critical_path
    );
    println!(
        "flushes in the cluster during the one-connection trades: {}",
        f.in_cluster
            .iter()
            .map(|c| format!("{} {} × {:.0} µs", c.service, c.flushes, c.mean_us))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "the leader's commit of a batch during them (means): {}",
        f.leader_commit
            .iter()
            .map(|c| format!("{} {:.0} µs", c.stage, c.mean_us))
            .collect::<Vec<_>>()
            .join(", ")
    );
    goals(&report.goals);
    Ok(())
}

/// The verdict table of `bazaar bench` and `bazaar bench --fill N`.
fn goals(goals: &[Goal]) {
    println!("{:<68}{:>12}{:>12}  verdict", "goal", "measured", "bound");
    for g in goals {
        println!(
            "{:<68}{:>10.2} {:<2}{:>2}{:>7.2} {:<2} {}  ({})",
            g.goal,
            g.measured,
            g.unit,
            g.compare,
            g.bound,
            g.unit,
            if g.met { "met" } else { "NOT MET" },
            g.detail
        );
    }
}

/// `bazaar bench --fill N`: the fill, then per checkpoint every service's
/// RSS, and the restart, empty catch-up and dump times.
pub fn fill(report: &FillReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    println!(
        "{} cores, {} MiB; {} of {} orders committed in {:.1} s ({:.0} orders/s), {} errors, {} retries; \
         batches of {}, {} in flight; leader {}, measured follower {}",
        report.nproc,
        report.memory_kib / 1024,
        report.committed,
        report.target,
        report.fill_s,
        report.fill_rate,
        report.errors,
        report.retries,
        report.batch,
        report.in_flight,
        report.leader,
        report.follower
    );
    let Some(first) = report.checkpoints.first() else {
        return Ok(());
    };
    let mib = |kib: u64| {
        #[allow(clippy::cast_precision_loss)]
        let m = kib as f64 / 1024.0;
        m
    };
    print!("{:>10}{:>10}", "orders", "orders/s");
    for r in &first.rss {
        print!("{:>11}", r.service);
    }
    println!("   (RSS, MiB)");
    for c in &report.checkpoints {
        print!("{:>10}{:>10.0}", c.orders, c.fill_rate);
        for r in &c.rss {
            print!("{:>11.1}", mib(r.rss_kib));
        }
        println!();
    }
    print!(
        "{:>10}{:>12}{:>16}",
        "orders", "restart ms", "empty c-up ms"
    );
    for d in &first.dumps {
        print!("{:>18}", d.command);
    }
    println!("   (dump wall time, ms)");
    for c in &report.checkpoints {
        print!(
            "{:>10}{:>12.0}{:>16.0}",
            c.orders, c.restart.ms, c.empty_catch_up.ms
        );
        for d in &c.dumps {
            print!("{:>18.0}", d.ms);
        }
        println!();
    }
    for c in &report.checkpoints {
        println!(
            "at {}: {} after its restart {:.1} MiB, after its empty catch-up {:.1} MiB",
            c.orders,
            c.restart.service,
            mib(c.restart.rss_kib),
            mib(c.empty_catch_up.rss_kib)
        );
    }
    goals(&report.goals);
    Ok(())
}

/// `bazaar chaos`: faults, client figures, failover, violations, verdict.
pub fn chaos(report: &ChaosReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    let kinds: Vec<String> = report
        .faults_by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!(
        "seed {}: {} faults ({}); gray faults {}; {} front-end{}",
        report.seed,
        report.faults_injected,
        kinds.join(", "),
        if report.gray { "on" } else { "off" },
        report.frontends,
        if report.frontends == 1 { "" } else { "s" }
    );
    if !report.gray_faults_seen_biting.is_empty() {
        let biting: Vec<String> = report
            .gray_faults_seen_biting
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        println!(
            "gray faults seen biting (a service not ready, without storage or silent): {}",
            biting.join(", ")
        );
    }
    if !report.skipped_fault_kinds.is_empty() {
        println!(
            "skipped: {} ({})",
            report.skipped_fault_kinds.join(", "),
            report
                .skipped_because
                .as_deref()
                .unwrap_or("not available here")
        );
    }
    println!(
        "trades acknowledged {}, unknown outcome {}, failed client requests {}, lookups checked {}",
        report.trades_acknowledged,
        report.trades_unknown_outcome,
        report.failed_requests,
        report.lookups_checked_for_staleness
    );
    for (name, f) in &report.by_frontend {
        println!(
            "  {name}: {} sessions, {} client lookups; checker lookups {} (stale {}, unexplained {})",
            f.sessions, f.client_lookups, f.checker.checked, f.checker.stale, f.checker.unexplained
        );
    }
    if report.leader_faults == 0 {
        println!(
            "failover: no fault of the leader in this run; orders in the log {}",
            report.orders_in_log
        );
    } else {
        println!(
            "failover after {} faults of the leader: p50 {:.1} ms, p99 {:.1} ms; orders in the log {}",
            report.leader_faults,
            report.failover_p50_ms,
            report.failover_p99_ms,
            report.orders_in_log
        );
    }
    for (kind, f) in &report.failover_by_kind {
        println!(
            "  {kind}: {} faults, p50 {:.1} ms, max {:.1} ms",
            f.faults, f.p50_ms, f.max_ms
        );
    }
    if !report.supervisor_restarts.is_empty() {
        let restarts: Vec<String> = report
            .supervisor_restarts
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        println!("restarted by the supervisor: {}", restarts.join(", "));
    }
    if let Some(d) = &report.disks {
        let used: Vec<String> = d
            .used_bytes
            .iter()
            .map(|(s, n)| format!("{s} {} KiB", n / 1024))
            .collect();
        println!(
            "small disks of {} MiB each; the databases took {}",
            d.size_bytes / (1024 * 1024),
            used.join(", ")
        );
    }
    println!("violations: {}", report.violations);
    for e in &report.examples {
        println!("  {e}");
    }
    if let Some(dir) = &report.kept {
        println!("data, logs and history.json kept in {}", dir.display());
    }
    println!("{}", if report.passed { "PASSED" } else { "FAILED" });
    Ok(())
}

/// `bazaar eval --failover`: kills, failover times, the verdict.
pub fn failover(report: &FailoverReport, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    println!(
        "kills: {} ({} of the leader); trades acknowledged: {}; failed requests: {}",
        report.kills, report.leader_kills, report.trades_acknowledged, report.failed_requests
    );
    println!(
        "failover (longest trade around a leader kill): p50 {:.1} ms, max {:.1} ms; trade p50 {:.2} ms p99 {:.2} ms",
        report.failover_p50_ms, report.failover_max_ms, report.trade_p50_ms, report.trade_p99_ms
    );
    println!(
        "replicas identical: {}; violations: {}",
        report.replicas_identical, report.verdict.violations
    );
    for e in &report.verdict.examples {
        println!("  {e}");
    }
    Ok(())
}

/// `bazaar eval`: the rows as JSON when asked (each cell's figures went to
/// stderr as it finished), then where the files are.
pub fn eval(rows: &[EvalRow], out: &Path, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        json(&rows)?;
    }
    eprintln!(
        "wrote {0}/eval.csv, {0}/latency.svg and {0}/cache.svg",
        out.display()
    );
    Ok(())
}
