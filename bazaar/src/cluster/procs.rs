//! The table of a cluster's child processes and how each is started, shared
//! by the [`Cluster`](super::Cluster) and its supervisor thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::Service;
use super::supervise::Watch;

/// The child processes and what their next starts need.
pub(super) struct Procs {
    pub(super) bin_dir: PathBuf,
    pub(super) config_path: PathBuf,
    pub(super) log_dir: PathBuf,
    pub(super) children: BTreeMap<Service, Child>,
    /// Extra environment of a service's next start (fault points in tests).
    pub(super) env: BTreeMap<Service, Vec<(String, String)>>,
    /// Extra arguments of a service's next start.
    pub(super) args: BTreeMap<Service, Vec<String>>,
    /// What the supervisor knows of each service.
    pub(super) watch: BTreeMap<Service, Watch>,
    /// Whether exits with `EXIT_RESTART` are restarted.
    pub(super) supervising: bool,
}

impl Procs {
    pub(super) fn log_path(&self, s: Service) -> PathBuf {
        self.log_dir.join(format!("{s}.log"))
    }

    /// Starts `s` (it must not be running), its output appended to its log.
    pub(super) fn start(&mut self, s: Service) -> anyhow::Result<u32> {
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
            Service::Catalog => Command::new(self.bin_dir.join("catalog")),
            Service::Frontend(id) => {
                let mut c = Command::new(self.bin_dir.join("frontend"));
                c.args(["--id", &id.to_string()]);
                c
            }
            Service::Order(id) => {
                let mut c = Command::new(self.bin_dir.join("order"));
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
        self.watch.entry(s).or_default().started(Instant::now());
        Ok(pid)
    }

    /// Takes `s` out of the table for its owner to kill or stop: no restart
    /// of it is pending any more.
    pub(super) fn take(&mut self, s: Service) -> Option<Child> {
        if let Some(w) = self.watch.get_mut(&s) {
            w.cancel();
        }
        self.children.remove(&s)
    }
}
