//! The control socket of a running `bazaar up`: `bazaar kill` and
//! `bazaar resume` from another terminal ask the process that owns the
//! children, so it can restart and stop them. One line in, one line out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Service;

/// Longest command line accepted on the socket.
const MAX_LINE: usize = 256;
/// Time a control client waits for the answer (a restart waits for health).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `kill -9`.
    Kill,
    /// SIGTERM and wait.
    Stop,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Continue,
    /// Start again (replicas with `--resume`) and wait until healthy.
    Resume,
    /// Report `running`, `paused`, `exited` or `restarting`.
    State,
    /// Report what the supervisor saw and did, as one line of JSON
    /// ([`Supervised`](crate::cluster::Supervised), for `bazaar status`).
    Supervision,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Pause => "pause",
            Action::Continue => "continue",
            Action::Resume => "resume",
            Action::State => "state",
            Action::Supervision => "supervision",
        }
    }
    fn parse(w: &str) -> Option<Action> {
        [
            Action::Kill,
            Action::Stop,
            Action::Pause,
            Action::Continue,
            Action::Resume,
            Action::State,
            Action::Supervision,
        ]
        .into_iter()
        .find(|a| a.word() == w)
    }
}

pub struct Request {
    pub action: Action,
    pub service: Service,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The socket of the cluster whose run directory is `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("bazaar.sock")
}

/// Listens on the socket and hands each request to the owner of the cluster.
pub fn listen(path: &Path, tx: mpsc::Sender<Request>) -> anyhow::Result<()> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another `bazaar up` is running for this config (its socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, tx).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
        }
    });
    Ok(())
}

async fn serve_one(stream: UnixStream, tx: mpsc::Sender<Request>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE as u64))
        .read_line(&mut line)
        .await?;
    let answer = match parse(line.trim()) {
        Err(e) => Err(e),
        Ok((action, service)) => {
            let (reply, rx) = oneshot::channel();
            tx.send(Request {
                action,
                service,
                reply,
            })
            .await
            .context("the cluster is shutting down")?;
            rx.await
                .unwrap_or_else(|_| Err("the cluster is shutting down".into()))
        }
    };
    let out = match answer {
        Ok(msg) => format!("ok {msg}\n"),
        Err(msg) => format!("error {msg}\n"),
    };
    write.write_all(out.as_bytes()).await?;
    Ok(())
}

fn parse(line: &str) -> Result<(Action, Service), String> {
    let mut words = line.split_whitespace();
    let action = words
        .next()
        .and_then(Action::parse)
        .ok_or_else(|| format!("unknown command {line:?}"))?;
    let service = words.next().ok_or("missing service")?.parse()?;
    Ok((action, service))
}

/// Sends one command to the running `bazaar up` and returns its answer.
pub async fn send(run_dir: &Path, action: Action, service: Service) -> anyhow::Result<String> {
    let path = socket_path(run_dir);
    let stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no `bazaar up` is running for this config (cannot connect to {})",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{} {service}\n", action.word()).as_bytes())
        .await?;
    let mut line = String::new();
    tokio::time::timeout(ANSWER_TIMEOUT, BufReader::new(read).read_line(&mut line))
        .await
        .context("`bazaar up` did not answer in time")??;
    match line.trim().split_once(' ') {
        Some(("ok", msg)) => Ok(msg.to_string()),
        Some(("error", msg)) => bail!("{msg}"),
        _ => bail!("unexpected answer {line:?}"),
    }
}

use tokio::io::AsyncReadExt as _;
