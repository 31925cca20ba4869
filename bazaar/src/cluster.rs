//! A local cluster of the service binaries as child processes: start,
//! wait until healthy, kill (-9), stop (SIGTERM), pause and continue, dump,
//! and, when asked, supervise (restart a service that exits with
//! `common::EXIT_RESTART`). Used by `bazaar up` and every command and test
//! that needs real processes on real sockets.
//!
//! The parts: `procs` is the process table the supervisor shares,
//! `supervise` the restart policy and its thread, `scratch_config` the
//! config file of a throw-away cluster.

mod procs;
mod scratch_config;
mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::client::ServiceClient;
use common::config::Config;
use common::types::{Health, Order, StockRow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use procs::Procs;
use supervise::Supervisor;

pub use common::ports::free_ports;
pub use scratch_config::{SHIPPED_STOCKS, ScratchOptions, write_scratch_config};
pub use supervise::{
    LastExit, RESTART_FIRST_DELAY, RESTART_MAX_DELAY, RESTART_STABLE_AFTER, SUPERVISE_EVERY,
    Supervised, next_delay,
};

/// How long a started service gets to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A service of the cluster. Front-end 1 (`frontend:` in the config) is
/// `frontend`; the others (`extra_frontends`) are `frontend-N`, as in their
/// `/health`, `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Catalog,
    Order(u32),
    Frontend(u32),
}

impl Service {
    /// Whether `h` is this service's own `/health` answer.
    pub fn answers_as(self, h: &Health) -> bool {
        match self {
            Service::Order(id) => h.service == "order" && h.id == Some(id),
            _ => h.service == self.to_string(),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Catalog => write!(f, "catalog"),
            Service::Order(id) => write!(f, "order-{id}"),
            Service::Frontend(1) => write!(f, "frontend"),
            Service::Frontend(id) => write!(f, "frontend-{id}"),
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let numbered = |prefix: &str| s.strip_prefix(prefix).and_then(|id| id.parse().ok());
        match s {
            "catalog" => Ok(Service::Catalog),
            "frontend" => Ok(Service::Frontend(1)),
            _ => numbered("order-")
                .map(Service::Order)
                .or_else(|| numbered("frontend-").map(Service::Frontend))
                .ok_or_else(|| {
                    format!("unknown service {s:?} (catalog, order-N, frontend, frontend-N)")
                }),
        }
    }
}

/// Where the service binaries are: `BAZAAR_BIN_DIR`, else beside the running
/// executable (or one level up, for test executables in `target/*/deps`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("BAZAAR_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

pub struct Cluster {
    pub config: Config,
    pub config_path: PathBuf,
    pub log_dir: PathBuf,
    bin_dir: PathBuf,
    /// The children and how to start them, shared with the supervisor.
    procs: Arc<Mutex<Procs>>,
    /// Health probes, with the cluster token.
    client: ServiceClient,
    /// The supervisor thread, while [`supervise`](Self::supervise) is on.
    supervisor: Option<Supervisor>,
}

impl Cluster {
    pub fn new(config_path: &Path, log_dir: &Path) -> anyhow::Result<Cluster> {
        let config = Config::load(config_path)?;
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let bin_dir = bin_dir()?;
        for name in ["catalog", "order", "frontend"] {
            if !bin_dir.join(name).exists() {
                bail!(
                    "the `{name}` binary is not in {} (run `cargo build --release` first, or set BAZAAR_BIN_DIR)",
                    bin_dir.display()
                );
            }
        }
        let client = ServiceClient::new(
            Duration::from_secs(2),
            common::config::cluster_token(&config).as_deref(),
        );
        let procs = Procs {
            bin_dir: bin_dir.clone(),
            config_path: config_path.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            children: BTreeMap::new(),
            env: BTreeMap::new(),
            args: BTreeMap::new(),
            watch: BTreeMap::new(),
            supervising: false,
        };
        Ok(Cluster {
            config,
            config_path: config_path.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            bin_dir,
            procs: Arc::new(Mutex::new(procs)),
            client,
            supervisor: None,
        })
    }

