//! Tracing setup shared by every binary: `RUST_LOG` filter (default `info`),
//! human or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Logging flags every service binary accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A failed write to a closed pipe (`dump | head`) is not an error for a
/// command that prints lines: the reader has all it wanted.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// How every binary ends: on an error, one line `<binary>: <error with its
/// causes>` on stderr and exit status 1 (a broken pipe to a reader that has
/// all it wanted is not an error).
pub fn exit_on_error(binary: &str, result: anyhow::Result<()>) {
    if let Err(e) = result
        && !is_broken_pipe(&e)
    {
        eprintln!("{binary}: {e:#}");
        std::process::exit(1);
    }
}
