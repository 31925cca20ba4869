//! `bazaar up`: the whole cluster as child processes of this one, stopped
//! cleanly on Ctrl-C, controllable from another terminal, and supervised: a
//! service that exits with `common::EXIT_RESTART` (its storage failed) is
//! restarted with backoff; any other exit is reported and left alone.
//!
//! `bazaar up --frontends N` runs front-ends 1..=N. When the config lists
//! other front-ends than those, `bazaar up` writes the cluster's config to
//! `data/run/cluster.yaml` (the loaded config, paths made absolute, with
//! front-ends 1..=N: the configured ones kept, the missing ones on the next
//! free ports after `frontend.port`), runs every service on it (the catalog
//! and each front-end must know every front-end), and removes it when it
//! stops. Commands from another terminal (`bazaar status`, `health`) read
//! it while that `bazaar up` runs: see [`cluster_config_path`].

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::config::{Config, FrontendAddr};
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

/// The config `bazaar up --frontends N` writes in the run directory when the
/// config lists other front-ends than 1..=N.
pub fn derived_config_path(run_dir: &Path) -> PathBuf {
    run_dir.join("cluster.yaml")
}

/// The config the cluster of `config_path` runs on: the derived one while
/// the `bazaar up` that wrote it runs (its control socket answers; a file
/// left behind by a killed `bazaar up` is ignored), else `config_path`.
pub fn cluster_config_path(config_path: &Path) -> PathBuf {
    let (_, run_dir) = dirs(config_path);
    let derived = derived_config_path(&run_dir);
    let running = std::os::unix::net::UnixStream::connect(control::socket_path(&run_dir)).is_ok();
    if running && derived.exists() {
        derived
    } else {
        config_path.to_path_buf()
    }
}

/// Most front-ends `bazaar up --frontends` starts (the config's own bound).
pub const MAX_FRONTENDS: u32 = 16;

/// How often this terminal is told of exits and restarts.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Files of one `bazaar up` run, removed when it ends however it ends.
struct RunFiles(Vec<PathBuf>);

