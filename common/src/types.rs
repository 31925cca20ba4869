//! Wire types: the public REST bodies of CONTRACT.md §3 and the internal
//! messages between the front-end, the order replicas and the catalog.

use serde::{Deserialize, Serialize};

/// Largest quantity a single trade may carry (CONTRACT.md §3).
pub const MAX_TRADE_QUANTITY: u64 = 1_000_000;
/// Longest stock name any service accepts; longer names are a caller error.
pub const MAX_STOCK_NAME_LEN: usize = 64;
/// Longest `Idempotency-Key` (CONTRACT.md §3).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Header carrying the idempotency key of a trade.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Header on a replica's 503 saying why it refused: `follower` (ask the
/// leader), `catching-up` (the leader, not ready yet: retry shortly) or
/// `leader` (ready, but a dependency failed).
pub const ROLE_HEADER: &str = "x-bazaar-role";

/// `{"data": ...}`: the envelope of every successful public response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Data<T> {
    pub data: T,
}

impl<T> Data<T> {
    pub fn new(data: T) -> Self {
        Self { data }
    }
}

/// A stock as the public API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stock {
    pub name: String,
    pub price: f64,
    pub quantity: u64,
}

/// A stock with its traded volume, as `catalog dump` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StockRow {
    pub name: String,
    pub price: f64,
    pub quantity: u64,
    pub volume: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TradeKind {
    Buy,
    Sell,
}

impl TradeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeKind::Buy => "buy",
            TradeKind::Sell => "sell",
        }
    }
}

/// Body of the public `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TradeRequest {
    pub name: String,
    pub quantity: u64,
    #[serde(rename = "type")]
    pub kind: TradeKind,
}

impl TradeRequest {
    /// Checks what the type system cannot: the quantity range and the name.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_TRADE_QUANTITY).contains(&self.quantity) {
            return Err(format!(
                "quantity must be an integer in 1..={MAX_TRADE_QUANTITY}, got {}",
                self.quantity
            ));
        }
        validate_stock_name(&self.name)
    }
}

/// A stock name is 1..=64 printable ASCII characters without `/`, and not
/// `.` or `..`: every name must be usable as the path segment of
/// `GET /stocks/{name}`, and URL clients drop or resolve dot segments.
pub fn validate_stock_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("stock name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a stock name"));
    }
    if name.len() > MAX_STOCK_NAME_LEN {
        return Err(format!(
            "stock name is {} bytes long; the limit is {MAX_STOCK_NAME_LEN}",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err("stock name must be printable ASCII without '/'".into());
    }
    Ok(())
}

/// An idempotency key is 1..=128 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("Idempotency-Key must be visible ASCII".into());
    }
    Ok(())
}

/// Longest key inside the cluster: the front-end prefixes a caller's key
/// (`c:`) or makes its own (`g:` and 32 hex digits).
pub const MAX_INTERNAL_KEY_LEN: usize = MAX_IDEMPOTENCY_KEY_LEN + 2;

/// `{"transaction_number": n}`: the answer to a successful trade.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TradeReceipt {
    pub transaction_number: u64,
}

/// An order as the public API and `order dump` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub number: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: TradeKind,
    pub quantity: u64,
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
    pub outcomes: Vec<RelayedTrade>,
}

/// What became of one relayed trade.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum RelayedTrade {
    /// Stored on the catalog and every live replica under this number.
    Committed { transaction_number: u64 },
    /// Refused for good (4xx: unknown stock, not enough shares, bad field).
    Refused { code: u16, message: String },
    /// Not finished (leadership changed, catalog unreachable, queue full):
    /// the outcome may be unknown, so retry with the same key.
    Retry { message: String },
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

/// What every service answers on `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// `leader`, `follower`, `catching-up` for replicas; `up` otherwise.
    pub role: String,
    /// Highest leader epoch this process has seen.
    pub epoch: u64,
    /// Highest order number held (replicas) or applied (catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest: Option<u64>,
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

/// Leader → catalog: apply these trades in order; the successful ones take
/// the numbers `base`, `base + 1`, ... in turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyBatch {
    pub epoch: u64,
    pub base: u64,
    pub trades: Vec<TradeCommand>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_request_uses_contract_field_names() {
        let t: TradeRequest =
            serde_json::from_str(r#"{"name":"AAPL","quantity":5,"type":"buy"}"#).unwrap();
        assert_eq!(t.kind, TradeKind::Buy);
        assert!(t.validate().is_ok());
        assert!(
            serde_json::from_str::<TradeRequest>(r#"{"name":"A","quantity":1.5,"type":"buy"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TradeRequest>(r#"{"name":"A","quantity":-1,"type":"buy"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TradeRequest>(r#"{"name":"A","quantity":1,"type":"hold"}"#)
                .is_err()
        );
    }

    #[test]
    fn quantity_and_name_limits() {
        let mut t = TradeRequest {
            name: "AAPL".into(),
            quantity: 0,
            kind: TradeKind::Sell,
        };
        assert!(t.validate().is_err());
        t.quantity = MAX_TRADE_QUANTITY + 1;
        assert!(t.validate().is_err());
        t.quantity = MAX_TRADE_QUANTITY;
        assert!(t.validate().is_ok());
        assert!(validate_stock_name("").is_err());
        assert!(validate_stock_name("a/b").is_err());
        assert!(validate_stock_name("äpfel").is_err());
        assert!(validate_stock_name(&"A".repeat(65)).is_err());
        assert!(validate_stock_name("..").is_err());
        assert!(validate_stock_name(".").is_err());
        assert!(validate_stock_name("...").is_ok());
    }

    #[test]
    fn order_serializes_as_in_the_contract() {
        let o = Order {
            number: 0,
            name: "AAPL".into(),
            kind: TradeKind::Buy,
            quantity: 5,
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"number":0,"name":"AAPL","type":"buy","quantity":5}"#
        );
    }
}

/// The front-end's `GET /status`: the whole cluster as it sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub leader: Option<LeaderInfo>,
    /// Leader selections since the front-end started.
    pub selections: u64,
    /// The latest leader changes, oldest first.
    pub leader_changes: Vec<LeaderChange>,
    /// Catalog, then every replica (highest id first), then the front-end.
    pub services: Vec<ServiceStatus>,
    pub cache: CacheStatus,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: u32,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderChange {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `None` when no replica answered.
    pub id: Option<u32>,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// `catalog`, `order-N` or `frontend`.
    pub service: String,
    pub url: String,
    pub up: bool,
    /// What its `/health` said, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStatus {
    pub capacity: usize,
    /// Cached stock names, most recently used first.
    pub entries: Vec<String>,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub invalidations: u64,
}
