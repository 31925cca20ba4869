//! The typed client of the catalog, as the leader uses it: fence an epoch
//! (`POST /fence`), apply a batch of trades (`POST /apply`), and the paged
//! record of applied orders (`GET /applied`) a new leader reconciles with.
//! The wire is described in docs/PROTOCOL.md.

use axum::http::StatusCode;
use common::client::{CallError, ServiceClient};
use common::types::{
    ApplyBatch, ApplyConflict, ApplyResult, ConflictBody, Fence, FenceResult, Health, TradeOutcome,
};

/// Why a catalog call did not give the answer the leader needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// The catalog has seen a newer leader: this one must step down.
    #[error("the catalog knows a newer epoch ({current})")]
    StaleEpoch { current: u64 },
    /// The batch does not start where the catalog expects: reconcile first.
    #[error("the catalog expects order number {next} next")]
    Sequence { next: u64 },
    /// No usable answer: for `/apply` the outcome is unknown.
    #[error("catalog call failed: {0}")]
    Failed(String),
}

/// Timeout of a call to the catalog: an apply is one transaction and one
/// flush, well under a second even on a slow disk.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Time a readiness probe gets; the catalog answers `/health` in well
/// under a millisecond.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(400);

pub struct CatalogClient {
    url: String,
    client: ServiceClient,
    /// Readiness probes: a short timeout, so a silent catalog shows quickly.
    probe: ServiceClient,
}

impl CatalogClient {
    pub fn new(url: String, token: Option<&str>) -> CatalogClient {
        CatalogClient {
            url,
            client: ServiceClient::new(CALL_TIMEOUT, token),
            probe: ServiceClient::new(PROBE_TIMEOUT, token),
        }
    }

    /// The catalog's `/health`, within the probe timeout.
    pub async fn health(&self) -> Result<Health, CallError> {
        self.probe.health(&self.url).await
    }

    /// The paged endpoint of applied orders, which a new leader pulls from.
    pub fn applied_url(&self) -> String {
        format!("{}/applied", self.url)
    }

    /// "`leader_id` leads `epoch`": the catalog refuses older leaders, and
    /// any other leader of this epoch, from now on.
    /// Returns the next order number it expects.
    pub async fn fence(&self, epoch: u64, leader_id: u32) -> Result<u64, CatalogError> {
        let fence = Fence {
            epoch,
            leader_id: Some(leader_id),
        };
        let answer: Result<FenceResult, _> = self
            .client
            .post(format!("{}/fence", self.url), &fence)
            .await;
        answer
            .map(|f| f.next)
            .map_err(|e| conflict_or_failed(e, epoch))
    }

    /// Applies `batch` (tagged with `batch_id` as its request id, so the
    /// catalog's log lines name it). One verdict per trade, in order.
    pub async fn apply(
        &self,
        batch: &ApplyBatch,
        batch_id: &str,
    ) -> Result<Vec<TradeOutcome>, CatalogError> {
        let request = self
            .client
            .http()
            .post(format!("{}/apply", self.url))
            .header(common::request_id::REQUEST_ID_HEADER, batch_id)
            .json(batch);
        let answer: ApplyResult = self
            .client
            .send(request)
            .await
            .map_err(|e| conflict_or_failed(e, batch.epoch))?;
        if answer.outcomes.len() != batch.trades.len() {
            return Err(CatalogError::Failed(format!(
                "the catalog answered {} outcomes for {} trades",
                answer.outcomes.len(),
                batch.trades.len()
            )));
        }
        Ok(answer.outcomes)
    }
}

/// A 409 carries the conflict; anything else is a failure.
fn conflict_or_failed(e: CallError, epoch: u64) -> CatalogError {
    match e {
        CallError::Status { error, body, .. } if error.status == StatusCode::CONFLICT => {
            match serde_json::from_str::<ConflictBody>(&body) {
                Ok(ConflictBody {
                    conflict: ApplyConflict::StaleEpoch { current },
                }) => CatalogError::StaleEpoch { current },
                Ok(ConflictBody {
                    conflict: ApplyConflict::Sequence { next },
                }) => CatalogError::Sequence { next },
                Err(_) => CatalogError::StaleEpoch {
                    current: epoch.saturating_add(1),
                },
            }
        }
        other => CatalogError::Failed(other.to_string()),
    }
}
