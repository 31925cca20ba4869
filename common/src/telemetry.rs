//! Tracing setup shared by every binary: `RUST_LOG` filter (default `info`),
//! human or JSON lines on stderr, and on every line written while a request
//! is served, the request: its id, method and path (`crate::request_id`).

use std::fmt::Write as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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
        LogFormat::Human => builder
            .map_event_format(|inner| WithRequest { inner, json: false })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .map_event_format(|inner| WithRequest { inner, json: true })
            .try_init(),
    };
}

/// tracing's own line format, with the request being served added the way
/// a span named `request` would show it: `INFO request{request_id=..
/// method=.. path=..}: target: message` for people, `"span"` and `"spans"`
/// members in JSON.
struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(request) = crate::request_id::current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Formatted into a string first, to add the request inside the
        // line; such a string takes no colours (tracing's `Writer` does not
        // let them be turned on), so at a terminal a request's lines are
        // plain.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let spliced = if self.json {
            splice_json(&line, &request)
        } else {
            splice_human(&line, event.metadata().level().as_str(), &request)
        };
        writer.write_str(spliced.as_deref().unwrap_or(&line))
    }
}

/// `line` with `"span":{..},"spans":[{..}]` added as its last members.
fn splice_json(line: &str, request: &crate::request_id::RequestInfo) -> Option<String> {
    let body = line.trim_end().strip_suffix('}')?;
    let span = serde_json::json!({
        "request_id": request.id(),
        "method": request.method().as_str(),
        "path": request.path(),
        "name": "request",
    });
    Some(format!("{body},\"span\":{span},\"spans\":[{span}]}}\n"))
}

/// `line` with ` request{..}:` after its level (the first word that is the
/// level's name: the timestamp before it has none).
fn splice_human(
    line: &str,
    level: &str,
    request: &crate::request_id::RequestInfo,
) -> Option<String> {
    let at = line.find(level)? + level.len();
    let mut spliced = String::with_capacity(line.len() + 96);
    spliced.push_str(&line[..at]);
    let _ = write!(
        spliced,
        " request{{request_id={} method={} path={}}}:",
        request.id(),
        request.method(),
        request.path()
    );
    spliced.push_str(&line[at..]);
    Some(spliced)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::Method;

    use super::*;

    /// Lines written to a shared buffer.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line outside a request and one inside, in `format`.
    async fn two_lines(json: bool) -> Vec<String> {
        let lines = Lines::default();
        let writer = lines.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let subscriber: Box<dyn Subscriber + Send + Sync> = if json {
            Box::new(
                builder
                    .json()
                    .map_event_format(|inner| WithRequest { inner, json })
                    .finish(),
            )
        } else {
            Box::new(
                builder
                    .map_event_format(|inner| WithRequest { inner, json })
                    .finish(),
            )
        };
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!(n = 1, "outside");
        let request = crate::request_id::test_request("id-\"7\"", Method::POST, "/orders?x");
        crate::request_id::scope(request, async {
            tracing::warn!(n = 2, "inside");
        })
        .await;
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn a_line_written_in_a_request_names_it() {
        let lines = two_lines(false).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(!lines[0].contains("request{"), "{}", lines[0]);
        assert!(
            lines[1].contains(
                " WARN request{request_id=id-\"7\" method=POST path=/orders}: \
                 common::telemetry::tests: inside n=2"
            ),
            "{}",
            lines[1]
        );
    }

    #[tokio::test]
    async fn a_json_line_written_in_a_request_carries_its_span() {
        let lines = two_lines(true).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert!(outside.get("span").is_none(), "{outside}");
        let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        let span = serde_json::json!({
            "request_id": "id-\"7\"", "method": "POST", "path": "/orders", "name": "request",
        });
        assert_eq!(inside["span"], span, "{inside}");
        assert_eq!(inside["spans"], serde_json::json!([span]), "{inside}");
        assert_eq!(inside["fields"]["message"], "inside", "{inside}");
        assert_eq!(inside["level"], "WARN", "{inside}");
    }
}
