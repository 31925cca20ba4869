//! The public REST bodies (README "REST API", docs/PROTOCOL.md): stocks,
//! trades, orders, the `{"data": ...}` envelope, and the checks every
//! service applies to names, quantities and idempotency keys.

use serde::{Deserialize, Serialize};

/// Largest quantity a single trade may carry.
pub const MAX_TRADE_QUANTITY: u64 = 1_000_000;
/// Longest stock name any service accepts; longer names are a caller error.
pub const MAX_STOCK_NAME_LEN: usize = 64;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Header carrying the idempotency key of a trade.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

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
