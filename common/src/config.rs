//! `config.yaml` (README "Configuration"): loading, `BAZAAR_<SECTION>__<KEY>`
//! environment overrides, path resolution and validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

/// Default `--config`: `config.yaml` in the working directory (the repo root).
pub const DEFAULT_CONFIG_PATH: &str = "config.yaml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "BAZAAR_";
/// The cluster token from the environment; it beats the config's `token`.
pub const TOKEN_ENV: &str = "BAZAAR_TOKEN";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub catalog: CatalogConfig,
    pub frontend: FrontendConfig,
    pub orders: Vec<OrderConfig>,
    /// More front-ends serving the same cluster (ids from 2; front-end 1 is
    /// `frontend:`, whose `cache_size` and `health_check_interval_ms` every
    /// front-end shares).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_frontends: Vec<FrontendAddr>,
    /// Shared secret for internal endpoints; `None` leaves them open (loopback only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Directory of the config file (not a key of the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The cluster token in force, resolved once when the config is loaded
    /// (see [`Config::token`]); not a key of the file.
    #[serde(skip)]
    resolved_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub host: String,
    pub port: u16,
    pub db_path: PathBuf,
    pub stocks: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    pub host: String,
    pub port: u16,
    pub cache_size: usize,
    pub health_check_interval_ms: u64,
}

/// Where one front-end listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FrontendAddr {
    pub id: u32,
    pub host: String,
    pub port: u16,
}

