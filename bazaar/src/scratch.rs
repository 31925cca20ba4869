//! A throw-away cluster of the real binaries in a temporary directory, the
//! ground `bazaar eval`, `bazaar bench` and `bazaar chaos` run on.

use std::path::PathBuf;

use crate::cluster::{Cluster, ScratchOptions, write_scratch_config};

/// A throw-away cluster in a temporary directory (removed on drop).
pub struct Scratch {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub async fn start(opts: &ScratchOptions) -> anyhow::Result<Scratch> {
        let dir = tempfile::Builder::new().prefix("bazaar-").tempdir()?;
        let config = write_scratch_config(dir.path(), opts)?;
        let mut cluster = Cluster::new(&config, &dir.path().join("logs"))?;
        cluster.start_all().await?;
        Ok(Scratch { cluster, dir })
    }

    /// Front-end 1's `http://host:port`.
    pub fn frontend_url(&self) -> String {
        self.cluster.config.frontend_url()
    }

    /// Every front-end's `http://host:port`, front-end 1 first.
    pub fn frontend_urls(&self) -> Vec<String> {
        let all = self.cluster.config.frontends();
        all.iter().map(common::config::FrontendAddr::url).collect()
    }

    /// Keeps the directory (data and logs) after the run; returns its path.
    pub async fn keep(mut self) -> PathBuf {
        let _ = self.cluster.stop_all().await;
        let Scratch { cluster, dir } = self;
        drop(cluster);
        dir.keep()
    }
}
