use std::io::Write;

use clap::Parser;
use common::config::Config;
use order::{Cli, Command};

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    common::allocator::run_with_options("order");
    let cli = Cli::parse();
    common::telemetry::init(cli.log.log_format);
    common::telemetry::exit_on_error("order", common::task::on_service_runtime(real_main(cli)));
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    if let Some(Command::Dump { id }) = cli.command {
        // `order dump --id N` and `order --id N dump` both name the replica.
        let id = match (id, cli.id) {
            (Some(a), Some(b)) if a != b => {
                anyhow::bail!("two replica ids given (--id {b} and dump --id {a}); give one")
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => anyhow::bail!("dump needs --id N (one of the ids under `orders`)"),
        };
        if cli.resume || cli.rebuild {
            anyhow::bail!("--resume and --rebuild start a replica; `order dump` only reads");
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        order::dump(&config, id, |o| {
            writeln!(
                out,
                "{}",
                serde_json::to_string(o).map_err(std::io::Error::other)?
            )
        })
        .await?;
        out.flush()?;
        return Ok(());
    }
    let id = cli.id.ok_or_else(|| {
        anyhow::anyhow!("--id is required (one of the ids under `orders` in the config)")
    })?;
    let me = config
        .order(id)
        .ok_or_else(|| anyhow::anyhow!("no replica with id {id} in {}", cli.config.display()))?;
    let listener = common::http::bind(&format!("order replica {id}"), &me.host, me.port).await?;
    if cli.rebuild
        && let Some(moved) = order::move_aside(&me.db_path)?
    {
        tracing::warn!(id, moved = %moved.display(), "database moved aside; rebuilding from the peers");
    }
    let state = order::open(&config, id)?;
    tracing::info!(id, addr = %listener.local_addr()?, highest = ?state.node.log.highest(), resume = cli.resume, "order replica starting");
    order::run(listener, state, common::http::shutdown_signal()).await?;
    tracing::info!(id, "order replica stopped; database flushed");
    Ok(())
}