impl FrontendAddr {
    pub fn url(&self) -> String {
        base_url(&self.host, self.port)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrderConfig {
    pub id: u32,
    pub host: String,
    pub port: u16,
    pub db_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Largest accepted `cache_size`; the cache holds whole stock entries.
const MAX_CACHE_SIZE: usize = 1_000_000;
/// Health checks faster than this would flood the replicas; slower than the
/// upper bound would leave a dead leader unnoticed for too long.
const HEALTH_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=60_000;
/// Replica ids are small positive numbers.
const MAX_REPLICAS: usize = 16;
/// Every front-end is told of every trade's invalidation before the trade
/// is acknowledged, so their number bounds that fan-out.
const MAX_FRONTENDS: usize = 16;

impl Config {
    /// Reads, overrides from the process environment, resolves and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut config = Self::from_yaml(&text, path, std::env::vars())?;
        if config.resolved_token.is_none() {
            // The token `bazaar up` generated for this config's cluster, so
            // dumps and control commands from another terminal reach it.
            config.resolved_token = std::fs::read_to_string(token_file(&config))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
        }
        Ok(config)
    }

    /// The cluster token every internal request carries: `BAZAAR_TOKEN`,
    /// else the config's `token`, else (for [`Config::load`]) the token
    /// `bazaar up` generated for this config. `None` leaves the internal
    /// endpoints open.
    pub fn token(&self) -> Option<&str> {
        self.resolved_token.as_deref()
    }

    /// Parses `text` as if read from `path`, applying overrides from `env`.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut env_token = None;
        let mut overrides: Vec<(String, String)> = Vec::new();
        for (k, v) in env {
            if k == TOKEN_ENV {
                env_token = Some(v).filter(|t| !t.is_empty());
            } else if k.starts_with(ENV_PREFIX) && k.contains("__") {
                overrides.push((k, v));
            }
        }
        overrides.sort();
        for (key, raw) in overrides {
            apply_override(&mut value, &key, &raw).map_err(invalid)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            // Name the key whose value is wrong: `frontend.port: invalid type ...`.
            let at = e.path().to_string();
            let cause = e.into_inner();
            invalid(if at == "." {
                cause.to_string()
            } else {
                format!("{at}: {cause}")
            })
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        config.base_dir = base;
        config.validate().map_err(invalid)?;
        config.resolved_token = env_token.or_else(|| config.token.clone());
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.catalog.db_path);
        resolve(&mut self.catalog.stocks);
        for o in &mut self.orders {
            resolve(&mut o.db_path);
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.orders.is_empty() {
            return Err("`orders` must list at least one replica".into());
        }
        if self.orders.len() > MAX_REPLICAS {
            return Err(format!(
                "at most {MAX_REPLICAS} order replicas are supported"
            ));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut check_addr = |what: String, host: &str, port: u16| -> Result<(), String> {
            if port == 0 {
                return Err(format!(
                    "{what}: port 0 is not allowed (peers must know the port)"
                ));
            }
            if host.trim().is_empty() {
                return Err(format!("{what}: host must not be empty"));
            }
            if !addrs.insert((host.to_string(), port)) {
                return Err(format!("{what}: {host}:{port} is used twice"));
            }
            Ok(())
        };
        check_addr("catalog".into(), &self.catalog.host, self.catalog.port)?;
        check_addr("frontend".into(), &self.frontend.host, self.frontend.port)?;
        for o in &self.orders {
            if o.id == 0 {
                return Err("order replica ids start at 1".into());
            }
            if !ids.insert(o.id) {
                return Err(format!("order replica id {} appears twice", o.id));
            }
            check_addr(format!("order replica {}", o.id), &o.host, o.port)?;
        }
        let mut frontend_ids = HashSet::from([1]);
        for f in &self.extra_frontends {
            if f.id < 2 {
                return Err(format!(
                    "extra_frontends: id {} is not allowed (front-end 1 is `frontend:`; extra ids start at 2)",
                    f.id
                ));
            }
            if !frontend_ids.insert(f.id) {
                return Err(format!("extra_frontends: id {} appears twice", f.id));
            }
            check_addr(format!("front-end {}", f.id), &f.host, f.port)?;
        }
        if self.extra_frontends.len() > MAX_FRONTENDS - 1 {
            return Err(format!("at most {MAX_FRONTENDS} front-ends are supported"));
        }
        if self.frontend.cache_size > MAX_CACHE_SIZE {
            return Err(format!(
                "frontend.cache_size must be at most {MAX_CACHE_SIZE}"
            ));
        }
        if !HEALTH_INTERVAL_RANGE_MS.contains(&self.frontend.health_check_interval_ms) {
            return Err(format!(
                "frontend.health_check_interval_ms must be in {}..={}",
                HEALTH_INTERVAL_RANGE_MS.start(),
                HEALTH_INTERVAL_RANGE_MS.end()
            ));
        }
        if let Some(t) = &self.token
            && (t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("token must be at least 16 visible ASCII characters".into());
        }
        Ok(())
    }

    pub fn order(&self, id: u32) -> Option<&OrderConfig> {
        self.orders.iter().find(|o| o.id == id)
    }

    /// `http://host:port` of the catalog.
    pub fn catalog_url(&self) -> String {
        base_url(&self.catalog.host, self.catalog.port)
    }
    /// `http://host:port` of front-end 1 (`frontend:`).
    pub fn frontend_url(&self) -> String {
        base_url(&self.frontend.host, self.frontend.port)
    }

    /// Every front-end, front-end 1 first, then the extra ones by id.
    pub fn frontends(&self) -> Vec<FrontendAddr> {
        let mut all = vec![FrontendAddr {
            id: 1,
            host: self.frontend.host.clone(),
            port: self.frontend.port,
        }];
        let mut extra = self.extra_frontends.clone();
        extra.sort_by_key(|f| f.id);
        all.extend(extra);
        all
    }

    /// Front-end `id` (1 is `frontend:`).
    pub fn frontend(&self, id: u32) -> Option<FrontendAddr> {
        self.frontends().into_iter().find(|f| f.id == id)
    }
}

impl OrderConfig {
    pub fn url(&self) -> String {
        base_url(&self.host, self.port)
    }
}

pub fn base_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// When set (e.g. `BAZAAR_BIND_HOST=0.0.0.0` in a container), the host every
/// service binds, instead of its configured host, which stays the name its
/// peers use to reach it. Not a config key: it has no `__`.
pub const BIND_HOST_ENV: &str = "BAZAAR_BIND_HOST";

/// The address to bind for `host:port`: resolves names like `localhost`, and
/// names of other hosts in a container network. `BAZAAR_BIND_HOST` replaces
/// `host` when set: a container reached by its service name binds the
/// wildcard address, so a new IP after `docker network connect` still works.
pub async fn bind_addr(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let bind_host = std::env::var(BIND_HOST_ENV)
        .ok()
        .filter(|h| !h.trim().is_empty());
    let host = bind_host.as_deref().unwrap_or(host);
    let mut addrs = tokio::net::lookup_host((host, port)).await?;
    addrs
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} resolves to no address")))
}

/// Applies `BAZAAR_SECTION__KEY=value` (or `BAZAAR_ORDERS__<ID>__KEY=value`,
/// or `BAZAAR_TOKEN__=value` is not needed: top-level scalars use `BAZAAR_TOKEN`).
fn apply_override(root: &mut Value, var: &str, raw: &str) -> Result<(), String> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let scalar: Value = match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(raw.to_string()),
    };
    let Value::Mapping(top) = root else {
        return Err("the config must be a mapping".into());
    };
    match path.as_slice() {
        [section, key] if section != "orders" && section != "extra_frontends" => {
            let sec = top
                .get_mut(section.as_str())
                .and_then(Value::as_mapping_mut)
                .ok_or_else(|| format!("{var}: there is no section `{section}`"))?;
            set_existing(sec, key, scalar, var)
        }
        [list, id, key] if list == "orders" || list == "extra_frontends" => {
            let what = if list == "orders" {
                "order replica"
            } else {
                "extra front-end"
            };
            let id: u64 = id
                .parse()
                .map_err(|_| format!("{var}: `{id}` is not an id"))?;
            let entries = top
                .get_mut(list.as_str())
                .and_then(Value::as_sequence_mut)
                .ok_or_else(|| format!("{var}: there is no `{list}` list"))?;
            let entry = entries
                .iter_mut()
                .filter_map(Value::as_mapping_mut)
                .find(|m| m.get("id").and_then(Value::as_u64) == Some(id))
                .ok_or_else(|| format!("{var}: there is no {what} with id {id}"))?;
            set_existing(entry, key, scalar, var)
        }
        _ => Err(format!(
            "{var}: overrides are BAZAAR_<SECTION>__<KEY>, BAZAAR_ORDERS__<ID>__<KEY> \
             or BAZAAR_EXTRA_FRONTENDS__<ID>__<KEY>"
        )),
    }
}

