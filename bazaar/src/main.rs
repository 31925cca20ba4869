use std::path::PathBuf;

use bazaar::cluster::Service;
use bazaar::control::Action;
use clap::{Parser, Subcommand};
use common::client::{CallError, ServiceClient};
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
    /// Start the catalog, every order replica and the front-ends; Ctrl-C stops them.
    Up {
        /// Run front-ends 1..=N (default: those of the config). When the
        /// config lists others, every service runs on a derived config
        /// written to data/run/cluster.yaml beside it.
        #[arg(long)]
        frontends: Option<u32>,
    },
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
    /// Run clients on a fresh cluster while killing and freezing services,
    /// cutting links and filling disks on a random schedule; then check
    /// every guarantee. Exit code 1 on any violation (the data and history
    /// are kept).
    Chaos(ChaosArgs),
    /// Measure every request path against a bare baseline server (in this
    /// process and in its own), the floor of a trade and each service's CPU
    /// and memory, with a verdict per goal (docs/PERFORMANCE.md).
    Bench(BenchArgs),
    /// The bare baseline server `bazaar bench` starts as a child process:
    /// prints `listening on <addr>` and serves until stdin closes.
    #[command(hide = true)]
    BenchBaseline,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Connections of the multi-connection phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Front-ends of the cluster; the connections go to them round robin.
    #[arg(long, default_value_t = 1)]
    frontends: u32,
    /// Instead of the phases: fill a fresh cluster's log to N orders through
    /// the leader's batch endpoint and report, at 100k, 500k, 1M and N, each
    /// service's RSS, a follower's restart and empty catch-up, and dump times.
    #[arg(long, value_name = "N")]
    fill: Option<u64>,
    /// With --fill: batches of 256 trades in flight at once.
    #[arg(long, default_value_t = 8)]
    fill_in_flight: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(orders) = args.fill {
        anyhow::ensure!(
            (1..=100_000_000).contains(&orders),
            "--fill must be in 1..=100000000"
        );
        anyhow::ensure!(
            (1..=256).contains(&args.fill_in_flight),
            "--fill-in-flight must be in 1..=256"
        );
        let report = bazaar::bench::fill::run(&bazaar::bench::fill::FillOptions {
            orders,
            in_flight: args.fill_in_flight,
        })
        .await?;
        return bazaar::report::fill(&report, args.json);
    }
    anyhow::ensure!(
        (1..=1024).contains(&args.connections),
        "--connections must be in 1..=1024"
    );
    anyhow::ensure!(
        (1..=bazaar::up::MAX_FRONTENDS).contains(&args.frontends),
        "--frontends must be in 1..={}",
        bazaar::up::MAX_FRONTENDS
    );
    let report = bazaar::bench::run(&bazaar::bench::BenchOptions {
        duration: positive_seconds("--duration-s", args.duration_s)?,
        connections: args.connections,
        frontends: args.frontends,
    })
    .await?;
    bazaar::report::bench(&report, args.json)
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
    /// Gray faults too (the default): link cuts through fault proxies, and
    /// full disks on small tmpfs mounts where the run may mount them (root;
    /// elsewhere they are skipped with a note).
    #[arg(long, overrides_with = "no_gray")]
    gray: bool,
    /// Process faults only (kill -9, SIGSTOP), no proxies on the links.
    #[arg(long, overrides_with = "gray")]
    no_gray: bool,
    /// Front-ends of the cluster: the client sessions go to them round
    /// robin, any of them may be killed or cut off, and the checker looks
    /// its stock up through each one after every trade.
    #[arg(long, default_value_t = 1)]
    frontends: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

async fn chaos(args: &ChaosArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=256).contains(&args.clients),
        "--clients must be in 1..=256"
    );
    anyhow::ensure!(
        (1..=bazaar::up::MAX_FRONTENDS).contains(&args.frontends),
        "--frontends must be in 1..={}",
        bazaar::up::MAX_FRONTENDS
    );
    let report = bazaar::chaos::run(&bazaar::chaos::ChaosOptions {
        duration: positive_seconds("--duration-s", args.duration_s)?,
        seed: args.seed,
        clients: args.clients,
        fault_every: positive_seconds("--fault-every-s", args.fault_every_s)?,
        gray: !args.no_gray,
        frontends: args.frontends,
    })
    .await?;
    bazaar::report::chaos(&report, args.json)?;
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
        bazaar::report::failover(&report, args.json)?;
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
    bazaar::report::eval(&rows, &args.out, args.json)
}

#[derive(Debug, clap::Args)]
struct Target {
    /// catalog, order (with --id) or order-N, frontend (front-end 1, or
    /// with --id) or frontend-N.
    service: String,
    /// Replica id with `order`, front-end id with `frontend`.
    #[arg(long)]
    id: Option<u32>,
}

impl Target {
    fn service(&self) -> anyhow::Result<Service> {
        match (self.service.as_str(), self.id) {
            ("order", Some(id)) => Ok(Service::Order(id)),
            ("order", None) => anyhow::bail!("say which replica: `order --id N`"),
            ("frontend", Some(id)) => Ok(Service::Frontend(id)),
            (s, None) => s.parse().map_err(|e: String| anyhow::anyhow!(e)),
            (s, Some(_)) => anyhow::bail!("--id goes with `order` or `frontend`, not {s}"),
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
        Cmd::Up { frontends } => return bazaar::up::up(&cli.config, *frontends).await,
        Cmd::Eval(args) => return eval(args).await,
        Cmd::Chaos(args) => return chaos(args).await,
        Cmd::Bench(args) => return bench(args).await,
        Cmd::BenchBaseline => return bazaar::bench::serve_baseline().await,
        Cmd::Status { json } => {
            // Under `bazaar up --frontends N`, the config it runs on.
            let config = Config::load(&bazaar::up::cluster_config_path(&cli.config))?;
            let (rows, view) = tokio::join!(
                bazaar::status::collect(&config),
                bazaar::status::frontend_view(&config)
            );
            let (_, run_dir) = bazaar::up::dirs(&cli.config);
            let up = bazaar::status::up_view(&run_dir, &rows).await;
            return bazaar::report::status(&rows, &up, view.as_ref(), *json);
        }
        Cmd::Health(t) => {
            let config = Config::load(&bazaar::up::cluster_config_path(&cli.config))?;
            let url = match t.service()? {
                Service::Catalog => config.catalog_url(),
                Service::Frontend(id) => config
                    .frontend(id)
                    .map(|f| f.url())
                    .ok_or_else(|| anyhow::anyhow!("no front-end with id {id} in the config"))?,
                Service::Order(id) => config
                    .order(id)
                    .map(|o| o.url())
                    .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in the config"))?,
            };
            let client = ServiceClient::from_http(
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(1))
                    .build()?,
            );
            return match client.health(&url).await {
                Ok(_) => Ok(()),
                Err(CallError::Status { error, .. }) => {
                    anyhow::bail!("{url}/health answered {}", error.status)
                }
                Err(e) => anyhow::bail!("{url}/health: {e}"),
            };
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
