//! `bazaar up`: the whole cluster as child processes of this one, stopped
//! cleanly on Ctrl-C, controllable from another terminal, and supervised: a
//! service that exits with `common::EXIT_RESTART` (its storage failed) is
//! restarted with backoff; any other exit is reported and left alone.

use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cluster::{Cluster, Service};
use crate::control::{self, Action, Request};

/// Where `bazaar up` keeps logs and its control socket for a config file.
pub fn dirs(config_path: &Path) -> (PathBuf, PathBuf) {
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    (base.join("data/logs"), base.join("data/run"))
}

/// How often this terminal is told of exits and restarts.
const REPORT_EVERY: Duration = Duration::from_millis(200);

pub async fn up(config_path: &Path) -> anyhow::Result<()> {
    let (log_dir, run_dir) = dirs(config_path);
    std::fs::create_dir_all(&run_dir)?;
    let generated = ensure_token(config_path)?;
    let mut cluster = Cluster::new(config_path, &log_dir)?;
    cluster.supervise(true)?;
    let (tx, mut rx) = mpsc::channel(16);
    let socket = control::socket_path(&run_dir);
    control::listen(&socket, tx)?;
    println!(
        "starting the cluster of {} (logs in {})",
        config_path.display(),
        log_dir.display()
    );
    if let Err(e) = cluster.start_all().await {
        let _ = cluster.stop_all().await;
        let _ = std::fs::remove_file(&socket);
        if let Some(file) = &generated {
            let _ = std::fs::remove_file(file);
        }
        return Err(e.context("the cluster did not start"));
    }
    print_table(&cluster);
    println!();
    println!("Try:  client --n-request 200 --prob 0.5          (from target/release)");
    println!("      bazaar status | bazaar kill order --id 3 | bazaar resume order --id 3");
    println!("Stop everything with Ctrl-C.");

    let mut shutdown = std::pin::pin!(common::http::shutdown_signal());
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut seen = BTreeMap::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(req) = rx.recv() => handle(&mut cluster, req).await,
            _ = tick.tick() => report_changes(&cluster, &mut seen),
        }
    }
    println!("stopping the cluster ...");
    // Nothing is restarted while it stops.
    cluster.supervise(false)?;
    let result = cluster.stop_all().await;
    let _ = std::fs::remove_file(&socket);
    if let Some(file) = &generated {
        let _ = std::fs::remove_file(file);
    }
    result?;
    println!("stopped; every database was flushed");
    Ok(())
}

async fn handle(cluster: &mut Cluster, req: Request) {
    let s = req.service;
    if !cluster.services().contains(&s) {
        let _ = req.reply.send(Err(format!("this cluster has no {s}")));
        return;
    }
    let result = match req.action {
        Action::Kill => cluster.kill(s).map(|()| format!("{s} killed (SIGKILL)")),
        Action::Stop => cluster
            .stop(s)
            .await
            .map(|()| format!("{s} stopped (SIGTERM)")),
        Action::Pause => cluster.pause(s).map(|()| format!("{s} paused (SIGSTOP)")),
        Action::Continue => cluster
            .resume(s)
            .map(|()| format!("{s} continued (SIGCONT)")),
        Action::Resume => {
            if cluster.is_running(s) {
                Err(anyhow::anyhow!("{s} is running already"))
            } else {
                match cluster.start_and_wait(s).await {
                    Ok(()) => Ok(format!("{s} is back (pid {})", cluster.pid(s).unwrap_or(0))),
                    Err(e) => Err(e),
                }
            }
        }
        // Questions from `bazaar status`, not worth a line on this terminal.
        Action::State => {
            let _ = req.reply.send(Ok(cluster.supervised(s).state));
            return;
        }
        Action::Supervision => {
            let answer = serde_json::to_string(&cluster.supervised(s)).map_err(|e| e.to_string());
            let _ = req.reply.send(answer);
            return;
        }
    };
    let answer = result.map_err(|e| format!("{e:#}"));
    match &answer {
        Ok(msg) => println!("{msg}"),
        Err(msg) => println!("{} {s} failed: {msg}", req.action.word()),
    }
    let _ = req.reply.send(answer);
}

/// Prints each exit and restart the supervisor saw since the last look;
/// `seen` holds the exits and restarts already printed, per service.
fn report_changes(cluster: &Cluster, seen: &mut BTreeMap<Service, (u32, u32)>) {
    for s in cluster.services() {
        let now = cluster.supervised(s);
        let (exits, restarts) = seen.entry(s).or_default();
        if now.exits > *exits
            && let Some(exit) = &now.last_exit
        {
            println!("{}", crate::status::exit_line(&now, exit, ""));
        }
        if now.restarts > *restarts {
            let pid = now.pid.map_or("-".into(), |p| p.to_string());
            println!("{s} restarted (pid {pid}, restart #{})", now.restarts);
        }
        (*exits, *restarts) = (now.exits, now.restarts);
    }
}

fn print_table(cluster: &Cluster) {
    println!("{:<10} {:>7}  {:<24} LOG", "SERVICE", "PID", "LISTENS ON");
    for s in cluster.services() {
        println!(
            "{:<10} {:>7}  {:<24} {}",
            s.to_string(),
            cluster.pid(s).map_or("-".into(), |p| p.to_string()),
            cluster.url(s),
            cluster.log_path(s).display()
        );
    }
}

/// Internal endpoints need a shared token. When neither `BAZAAR_TOKEN` nor
/// the config sets one, `bazaar up` writes a fresh random one (mode 0600)
/// where every service of this config, and `order dump` & co. from another
/// terminal, find it. Returns the file to remove on exit.
fn ensure_token(config_path: &Path) -> anyhow::Result<Option<PathBuf>> {
    let config = common::config::Config::load(config_path)?;
    let file = common::config::token_file(&config);
    let configured =
        std::env::var("BAZAAR_TOKEN").is_ok_and(|t| !t.is_empty()) || config.token.is_some();
    if configured {
        return Ok(None);
    }
    if common::config::cluster_token(&config).is_none() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let token = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("cannot write the cluster token to {}", file.display()))?;
        f.write_all(token.as_bytes())?;
    }
    Ok(Some(file))
}
