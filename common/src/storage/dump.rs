//! What `catalog dump` and `order dump` read: the database files of a
//! stopped service, or, when the running service holds their lock, the
//! service itself over HTTP (with the cluster token). One place decides
//! which, and says plainly why when neither works.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{OpenError, StoreError};
use crate::client::{CallError, ServiceClient};

/// Timeout of one request to the running service.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a dump reads from.
pub enum Source<S> {
    /// The service is stopped: its files, opened.
    Files(S),
    /// The service runs and holds the files' lock: ask it.
    Running(Running),
}

/// A running service to ask for what its locked files hold.
pub struct Running {
    client: ServiceClient,
    base_url: String,
    path: PathBuf,
    what: String,
}

impl Running {
    /// `GET {base_url}{path_and_query}`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> anyhow::Result<T> {
        let url = format!("{}{path_and_query}", self.base_url);
        self.client.get(&url).await.map_err(|e| match e {
            CallError::Status { error, .. } => anyhow::anyhow!(
                "the running {} at {url} answered {}: {}",
                self.what,
                error.status,
                error.message
            ),
            CallError::Unreachable(e) => anyhow::anyhow!(
                "the database at {} is locked by the running {}, and asking it at {url} \
                 failed: {e}",
                self.path.display(),
                self.what
            ),
            e => anyhow::anyhow!("the running {} at {url}: {e}", self.what),
        })
    }
}

/// Opens the database of `what` (`catalog`, `replica 2`) at `path` with
/// `open`; when the running service holds its lock, returns how to ask it
/// at `base_url` instead. Any other failure to open goes through
/// `on_error` (which names the way out, e.g. `--rebuild`).
pub fn open_or_ask<S>(
    path: &Path,
    what: &str,
    base_url: &str,
    token: Option<&str>,
    open: impl FnOnce(&Path) -> Result<S, StoreError>,
    on_error: impl FnOnce(StoreError) -> anyhow::Error,
) -> anyhow::Result<Source<S>> {
    if !path.exists() {
        anyhow::bail!("no {what} database at {}", path.display());
    }
    match open(path) {
        Ok(store) => Ok(Source::Files(store)),
        Err(StoreError::Open(OpenError::Locked { .. })) => Ok(Source::Running(Running {
            client: ServiceClient::new(ASK_TIMEOUT, token),
            base_url: base_url.to_string(),
            path: path.to_path_buf(),
            what: what.to_string(),
        })),
        Err(e) => Err(on_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_locked_and_broken_databases() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let open = |_: &Path| -> Result<(), StoreError> { Ok(()) };
        let err = open_or_ask(&missing, "catalog", "", None, open, Into::into)
            .err()
            .unwrap();
        assert!(err.to_string().contains("no catalog database"), "{err}");
        let locked = |p: &Path| -> Result<(), StoreError> {
            Err(OpenError::Locked {
                path: p.display().to_string(),
                who: "the catalog",
            }
            .into())
        };
        // Port 9 (discard) on localhost: nothing answers.
        let Source::Running(running) = open_or_ask(
            dir.path(),
            "catalog",
            "http://127.0.0.1:9",
            None,
            locked,
            Into::into,
        )
        .unwrap() else {
            panic!("a locked database is asked for")
        };
        let err = running.get::<Vec<u64>>("/dump").await.unwrap_err();
        assert!(
            err.to_string().contains("is locked by the running catalog"),
            "{err}"
        );
        let broken = |_: &Path| -> Result<(), StoreError> { Err(StoreError::Engine("x".into())) };
        let err = open_or_ask(dir.path(), "catalog", "", None, broken, |e| {
            anyhow::anyhow!("{e}; try --rebuild")
        })
        .err()
        .unwrap();
        assert!(err.to_string().ends_with("try --rebuild"), "{err}");
        assert!(matches!(
            open_or_ask(dir.path(), "catalog", "", None, open, Into::into).unwrap(),
            Source::Files(())
        ));
    }
}