impl Drop for RunFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// `bazaar up`; `frontends`: run front-ends 1..=N instead of the config's.
pub async fn up(config_path: &Path, frontends: Option<u32>) -> anyhow::Result<()> {
    if let Some(n) = frontends
        && !(1..=MAX_FRONTENDS).contains(&n)
    {
        bail!("--frontends must be in 1..={MAX_FRONTENDS}");
    }
    let (log_dir, run_dir) = dirs(config_path);
    std::fs::create_dir_all(&run_dir)?;
    let (tx, mut rx) = mpsc::channel(16);
    let socket = control::socket_path(&run_dir);
    // First, so a second `bazaar up` of this config stops here, before it
    // touches the files of the first.
    control::listen(&socket, tx)?;
    let mut files = RunFiles(vec![socket]);
    files.0.extend(ensure_token(config_path)?);
    let derived = match frontends {
        Some(n) => write_derived(config_path, &run_dir, n)?,
        None => None,
    };
    files.0.extend(derived.clone());
    let cluster_config = derived.as_deref().unwrap_or(config_path);
    let mut cluster = Cluster::new(cluster_config, &log_dir)?;
    cluster.supervise(true)?;
    println!(
        "starting the cluster of {} (logs in {})",
        config_path.display(),
        log_dir.display()
    );
    if let Some(d) = &derived {
        println!(
            "with {} front-ends: every service runs on {} (removed on exit)",
            cluster.frontends().len(),
            d.display()
        );
    }
    // Listening for Ctrl-C from here on: one during the start stops what
    // has started.
    let mut shutdown = std::pin::pin!(common::http::shutdown_signal());
    let started = tokio::select! {
        started = cluster.start_all() => started,
        () = &mut shutdown => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = started {
        // Nothing is restarted while it stops.
        let _ = cluster.supervise(false);
        let _ = cluster.stop_all().await;
        return Err(e.context("the cluster did not start"));
    }
    print_table(&cluster);
    println!();
    let fronts: Vec<String> = cluster
        .frontends()
        .iter()
        .map(|&f| cluster.url(f))
        .collect();
    println!("Front-ends: {}", fronts.join("  "));
    println!("Try:  client --n-request 200 --prob 0.5          (from target/release)");
    println!("      bazaar status | bazaar kill order --id 3 | bazaar resume order --id 3");
    if fronts.len() > 1 {
        println!("      bazaar kill frontend --id 2 | bazaar resume frontend --id 2");
    }
    println!("Stop everything with Ctrl-C.");

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
    cluster.stop_all().await?;
    drop(files);
    println!("stopped; every database was flushed");
    Ok(())
}

/// Writes the derived config of front-ends 1..=`n` when the config lists
/// others; returns its path, `None` when the config is right as it is.
fn write_derived(config_path: &Path, run_dir: &Path, n: u32) -> anyhow::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let config = Config::load(config_path)?;
    let ids: Vec<u32> = config.frontends().iter().map(|f| f.id).collect();
    if ids == (1..=n).collect::<Vec<u32>>() {
        return Ok(None);
    }
    let mut derived = with_frontends(&config, n, port_is_free)?;
    // The services would look for the generated token beside the derived
    // config: it goes into the file (mode 0600, like the token file). A
    // token from the environment stays there.
    if !std::env::var(common::config::TOKEN_ENV).is_ok_and(|t| !t.is_empty()) {
        derived.token = config.token().map(str::to_owned);
    }
    let path = derived_config_path(run_dir);
    let text = format!(
        "# Written by `bazaar up --frontends {n}` for {}; removed when it stops.\n\
         # JSON is YAML: the config as loaded, paths absolute, front-ends 1..={n}.\n{}\n",
        config_path.display(),
        serde_json::to_string_pretty(&derived)?
    );
    // Written beside and renamed into place: `bazaar status` reads it as
    // soon as the control socket answers, and must never see it half
    // written.
    let partial = run_dir.join("cluster.yaml.partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    drop(f);
    // Checked as every service will read it.
    Config::load(&partial)
        .with_context(|| format!("the config written to {}", partial.display()))?;
    std::fs::rename(&partial, &path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    Ok(Some(path))
}

/// `config` with front-ends 1..=`n`: the configured ones among them kept,
/// each missing one on the next port after `frontend.port` that no service
/// of the config uses and `is_free` accepts.
pub fn with_frontends(
    config: &Config,
    n: u32,
    is_free: impl Fn(&str, u16) -> bool,
) -> anyhow::Result<Config> {
    let mut out = config.clone();
    out.extra_frontends.retain(|f| f.id <= n);
    let mut used: BTreeSet<u16> = config.orders.iter().map(|o| o.port).collect();
    used.insert(config.catalog.port);
    used.extend(config.frontends().iter().map(|f| f.port));
    let host = config.frontend.host.clone();
    let mut port = config.frontend.port;
    for id in 2..=n {
        if out.extra_frontends.iter().any(|f| f.id == id) {
            continue;
        }
        loop {
            port = port
                .checked_add(1)
                .context("no free port above frontend.port for another front-end")?;
            if !used.contains(&port) && is_free(&host, port) {
                break;
            }
        }
        used.insert(port);
        out.extra_frontends.push(FrontendAddr {
            id,
            host: host.clone(),
            port,
        });
    }
    out.extra_frontends.sort_by_key(|f| f.id);
    Ok(out)
}

/// Can a listener bind `host:port` now?
fn port_is_free(host: &str, port: u16) -> bool {
    std::net::TcpListener::bind((host, port)).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ScratchOptions, write_scratch_config};

    fn scratch(dir: &Path, frontends: u32) -> (PathBuf, Config) {
        let opts = ScratchOptions {
            frontends,
            ..ScratchOptions::default()
        };
        let path = write_scratch_config(dir, &opts).unwrap();
        let config = Config::load(&path).unwrap();
        (path, config)
    }

    #[test]
    fn missing_front_ends_take_the_next_free_ports_after_frontend_port() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut config) = scratch(dir.path(), 1);
        let p = config.frontend.port;
        // A replica on the next port, and the one after it taken on the host.
        config.orders[0].port = p + 1;
        let derived = with_frontends(&config, 3, |_, port| port != p + 2).unwrap();
        let ports: Vec<(u32, u16)> = derived.frontends().iter().map(|f| (f.id, f.port)).collect();
        assert_eq!(ports, [(1, p), (2, p + 3), (3, p + 4)]);
        assert_eq!(derived.orders, config.orders);
        let one = with_frontends(&derived, 1, |_, _| true).unwrap();
        assert!(one.extra_frontends.is_empty());
    }

    #[test]
    fn configured_front_ends_are_kept_and_the_derived_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (path, config) = scratch(dir.path(), 2);
        let run = dir.path().join("data/run");
        std::fs::create_dir_all(&run).unwrap();
        assert_eq!(write_derived(&path, &run, 2).unwrap(), None);
        let written = write_derived(&path, &run, 3).unwrap().unwrap();
        // Renamed into place: nothing half written is left beside it.
        let names: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("cluster.yaml")]);
        let derived = Config::load(&written).unwrap();
        assert_eq!(derived.frontend(2), config.frontend(2));
        assert_eq!(derived.frontends().len(), 3);
        assert_eq!(derived.catalog.db_path, config.catalog.db_path);
        assert_eq!(derived.orders, config.orders);
        // Nothing runs there: commands keep reading the config itself.
        assert_eq!(cluster_config_path(&path), path);
    }
}
