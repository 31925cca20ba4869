//! Messages between the front-end and the order replicas, and between the
//! replicas: trades with their keys, the one answer a trade gets, the
//! stored order record, leader notices, propagation and catch-up.

use serde::{Deserialize, Serialize};

use super::{MAX_IDEMPOTENCY_KEY_LEN, Order, Role, TradeKind, TradeReceipt};

/// Longest key inside the cluster: the front-end prefixes a caller's key
/// (`c:`) or makes its own (`g:` and 32 hex digits).
pub const MAX_INTERNAL_KEY_LEN: usize = MAX_IDEMPOTENCY_KEY_LEN + 2;

/// Prefix of a caller's `Idempotency-Key` inside the cluster.
pub const CALLER_KEY_PREFIX: &str = "c:";
/// Prefix of a key the front-end made up for a trade that came without one.
pub const GENERATED_KEY_PREFIX: &str = "g:";

impl TradeCommand {
    /// Whether `other` asks for the same trade (its key aside).
    pub fn same_trade(&self, other: &TradeCommand) -> bool {
        self.name == other.name && self.kind == other.kind && self.quantity == other.quantity
    }

    /// The answer to a trade whose key already names `earlier`, a different
    /// trade: 422, naming the key as the caller sent it.
    pub fn key_reused(&self, earlier: &str) -> TradeAnswer {
        let shown = self
            .key
            .strip_prefix(CALLER_KEY_PREFIX)
            .unwrap_or(&self.key);
        TradeAnswer::Refused {
            code: 422,
            message: format!(
                "Idempotency-Key {shown:?} already names another trade ({earlier}); \
                 this {} {} {} was not made",
                self.name,
                self.kind.as_str(),
                self.quantity
            ),
        }
    }
}

/// One trade on its way from the front-end to the leader and the catalog.
/// The key is always present internally: the front-end makes one up when
/// the caller sent none, so its own retries are safe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TradeCommand {
    pub name: String,
    pub kind: TradeKind,
    pub quantity: u64,
    pub key: String,
}

/// `POST /orders/batch` on the leader: trades the front-end relays in one
/// request (every one with its key, so the whole batch can be resent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TradeBatch {
    pub trades: Vec<TradeCommand>,
    /// The front-end's request id of each trade (same order), so the
    /// leader's log lines of a trade carry the id the caller saw.
    #[serde(default)]
    pub request_ids: Vec<String>,
}

/// Most trades in one [`TradeBatch`].
pub const MAX_TRADE_BATCH: usize = 256;

/// The leader's answer to a [`TradeBatch`]: one outcome per trade, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TradeBatchResult {
    pub outcomes: Vec<TradeAnswer>,
}

/// What became of one trade. The leader's sequencer decides it, the batch
/// answer carries it unchanged, and the front-end turns it into the HTTP
/// answer in one place ([`TradeAnswer::into_http`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum TradeAnswer {
    /// Stored on the catalog and every live replica under this number.
    Committed { transaction_number: u64 },
    /// Refused for good (4xx: unknown stock, not enough shares, bad field).
    Refused { code: u16, message: String },
    /// Not finished (leadership changed, catalog unreachable, queue full):
    /// the outcome may be unknown, so resend with the same key. `role` is
    /// what the replica was when it gave up: `follower` (select a leader
    /// again), `catching-up` or `leader` (ask the same replica again).
    Retry {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
}

impl TradeAnswer {
    pub fn retry(role: Role, message: impl Into<String>) -> TradeAnswer {
        TradeAnswer::Retry {
            message: message.into(),
            role: Some(role),
        }
    }

    /// The answer to the caller: a receipt, the refusal with its status, or
    /// 503 for a trade that could not be finished.
    pub fn into_http(self) -> Result<TradeReceipt, crate::ApiError> {
        use axum::http::StatusCode;
        match self {
            TradeAnswer::Committed { transaction_number } => {
                Ok(TradeReceipt { transaction_number })
            }
            TradeAnswer::Refused { code, message } => {
                let status = StatusCode::from_u16(code)
                    .ok()
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::CONFLICT);
                Err(crate::ApiError::new(status, message))
            }
            TradeAnswer::Retry { message, .. } => Err(crate::ApiError::unavailable(message)),
        }
    }
}

/// An order as it is stored and replicated: the public fields plus the
/// idempotency key that created it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderRecord {
    pub number: u64,
    pub name: String,
    pub kind: TradeKind,
    pub quantity: u64,
    pub key: String,
}

impl OrderRecord {
    pub fn to_order(&self) -> Order {
        Order {
            number: self.number,
            name: self.name.clone(),
            kind: self.kind,
            quantity: self.quantity,
        }
    }
}

/// Front-end → every replica after a leader selection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderNotice {
    pub epoch: u64,
    pub leader_id: u32,
}

/// Answer of a replica's `GET /synchronize`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncInfo {
    pub highest: Option<u64>,
    pub epoch: u64,
}

/// Leader → followers: orders to append, in number order, contiguous.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Propagate {
    pub epoch: u64,
    pub leader_id: u32,
    pub orders: Vec<OrderRecord>,
    /// The leader's next order number after these orders: a follower that
    /// is still behind it pulls the rest from the leader. An empty
    /// propagation is the leader's heartbeat.
    pub next: u64,
}

/// Query of the paged log endpoints (`/log` on replicas, `/applied` on the catalog).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RangeQuery {
    pub from: u64,
    pub limit: u32,
}
