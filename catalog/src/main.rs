use catalog::{Cli, Command};
use clap::Parser;
use common::config::Config;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    common::allocator::run_with_options("catalog");
    let cli = Cli::parse();
    common::telemetry::init(cli.log.log_format);
    common::telemetry::exit_on_error("catalog", common::task::on_service_runtime(real_main(cli)));
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    if let Some(Command::Dump) = cli.command {
        if cli.rebuild {
            anyhow::bail!("--rebuild starts the catalog; `catalog dump` only reads");
        }
        let mut out = std::io::stdout().lock();
        for row in catalog::dump(&config).await? {
            use std::io::Write;
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
        return Ok(());
    }
    let listener = common::http::bind("catalog", &config.catalog.host, config.catalog.port).await?;
    let state = if cli.rebuild {
        catalog::rebuild_and_open(&config).await?
    } else {
        catalog::open(&config).await?
    };
    tracing::info!(addr = %listener.local_addr()?, "catalog listening");
    catalog::run(listener, state, common::http::shutdown_signal()).await?;
    tracing::info!("catalog stopped; database flushed");
    Ok(())
}
