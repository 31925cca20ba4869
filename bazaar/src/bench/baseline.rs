//! The baselines of `bazaar bench`: a bare axum server that answers a
//! lookup with the same JSON from a map in memory, the limit of this
//! machine now. It runs twice: in this process (as before), and as a child
//! process (`bazaar bench-baseline`), so that the comparison with the
//! front-end includes a process boundary the way the real path does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use common::types::{Data, Stock};
use tokio::io::{AsyncBufReadExt, BufReader};

fn app() -> axum::Router {
    let stocks: HashMap<String, Stock> = crate::verify::initial_stocks()
        .into_iter()
        .map(|(name, quantity)| {
            let stock = Stock {
                name: name.clone(),
                price: 10.0,
                quantity,
            };
            (name, stock)
        })
        .collect();
    async fn lookup(
        State(stocks): State<Arc<HashMap<String, Stock>>>,
        Path(name): Path<String>,
    ) -> Result<Json<Data<Stock>>, axum::http::StatusCode> {
        stocks
            .get(&name)
            .cloned()
            .map(|s| Json(Data::new(s)))
            .ok_or(axum::http::StatusCode::NOT_FOUND)
    }
    axum::Router::new()
        .route("/stocks/{name}", get(lookup))
        .with_state(Arc::new(stocks))
}

/// The baseline server in this process.
pub(super) async fn server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app()).await });
    Ok(addr)
}

/// `bazaar bench-baseline`: serves the baseline on a free loopback port,
/// prints `listening on <addr>` on stdout, and exits when stdin closes
/// (so it never outlives the bench that started it).
pub async fn serve_child() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    };
    axum::serve(listener, app())
        .with_graceful_shutdown(stdin_closed)
        .await?;
    Ok(())
}

/// The baseline as a child process (the `bazaar` binary beside the
/// services); it stops when the returned handle is dropped.
pub(super) async fn child() -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let exe = crate::cluster::bin_dir()?.join("bazaar");
    let mut child = tokio::process::Command::new(exe)
        .arg("bench-baseline")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `bazaar bench-baseline`")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("`bazaar bench-baseline` did not say its address within 10 s")??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("`bazaar bench-baseline` printed {line:?}"))?;
    Ok((child, addr))
}
