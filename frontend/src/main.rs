use clap::Parser;
use common::config::Config;
use frontend::Cli;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    common::telemetry::init(cli.log.log_format);
    common::telemetry::exit_on_error("frontend", common::task::on_service_runtime(real_main(cli)));
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let me = config.frontend(cli.id).ok_or_else(|| {
        anyhow::anyhow!(
            "no front-end with id {} in {} (1 is `frontend:`, more are listed under `extra_frontends`)",
            cli.id,
            cli.config.display()
        )
    })?;
    let what = if cli.id == 1 {
        "frontend".to_string()
    } else {
        format!("front-end {}", cli.id)
    };
    let listener = common::http::bind(&what, &me.host, me.port).await?;
    let state = frontend::AppState::open(&config, cli.id);
    tracing::info!(id = cli.id, addr = %listener.local_addr()?, cache_size = config.frontend.cache_size, "frontend listening");
    frontend::run(listener, state, common::http::shutdown_signal()).await?;
    tracing::info!("frontend stopped");
    Ok(())
}
