use std::path::PathBuf;

use bazaar::cluster::Service;
use bazaar::control::Action;
use clap::{Parser, Subcommand};
use common::config::{Config, DEFAULT_CONFIG_PATH};

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
        Cmd::Status { json } => {
            let config = Config::load(&cli.config)?;
            let rows = bazaar::status::collect(&config).await;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                bazaar::status::print_table(&rows);
            }
            return Ok(());
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