    /// The process table; a panic elsewhere while holding it leaves it usable.
    fn procs(&self) -> MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The catalog, every replica, then every front-end of the config.
    pub fn services(&self) -> Vec<Service> {
        let mut all = vec![Service::Catalog];
        all.extend(self.config.orders.iter().map(|o| Service::Order(o.id)));
        all.extend(self.frontends());
        all
    }

    /// Every front-end of the config, front-end 1 first.
    pub fn frontends(&self) -> Vec<Service> {
        let ids = self.config.frontends().into_iter().map(|f| f.id);
        ids.map(Service::Frontend).collect()
    }

    pub fn url(&self, s: Service) -> String {
        match s {
            Service::Catalog => Some(self.config.catalog_url()),
            Service::Frontend(id) => self.config.frontend(id).map(|f| f.url()),
            Service::Order(id) => self.config.order(id).map(|o| o.url()),
        }
        .unwrap_or_default()
    }

    pub fn log_path(&self, s: Service) -> PathBuf {
        self.log_dir.join(format!("{s}.log"))
    }

    pub fn pid(&self, s: Service) -> Option<u32> {
        self.procs().children.get(&s).map(Child::id)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Starts a service (it must not be running); its output is appended to
    /// its log file. A restart of it that was pending is dropped.
    pub fn start(&mut self, s: Service) -> anyhow::Result<u32> {
        self.procs().start(s)
    }

    /// Sets (or with `None` removes) an environment variable for the next
    /// starts of `s`.
    pub fn set_env(&mut self, s: Service, key: &str, value: Option<&str>) {
        let mut p = self.procs();
        let vars = p.env.entry(s).or_default();
        vars.retain(|(k, _)| k != key);
        if let Some(v) = value {
            vars.push((key.to_string(), v.to_string()));
        }
    }

    /// Sets the extra arguments of the next starts of `s` (empty: none).
    pub fn set_args(&mut self, s: Service, args: &[&str]) {
        self.procs()
            .args
            .insert(s, args.iter().map(ToString::to_string).collect());
    }

    /// Waits until `s` answers its health check, failing early if it exits
    /// (unless it exits to be restarted by the supervisor: then the restarted
    /// process has the rest of `timeout`).
    pub async fn wait_healthy(&mut self, s: Service, timeout: Duration) -> anyhow::Result<Health> {
        let deadline = Instant::now() + timeout;
        let base = self.url(s);
        loop {
            // Only an answer from this service counts (another process may
            // hold the port while ours fails to bind it).
            if let Ok(h) = self.client.health(&base).await
                && s.answers_as(&h)
                && self.exit_status(s)?.is_none()
            {
                return Ok(h);
            }
            let exited = self.exit_status(s)?;
            let restarting = self.procs().supervising
                && exited.is_some_and(|e| e.code() == Some(common::EXIT_RESTART));
            if let Some(status) = exited
                && !restarting
            {
                // The last lines too: a scratch cluster's directory, and
                // the log with it, is gone once the caller gives up.
                let log = self.log_path(s);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n");
                bail!(
                    "{s} exited with {status} during start-up; see {}:\n{tail}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{s} did not answer {base}/health within {timeout:?}; see {}",
                    self.log_path(s).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How the child of `s` ended; `None` while it runs or when there is none.
    fn exit_status(&self, s: Service) -> anyhow::Result<Option<ExitStatus>> {
        Ok(match self.procs().children.get_mut(&s) {
            Some(c) => c.try_wait()?,
            None => None,
        })
    }

    pub async fn start_and_wait(&mut self, s: Service) -> anyhow::Result<()> {
        self.start(s)?;
        self.wait_healthy(s, START_TIMEOUT).await?;
        Ok(())
    }

    /// Starts the catalog, every replica and every front-end, each kind
    /// healthy before the next starts.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_and_wait(Service::Catalog).await?;
        let orders: Vec<Service> = self
            .services()
            .into_iter()
            .filter(|s| matches!(s, Service::Order(_)))
            .collect();
        self.start_together(&orders).await?;
        self.start_together(&self.frontends()).await
    }

    /// Starts every one of `services`, then waits until each is healthy.
    async fn start_together(&mut self, services: &[Service]) -> anyhow::Result<()> {
        for &s in services {
            self.start(s)?;
        }
        for &s in services {
            self.wait_healthy(s, START_TIMEOUT).await?;
        }
        Ok(())
    }

    fn signal(&self, s: Service, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(s)
            .with_context(|| format!("{s} was not started here"))?;
        let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        kill(pid, sig).with_context(|| format!("cannot send {sig} to {s}"))
    }

    /// `kill -9`, and reap it. It stays down, also under supervision.
    pub fn kill(&mut self, s: Service) -> anyhow::Result<()> {
        let child = self.procs().take(s);
        if let Some(mut c) = child {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen, holding its sockets and locks.
    pub fn pause(&self, s: Service) -> anyhow::Result<()> {
        self.signal(s, Signal::SIGSTOP)
    }

    /// Is `s` frozen by SIGSTOP (state `T` in `/proc/<pid>/stat`)?
    pub fn is_paused(&self, s: Service) -> bool {
        let Some(pid) = self.pid(s) else { return false };
        common::proc_stat::read(Some(pid)).is_some_and(|s| s.state == 'T')
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self, s: Service) -> anyhow::Result<()> {
        self.signal(s, Signal::SIGCONT)
    }

    /// SIGTERM, then wait for a clean exit (killed after [`STOP_TIMEOUT`]).
    /// It stays down, also under supervision.
    pub async fn stop(&mut self, s: Service) -> anyhow::Result<()> {
        let child = self.procs().take(s);
        let Some(mut child) = child else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    tracing::warn!(service = %s, %status, "service exited uncleanly");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("{s} did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every service, front-ends first and catalog last.
    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for s in self.services().into_iter().rev() {
            if let Err(e) = self.stop(s).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Is the child process of `s` alive (started here and not exited)?
    pub fn is_running(&mut self, s: Service) -> bool {
        self.procs()
            .children
            .get_mut(&s)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What `s` says on `GET /health`; `None` when it does not answer.
    pub async fn health(&self, s: Service) -> Option<Health> {
        self.client.health(&self.url(s)).await.ok()
    }

    /// `order dump --id N` through the real binary.
    pub fn dump_orders(&self, id: u32) -> anyhow::Result<Vec<Order>> {
        self.dump_lines(&["dump", "--id", &id.to_string()], "order")
    }

    /// `catalog dump` through the real binary.
    pub fn dump_catalog(&self) -> anyhow::Result<Vec<StockRow>> {
        self.dump_lines(&["dump"], "catalog")
    }

    fn dump_lines<T: serde::de::DeserializeOwned>(
        &self,
        args: &[&str],
        bin: &str,
    ) -> anyhow::Result<Vec<T>> {
        let out = Command::new(self.bin(bin))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()?;
        if !out.status.success() {
            bail!(
                "{bin} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad dump line {l:?}")))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.end_supervision();
        for c in self.procs().children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_end_1_is_frontend_and_the_others_frontend_n() {
        for (s, name) in [
            (Service::Frontend(1), "frontend"),
            (Service::Frontend(2), "frontend-2"),
            (Service::Order(3), "order-3"),
            (Service::Catalog, "catalog"),
        ] {
            assert_eq!(s.to_string(), name);
            assert_eq!(name.parse::<Service>(), Ok(s));
        }
        assert_eq!("frontend-1".parse::<Service>(), Ok(Service::Frontend(1)));
        for bad in ["frontend-", "frontend-x", "front", "order"] {
            assert!(bad.parse::<Service>().is_err(), "{bad}");
        }
    }
}
