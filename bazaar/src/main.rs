use std::path::PathBuf;

use bazaar::cluster::Service;
use bazaar::control::Action;
use clap::{Parser, Subcommand};
use common::config::{Config, DEFAULT_CONFIG_PATH};

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "bazaar",
    version,
    about = "Run and inspect a local Stock Bazaar cluster"
)]
struct Cli {
    /// Path of config.yaml.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the catalog, every order replica and the front-end; Ctrl-C stops them.
    Up,
    /// Show which services are up, who leads, and each replica's highest order.
    Status {
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a service answers GET /health within a second, else 1
    /// (a container health check).
    Health(Target),
    /// kill -9 a service of the running `bazaar up`.
    Kill(Target),
    /// Start a killed or stopped service again (replicas catch up first).
    Resume(Target),
    /// Stop a service gracefully (SIGTERM).
    Stop(Target),
    /// Freeze a service (SIGSTOP): it keeps its port but answers nothing.
    Pause(Target),
    /// Unfreeze a paused service (SIGCONT).
    Continue(Target),
    /// Measure latency vs trade probability with the cache on and off (CSV
    /// and SVG plots), or with --failover, kill replicas while clients run.
    Eval(EvalArgs),
    /// Run clients on a fresh cluster while killing and freezing services on
    /// a random schedule; then check every guarantee. Exit code 1 on any
    /// violation (the data and history are kept).
    Chaos(ChaosArgs),
    /// Measure every request path against a bare in-process baseline server.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Connections of the multi-connection phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=1024).contains(&args.connections),
        "--connections must be in 1..=1024"
    );
    let report = bazaar::bench::run(&bazaar::bench::BenchOptions {
        duration: positive_seconds("--duration-s", args.duration_s)?,
        connections: args.connections,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} cores, {} MiB; {} s per phase",
        report.nproc,
        report.memory_kib / 1024,
        report.duration_s
    );
    println!(
        "{:<18}{:>6}{:>11}{:>10}{:>10}{:>10}{:>8}{:>9}{:>8}",
        "phase", "conns", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "errors", "×rps", "×p50"
    );
    for p in &report.phases {
        println!(
            "{:<18}{:>6}{:>11.0}{:>10.0}{:>10.0}{:>10.0}{:>8}{:>9.3}{:>8.2}",
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
            "rss {:<10} {:>8} KiB -> {:>8} KiB -> {:>8} KiB (start, middle, end of the trade phases; peak {} KiB): {:+.1}% overall, {:+.1}% in the second half",
            r.service,
            r.start_kib,
            r.mid_kib,
            r.end_kib,
            r.peak_kib,
            r.growth_pct,
            r.second_half_growth_pct
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct ChaosArgs {
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,
    /// Seed of the fault schedule and of the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Mean seconds between two faults.
    #[arg(long, default_value_t = 3.0)]
    fault_every_s: f64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

async fn chaos(args: &ChaosArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.clients),
        "--clients must be in 1..=256"
    );
    let report = bazaar::chaos::run(&bazaar::chaos::ChaosOptions {
        duration: positive_seconds("--duration-s", args.duration_s)?,
        seed: args.seed,
        clients: args.clients,
        fault_every: positive_seconds("--fault-every-s", args.fault_every_s)?,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let kinds: Vec<String> = report
            .faults_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        println!(
            "seed {}: {} faults ({})",
            report.seed,
            report.faults_injected,
            kinds.join(", ")
        );
        println!(
            "trades acknowledged {}, unknown outcome {}, failed client requests {}, lookups checked {}",
            report.trades_acknowledged,
            report.trades_unknown_outcome,
            report.failed_requests,
            report.lookups_checked_for_staleness
        );
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
        println!("violations: {}", report.violations);
        for e in &report.examples {
            println!("  {e}");
        }
        if let Some(dir) = &report.kept {
            println!("data, logs and history.json kept in {}", dir.display());
        }
        println!("{}", if report.passed { "PASSED" } else { "FAILED" });
    }
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Trade probabilities to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6,0.8")]
    probs: Vec<f64>,
    /// Iterations per client session in each cell.
    #[arg(long, default_value_t = 1000)]
    n_request: u64,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Seed of the clients' choices (and of the failover schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cache size when the cache is on.
    #[arg(long, default_value_t = 5)]
    cache_size: usize,
    /// Directory for eval.csv, latency.svg and cache.svg.
    #[arg(long, default_value = "docs/eval")]
    out: PathBuf,
    /// Kill a random replica every few seconds instead of the latency grid.
    #[arg(long)]
    failover: bool,
    /// Failover mode: how long the clients run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,
    /// Failover mode: seconds between kills.
    #[arg(long, default_value_t = 3.0)]
    kill_every_s: f64,
    /// Failover mode: seconds a killed replica stays down.
    #[arg(long, default_value_t = 1.0)]
    down_for_s: f64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn seconds(what: &str, s: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        s.is_finite() && (0.0..=86_400.0).contains(&s),
        "{what} must be in 0..=86400 seconds, got {s}"
    );
    Ok(std::time::Duration::from_secs_f64(s))
}

/// A run length or a period: zero would run nothing, or fault without pause.
fn positive_seconds(what: &str, s: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        s.is_finite() && s > 0.0 && s <= 86_400.0,
        "{what} must be in (0, 86400] seconds, got {s}"
    );
    Ok(std::time::Duration::from_secs_f64(s))
}

async fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    if args.failover {
        let report = bazaar::eval::failover(&bazaar::eval::FailoverOptions {
            duration: positive_seconds("--duration-s", args.duration_s)?,
            kill_every: positive_seconds("--kill-every-s", args.kill_every_s)?,
            down_for: seconds("--down-for-s", args.down_for_s)?,
            clients: args.clients,
            prob: 0.5,
            seed: args.seed,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "kills: {} ({} of the leader); trades acknowledged: {}; failed requests: {}",
                report.kills,
                report.leader_kills,
                report.trades_acknowledged,
                report.failed_requests
            );
            println!(
                "failover (longest trade around a leader kill): p50 {:.1} ms, max {:.1} ms; trade p50 {:.2} ms p99 {:.2} ms",
                report.failover_p50_ms,
                report.failover_max_ms,
                report.trade_p50_ms,
                report.trade_p99_ms
            );
            println!(
                "replicas identical: {}; violations: {}",
                report.replicas_identical, report.verdict.violations
            );
            for e in &report.verdict.examples {
                println!("  {e}");
            }
        }
        anyhow::ensure!(
            report.verdict.violations.total() == 0,
            "the run broke a guarantee (see above)"
        );
        return Ok(());
    }
    for &p in &args.probs {
        anyhow::ensure!(
            (0.0..=1.0).contains(&p),
            "--probs must be in 0..=1, got {p}"
        );
    }
    let rows = bazaar::eval::run(&bazaar::eval::EvalOptions {
        probs: args.probs.clone(),
        n_request: args.n_request,
        clients: args.clients,
        seed: args.seed,
        cache_size: args.cache_size,
        out: args.out.clone(),
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    eprintln!(
        "wrote {0}/eval.csv, {0}/latency.svg and {0}/cache.svg",
        args.out.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
struct Target {
    /// catalog, frontend, order (with --id) or order-N.
    service: String,
    /// Replica id, with `order`.
    #[arg(long)]
    id: Option<u32>,
}

impl Target {
    fn service(&self) -> anyhow::Result<Service> {
        match (self.service.as_str(), self.id) {
            ("order", Some(id)) => Ok(Service::Order(id)),
            ("order", None) => anyhow::bail!("say which replica: `order --id N`"),
            (s, None) => s.parse().map_err(|e: String| anyhow::anyhow!(e)),
            (s, Some(_)) => anyhow::bail!("--id goes with `order`, not {s}"),
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    common::telemetry::init(common::telemetry::LogFormat::Human);
    if let Err(e) = real_main(cli).await {
        eprintln!("bazaar: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let (action, target) = match &cli.command {
        Cmd::Up => return bazaar::up::up(&cli.config).await,
        Cmd::Eval(args) => return eval(args).await,
        Cmd::Chaos(args) => return chaos(args).await,
        Cmd::Bench(args) => return bench(args).await,
        Cmd::Status { json } => {
            let config = Config::load(&cli.config)?;
            let (rows, view) = tokio::join!(
                bazaar::status::collect(&config),
                bazaar::status::frontend_view(&config)
            );
            let (_, run_dir) = bazaar::up::dirs(&cli.config);
            let paused = bazaar::status::paused(&run_dir, &rows).await;
            if *json {
                let out = serde_json::json!({"services": rows, "paused": paused, "frontend": view});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                bazaar::status::print_table(&rows, &paused);
                if let Some(view) = &view {
                    bazaar::status::print_frontend_view(view);
                }
            }
            return Ok(());
        }
        Cmd::Health(t) => {
            let config = Config::load(&cli.config)?;
            let url = match t.service()? {
                Service::Catalog => config.catalog_url(),
                Service::Frontend => config.frontend_url(),
                Service::Order(id) => config
                    .order(id)
                    .map(|o| o.url())
                    .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?,
            };
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(1))
                .build()?;
            let answer = client.get(format!("{url}/health")).send().await;
            match answer {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => anyhow::bail!("{url}/health answered {}", r.status()),
                Err(e) => anyhow::bail!("{url}/health: {e}"),
            }
        }
        Cmd::Kill(t) => (Action::Kill, t),
        Cmd::Resume(t) => (Action::Resume, t),
        Cmd::Stop(t) => (Action::Stop, t),
        Cmd::Pause(t) => (Action::Pause, t),
        Cmd::Continue(t) => (Action::Continue, t),
    };
    let service = target.service()?;
    Config::load(&cli.config)?;
    let (_, run_dir) = bazaar::up::dirs(&cli.config);
    println!(
        "{}",
        bazaar::control::send(&run_dir, action, service).await?
    );
    Ok(())
}