fn set_existing(map: &mut Mapping, key: &str, value: Value, var: &str) -> Result<(), String> {
    match map.get_mut(key) {
        Some(slot) if !slot.is_mapping() && !slot.is_sequence() => {
            *slot = value;
            Ok(())
        }
        Some(_) => Err(format!("{var}: `{key}` is not a scalar")),
        None => Err(format!("{var}: unknown key `{key}`")),
    }
}

/// Where `bazaar up` keeps the token it generated for a config's cluster.
pub fn token_file(config: &Config) -> PathBuf {
    config.base_dir.join("data/run/token")
}

/// The cluster token as resolved when `config` was loaded ([`Config::token`]).
pub fn cluster_token(config: &Config) -> Option<String> {
    config.token().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config.yaml");

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_yaml(text, Path::new("/repo/config.yaml"), env)
    }

    #[test]
    fn shipped_config_parses_and_resolves_paths() {
        let c = parse(SHIPPED, &[]).unwrap();
        assert_eq!(c.catalog.port, 8087);
        assert_eq!(c.frontend.cache_size, 5);
        assert_eq!(c.orders.len(), 3);
        assert_eq!(c.catalog.db_path, PathBuf::from("/repo/data/db/catalog"));
        assert_eq!(c.order(2).unwrap().port, 16007);
    }

    #[test]
    fn env_overrides_scalars() {
        let c = parse(
            SHIPPED,
            &[
                ("BAZAAR_FRONTEND__CACHE_SIZE", "0"),
                ("BAZAAR_ORDERS__3__PORT", "17000"),
            ],
        )
        .unwrap();
        assert_eq!(c.frontend.cache_size, 0);
        assert_eq!(c.order(3).unwrap().port, 17000);
    }

    #[test]
    fn extra_frontends_are_listed_checked_and_overridden() {
        let with = format!(
            "{SHIPPED}extra_frontends:\n  - {{ id: 3, host: 127.0.0.1, port: 8082 }}\n  - {{ id: 2, host: 127.0.0.1, port: 8081 }}\n"
        );
        let c = parse(&with, &[("BAZAAR_EXTRA_FRONTENDS__3__PORT", "9083")]).unwrap();
        let ids: Vec<u32> = c.frontends().iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(c.frontend(3).unwrap().port, 9083);
        assert_eq!(c.frontend(1).unwrap().port, 8080);
        assert!(parse(SHIPPED, &[]).unwrap().extra_frontends.is_empty());
        let second = "id: 2, host: 127.0.0.1, port: 8081";
        let e = parse(
            &with.replace(second, "id: 1, host: 127.0.0.1, port: 8081"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("id 1 is not allowed"), "{e}");
        let e = parse(
            &with.replace(second, "id: 3, host: 127.0.0.1, port: 8081"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("id 3 appears twice"), "{e}");
        let e = parse(
            &with.replace(second, "id: 2, host: 127.0.0.1, port: 8080"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("used twice"), "{e}");
        let e = parse(&with, &[("BAZAAR_EXTRA_FRONTENDS__9__PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no extra front-end with id 9"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse(SHIPPED, &[("BAZAAR_FRONTEND__CACHE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `cache`"), "{e}");
        let e = parse(&SHIPPED.replace("cache_size", "cache_sise"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache_sise"), "{e}");
        let e = parse(&SHIPPED.replace("id: 2", "id: 1"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("id 1 appears twice"), "{e}");
        let e = parse(&SHIPPED.replace("16008", "70000"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("70000"), "{e}");
        let e = parse(&SHIPPED.replace("16008", "abc"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("orders[2].port: invalid type"), "{e}");
        let e = parse(&SHIPPED.replace("cache_size: 5", "cache_size: -3"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("frontend.cache_size: invalid value"), "{e}");
        let e = parse("catalog: [", &[]).unwrap_err().to_string();
        assert!(e.starts_with("invalid config"), "{e}");
    }
}
