use std::time::Duration;

use clap::Parser;

/// mimalloc: see the workspace Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load-generating, self-verifying client of the Stock Bazaar front-end.
///
/// Runs CLIENTS concurrent sessions; each does N iterations of "look up a
/// random stock, then with probability P trade it". Every trade carries an
/// Idempotency-Key and is retried with the same key when its outcome is
/// unknown. At the end every acknowledged trade is read back and compared;
/// the exit code is 1 when any of them does not match.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Front-end host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Front-end port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Iterations per session (the seed's `--n_request` works too).
    #[arg(long = "n-request", alias = "n_request", default_value_t = 100)]
    n_request: u64,
    /// Probability in 0..=1 that an iteration trades after its lookup.
    #[arg(long, default_value_t = 0.5)]
    prob: f64,
    /// Concurrent sessions in this process.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seed of the random choices (default: a random one, printed in the
    /// summary so the run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated stock names to use (default: the shipped data/stocks.csv).
    #[arg(long, value_delimiter = ',')]
    stocks: Option<Vec<String>>,
    /// Largest quantity of one trade; each trade takes 1..=this.
    #[arg(long, default_value_t = 5)]
    max_quantity: u64,
    /// Timeout of one HTTP attempt, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// How long a request with an unknown outcome is retried, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    retry_for_ms: u64,
    /// Stop after this many seconds even if N iterations are not done.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match real_main(cli).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("client: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let host = if cli.host.contains(':') && !cli.host.starts_with('[') {
        format!("[{}]", cli.host)
    } else {
        cli.host.clone()
    };
    let mut config = client::RunConfig::new(format!("http://{host}:{}", cli.port));
    config.n_request = cli.n_request;
    config.prob = cli.prob;
    config.clients = cli.clients;
    config.seed = cli.seed.unwrap_or_else(rand::random);
    if let Some(stocks) = cli.stocks {
        config.stocks = stocks;
    }
    config.max_quantity = cli.max_quantity;
    config.attempt_timeout = Duration::from_millis(cli.timeout_ms.max(1));
    config.retry_for = Duration::from_millis(cli.retry_for_ms);
    config.progress = !cli.json;
    if let Some(secs) = cli.duration_s {
        anyhow::ensure!(
            secs.is_finite() && secs > 0.0 && secs <= 86_400.0,
            "--duration-s must be in (0, 86400], got {secs}"
        );
        config.duration = Some(Duration::from_secs_f64(secs));
    }
    let report = client::run(config).await?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(report.verified)
}
