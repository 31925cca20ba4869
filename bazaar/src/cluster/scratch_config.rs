//! The config file of a throw-away cluster: free loopback ports, the shipped
//! stocks, databases under the scratch directory unless a test puts one
//! elsewhere (a small tmpfs, to fill a disk).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Service;

/// Options of a throw-away cluster on free loopback ports.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    pub cache_size: usize,
    pub health_check_interval_ms: u64,
    pub replicas: u32,
    /// Front-ends: 1 is `frontend:`, 2 and up are written as
    /// `extra_frontends:`, each on a free port.
    pub frontends: u32,
    /// Cluster token written to the config (`None`: internal endpoints open).
    pub token: Option<String>,
    /// Database directories of the catalog or of replicas, instead of
    /// `db/catalog` and `db/order-N` under the scratch directory (empty: all
    /// there). A relative path is taken from the scratch directory.
    pub db_paths: Vec<(Service, PathBuf)>,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        ScratchOptions {
            cache_size: 5,
            health_check_interval_ms: 100,
            replicas: 3,
            frontends: 1,
            token: None,
            db_paths: Vec::new(),
        }
    }
}

impl ScratchOptions {
    /// The `db_path` of `s` in the config: its override, else the default.
    fn db_path(&self, s: Service, default: &str) -> anyhow::Result<String> {
        let Some((_, path)) = self.db_paths.iter().rev().find(|(o, _)| *o == s) else {
            return Ok(default.to_string());
        };
        let path = path
            .to_str()
            .with_context(|| format!("the db path of {s} is not UTF-8: {}", path.display()))?;
        // A JSON string is a YAML string, whatever the path holds.
        Ok(serde_json::to_string(path)?)
    }
}

/// The shipped initial stocks, so a scratch cluster trades the same names.
pub const SHIPPED_STOCKS: &str = client::config::SHIPPED_STOCKS;

/// Writes `config.yaml` and `stocks.csv` into `dir` with free ports on
/// 127.0.0.1 and databases under `dir/db` (or where
/// [`ScratchOptions::db_paths`] says); returns the config path.
pub fn write_scratch_config(dir: &Path, opts: &ScratchOptions) -> anyhow::Result<PathBuf> {
    for (s, _) in &opts.db_paths {
        let known = match s {
            Service::Catalog => true,
            Service::Order(id) => (1..=opts.replicas).contains(id),
            Service::Frontend(_) => false,
        };
        if !known {
            bail!("a db path for {s}, which has no database in this cluster");
        }
    }
    if opts.frontends == 0 {
        bail!("a cluster needs at least one front-end");
    }
    let replicas = usize::try_from(opts.replicas)?;
    let ports = common::ports::free_ports(replicas + 1 + usize::try_from(opts.frontends)?)?;
    std::fs::write(dir.join("stocks.csv"), SHIPPED_STOCKS)?;
    let mut yaml = format!(
        "catalog:\n  host: 127.0.0.1\n  port: {}\n  db_path: {}\n  stocks: stocks.csv\n\
         frontend:\n  host: 127.0.0.1\n  port: {}\n  cache_size: {}\n  health_check_interval_ms: {}\norders:\n",
        ports[0],
        opts.db_path(Service::Catalog, "db/catalog")?,
        ports[1],
        opts.cache_size,
        opts.health_check_interval_ms
    );
    for (id, port) in (1..=opts.replicas).zip(&ports[2..]) {
        let db = opts.db_path(Service::Order(id), &format!("db/order-{id}"))?;
        yaml.push_str(&format!(
            "  - {{ id: {id}, host: 127.0.0.1, port: {port}, db_path: {db} }}\n"
        ));
    }
    if opts.frontends > 1 {
        yaml.push_str("extra_frontends:\n");
        for (id, port) in (2..=opts.frontends).zip(&ports[2 + replicas..]) {
            yaml.push_str(&format!(
                "  - {{ id: {id}, host: 127.0.0.1, port: {port} }}\n"
            ));
        }
    }
    if let Some(token) = &opts.token {
        yaml.push_str(&format!("token: {}\n", serde_json::to_string(token)?));
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::Config;

    #[test]
    fn a_db_path_override_lands_in_the_config_and_the_rest_stay_default() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small disk/order 2");
        let opts = ScratchOptions {
            db_paths: vec![(Service::Order(2), small.clone())],
            ..ScratchOptions::default()
        };
        let config = Config::load(&write_scratch_config(dir.path(), &opts).unwrap()).unwrap();
        assert_eq!(config.order(2).unwrap().db_path, small);
        assert_eq!(
            config.order(1).unwrap().db_path,
            dir.path().join("db/order-1")
        );
        assert_eq!(config.catalog.db_path, dir.path().join("db/catalog"));
    }

    #[test]
    fn extra_front_ends_get_ids_from_2_and_ports_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ScratchOptions {
            frontends: 3,
            ..ScratchOptions::default()
        };
        let config = Config::load(&write_scratch_config(dir.path(), &opts).unwrap()).unwrap();
        let ids: Vec<u32> = config.frontends().iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let mut ports: Vec<u16> = config.frontends().iter().map(|f| f.port).collect();
        ports.extend(config.orders.iter().map(|o| o.port));
        ports.push(config.catalog.port);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 7, "every service has a port of its own");
        let one =
            Config::load(&write_scratch_config(dir.path(), &ScratchOptions::default()).unwrap())
                .unwrap();
        assert!(one.extra_frontends.is_empty());
        let none = ScratchOptions {
            frontends: 0,
            ..ScratchOptions::default()
        };
        assert!(write_scratch_config(dir.path(), &none).is_err());
    }

    #[test]
    fn the_front_end_has_no_db_path_to_override() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ScratchOptions {
            db_paths: vec![(Service::Frontend(1), dir.path().join("x"))],
            ..ScratchOptions::default()
        };
        let e = write_scratch_config(dir.path(), &opts).unwrap_err();
        assert!(e.to_string().contains("frontend"), "{e}");
    }
}
