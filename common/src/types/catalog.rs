//! Messages between the leader and the catalog: a batch to apply and the
//! catalog's verdict on each trade, the fence a new leader sets, and the
//! conflicts that refuse a whole batch; and the catalog's invalidations to
//! the front-ends.

use serde::{Deserialize, Serialize};

use super::TradeCommand;

/// Leader → catalog: apply these trades in order; the successful ones take
/// the numbers `base`, `base + 1`, ... in turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyBatch {
    pub epoch: u64,
    pub base: u64,
    pub trades: Vec<TradeCommand>,
    /// The replica that sends it: the catalog takes batches and fences from
    /// one leader per epoch. Absent from older senders: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u32>,
}

/// The catalog's verdict on one trade of an [`ApplyBatch`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TradeOutcome {
    Applied { number: u64 },
    Rejected { code: u16, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyResult {
    pub outcomes: Vec<TradeOutcome>,
}

/// Leader → catalog before it takes trades: "I lead epoch `epoch`".
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fence {
    pub epoch: u64,
    /// The replica that leads `epoch` (see [`ApplyBatch::leader_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u32>,
}

/// The catalog's answer to a [`Fence`]: the next order number it expects.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FenceResult {
    pub next: u64,
}

/// Why the catalog refused a whole batch (HTTP 409 body `{"conflict": ...}`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApplyConflict {
    /// The sender leads an older epoch than the catalog has seen.
    StaleEpoch { current: u64 },
    /// The batch does not start at the next number the catalog expects.
    Sequence { next: u64 },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictBody {
    pub conflict: ApplyConflict,
}

/// `POST /invalidations` from the catalog to a front-end: stocks whose
/// cached quantity is out of date (none: a heartbeat), and, when the
/// catalog knows several front-ends, the terms of the cache's lease.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Invalidations {
    pub names: Vec<String>,
    /// Drop every cached stock: sent instead of the names when there are
    /// more than [`MAX_INVALIDATED_NAMES`], so a message always fits the
    /// front-end's body limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub everything: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseTerms>,
}

/// Most names one [`Invalidations`] lists: 128 names of at most 64 bytes
/// stay well inside a front-end's 16 KiB body limit.
pub const MAX_INVALIDATED_NAMES: usize = 128;

impl Invalidations {
    /// A message about `names`: the names, or `everything` when they are
    /// too many to list.
    pub fn of(names: Vec<String>, lease: Option<LeaseTerms>) -> Invalidations {
        let everything = names.len() > MAX_INVALIDATED_NAMES;
        Invalidations {
            names: if everything { Vec::new() } else { names },
            everything,
            lease,
        }
    }
}

/// The lease part of [`Invalidations`] (docs/PROTOCOL.md; the timing
/// argument is in `catalog::invalidate::lease`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaseTerms {
    /// The catalog process that sent it (a new one every start).
    pub catalog: u64,
    /// This message's number (per front-end).
    pub seq: u64,
    /// The highest earlier message whose answer the catalog has seen.
    pub confirmed: Option<u64>,
    /// The lease length in milliseconds.
    pub ms: u64,
}
