use clap::Parser;
use common::config::Config;
use frontend::Cli;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    common::telemetry::init(cli.log.log_format);
    if let Err(e) = real_main(cli).await {
        eprintln!("frontend: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let listener =
        common::http::bind("frontend", &config.frontend.host, config.frontend.port).await?;
    let state = frontend::open(&config);
    tracing::info!(addr = %listener.local_addr()?, cache_size = config.frontend.cache_size, "frontend listening");
    frontend::run(listener, state, common::http::shutdown_signal()).await?;
    tracing::info!("frontend stopped");
    Ok(())
}
