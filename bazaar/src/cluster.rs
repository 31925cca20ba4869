//! A local cluster of the service binaries as child processes: start,
//! wait until healthy, kill (-9), stop (SIGTERM), pause and continue, dump.
//! Used by `bazaar up` and every command and test that needs real
//! processes on real sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::config::Config;
use common::types::{Health, Order, StockRow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a started service gets to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Catalog,
    Order(u32),
    Frontend,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Catalog => write!(f, "catalog"),
            Service::Order(id) => write!(f, "order-{id}"),
            Service::Frontend => write!(f, "frontend"),
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "catalog" => Ok(Service::Catalog),
            "frontend" => Ok(Service::Frontend),
            other => other
                .strip_prefix("order-")
                .and_then(|id| id.parse().ok())
                .map(Service::Order)
                .ok_or_else(|| format!("unknown service {other:?} (catalog, frontend, order-N)")),
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
    children: BTreeMap<Service, Child>,
    http: reqwest::Client,
    /// Extra environment of a service's next start (fault points in tests).
    env: BTreeMap<Service, Vec<(String, String)>>,
    /// Extra arguments of a service's next start.
    args: BTreeMap<Service, Vec<String>>,
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
        let http = common::http::internal_client(
            Duration::from_secs(2),
            common::config::cluster_token(&config).as_deref(),
        );
        Ok(Cluster {
            config,
            config_path: config_path.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            bin_dir,
            children: BTreeMap::new(),
            http,
            env: BTreeMap::new(),
            args: BTreeMap::new(),
        })
    }

    pub fn services(&self) -> Vec<Service> {
        let mut all = vec![Service::Catalog];
        all.extend(self.config.orders.iter().map(|o| Service::Order(o.id)));
        all.push(Service::Frontend);
        all
    }

    pub fn url(&self, s: Service) -> String {
        match s {
            Service::Catalog => self.config.catalog_url(),
            Service::Frontend => self.config.frontend_url(),
            Service::Order(id) => self.config.order(id).map(|o| o.url()).unwrap_or_default(),
        }
    }

    pub fn log_path(&self, s: Service) -> PathBuf {
        self.log_dir.join(format!("{s}.log"))
    }

    pub fn pid(&self, s: Service) -> Option<u32> {
        self.children.get(&s).map(Child::id)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Starts a service (it must not be running); its output is appended to
    /// its log file.
    pub fn start(&mut self, s: Service) -> anyhow::Result<u32> {
        if let Some(c) = self.children.get_mut(&s)
            && c.try_wait()?.is_none()
        {
            bail!("{s} is already running (pid {})", c.id());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(s))?;
        let mut cmd = match s {
            Service::Catalog => Command::new(self.bin("catalog")),
            Service::Frontend => Command::new(self.bin("frontend")),
            Service::Order(id) => {
                let mut c = Command::new(self.bin("order"));
                c.args(["--id", &id.to_string(), "--resume"]);
                c
            }
        };
        cmd.arg("--config").arg(&self.config_path);
        for (key, value) in self.env.get(&s).into_iter().flatten() {
            cmd.env(key, value);
        }
        cmd.args(self.args.get(&s).into_iter().flatten());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("cannot start {s}"))?;
        let pid = child.id();
        self.children.insert(s, child);
        Ok(pid)
    }

    /// Sets (or with `None` removes) an environment variable for the next
    /// starts of `s`.
    pub fn set_env(&mut self, s: Service, key: &str, value: Option<&str>) {
        let vars = self.env.entry(s).or_default();
        vars.retain(|(k, _)| k != key);
        if let Some(v) = value {
            vars.push((key.to_string(), v.to_string()));
        }
    }

    /// Sets the extra arguments of the next starts of `s` (empty: none).
    pub fn set_args(&mut self, s: Service, args: &[&str]) {
        self.args
            .insert(s, args.iter().map(ToString::to_string).collect());
    }

    /// Waits until `s` answers its health check, failing early if it exits.
    pub async fn wait_healthy(&mut self, s: Service, timeout: Duration) -> anyhow::Result<Health> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.url(s));
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
                && let Ok(h) = r.json::<Health>().await
            {
                return Ok(h);
            }
            if let Some(c) = self.children.get_mut(&s)
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "{s} exited with {status} during start-up; see {}",
                    self.log_path(s).display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{s} did not answer {url} within {timeout:?}; see {}",
                    self.log_path(s).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn start_and_wait(&mut self, s: Service) -> anyhow::Result<()> {
        self.start(s)?;
        self.wait_healthy(s, START_TIMEOUT).await?;
        Ok(())
    }

    /// Starts the catalog, every replica and the front-end, each healthy
    /// before the next kind starts.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_and_wait(Service::Catalog).await?;
        let orders: Vec<Service> = self
            .services()
            .into_iter()
            .filter(|s| matches!(s, Service::Order(_)))
            .collect();
        for &o in &orders {
            self.start(o)?;
        }
        for &o in &orders {
            self.wait_healthy(o, START_TIMEOUT).await?;
        }
        self.start_and_wait(Service::Frontend).await
    }

    fn signal(&self, s: Service, sig: Signal) -> anyhow::Result<()> {
        let child = self
            .children
            .get(&s)
            .with_context(|| format!("{s} was not started here"))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        kill(pid, sig).with_context(|| format!("cannot send {sig} to {s}"))
    }

    /// `kill -9`, and reap it.
    pub fn kill(&mut self, s: Service) -> anyhow::Result<()> {
        if let Some(mut c) = self.children.remove(&s) {
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
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(|state| state == "T")
            })
            .unwrap_or(false)
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self, s: Service) -> anyhow::Result<()> {
        self.signal(s, Signal::SIGCONT)
    }

    /// SIGTERM, then wait for a clean exit (killed after [`STOP_TIMEOUT`]).
    pub async fn stop(&mut self, s: Service) -> anyhow::Result<()> {
        let Some(mut child) = self.children.remove(&s) else {
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

    /// Stops every service, front-end first and catalog last.
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
        self.children
            .get_mut(&s)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub async fn health(&self, s: Service) -> Option<Health> {
        let r = self
            .http
            .get(format!("{}/health", self.url(s)))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
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
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Options of a throw-away cluster on free loopback ports.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    pub cache_size: usize,
    pub health_check_interval_ms: u64,
    pub replicas: u32,
    /// Cluster token written to the config (`None`: internal endpoints open).
    pub token: Option<String>,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        ScratchOptions {
            cache_size: 5,
            health_check_interval_ms: 100,
            replicas: 3,
            token: None,
        }
    }
}

/// The shipped initial stocks, so a scratch cluster trades the same names.
pub const SHIPPED_STOCKS: &str = include_str!("../../data/stocks.csv");

/// Writes `config.yaml` and `stocks.csv` into `dir` with free ports on
/// 127.0.0.1 and databases under `dir/db`; returns the config path.
pub fn write_scratch_config(dir: &Path, opts: &ScratchOptions) -> anyhow::Result<PathBuf> {
    let count = usize::try_from(opts.replicas)? + 2;
    let ports = free_ports(count)?;
    std::fs::write(dir.join("stocks.csv"), SHIPPED_STOCKS)?;
    let mut yaml = format!(
        "catalog:\n  host: 127.0.0.1\n  port: {}\n  db_path: db/catalog\n  stocks: stocks.csv\n\
         frontend:\n  host: 127.0.0.1\n  port: {}\n  cache_size: {}\n  health_check_interval_ms: {}\norders:\n",
        ports[0], ports[1], opts.cache_size, opts.health_check_interval_ms
    );
    for (i, port) in ports[2..].iter().enumerate() {
        let id = i + 1;
        yaml.push_str(&format!(
            "  - {{ id: {id}, host: 127.0.0.1, port: {port}, db_path: db/order-{id} }}\n"
        ));
    }
    if let Some(token) = &opts.token {
        yaml.push_str(&format!("token: {}\n", serde_json::to_string(token)?));
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Ports the kernel hands out for port 0, all held at once so they differ.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}
