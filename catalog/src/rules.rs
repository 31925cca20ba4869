//! The trade rules, as a pure function: what one trade does to a stock's
//! quantity and traded volume, or why it is refused. The store's
//! write calls [`trade`] for every trade of a batch; the property
//! tests (`tests/trade_props.rs`) test it without a database.

use common::types::{TradeCommand, TradeKind, TradeOutcome};

/// The two figures of a stock a trade changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// Shares the catalog still has to sell.
    pub quantity: u64,
    /// Shares traded so far, bought and sold.
    pub volume: u64,
}

/// Why a single trade is refused. The batch goes on without it, and it
/// takes no order number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown stock {name}")]
    UnknownStock { name: String },
    /// A buy of more than is left (or one that would overflow the volume).
    #[error("not enough {name} to buy: {left} left, {asked} asked")]
    NotEnough { name: String, left: u64, asked: u64 },
    /// A sell that would overflow the quantity (or the volume).
    #[error("selling {asked} {name} would overflow the quantity")]
    Overflow { name: String, asked: u64 },
}

impl Rejection {
    /// The status the trade's outcome carries: 404 for an unknown stock,
    /// 409 for a trade the stock cannot take.
    pub fn code(&self) -> u16 {
        match self {
            Rejection::UnknownStock { .. } => 404,
            Rejection::NotEnough { .. } | Rejection::Overflow { .. } => 409,
        }
    }
}

impl From<Rejection> for TradeOutcome {
    fn from(r: Rejection) -> Self {
        TradeOutcome::Rejected {
            code: r.code(),
            message: r.to_string(),
        }
    }
}

/// Applies `t` to the stock it names (`None`: the catalog has no such
/// stock). A buy takes shares from the quantity, a sell gives them back;
/// both add to the volume. Nothing may go below zero or past `u64::MAX`.
pub fn trade(stock: Option<Holding>, t: &TradeCommand) -> Result<Holding, Rejection> {
    let Some(h) = stock else {
        return Err(Rejection::UnknownStock {
            name: t.name.clone(),
        });
    };
    let quantity = match t.kind {
        TradeKind::Buy => h.quantity.checked_sub(t.quantity),
        TradeKind::Sell => h.quantity.checked_add(t.quantity),
    };
    match (quantity, h.volume.checked_add(t.quantity)) {
        (Some(quantity), Some(volume)) => Ok(Holding { quantity, volume }),
        _ => Err(match t.kind {
            TradeKind::Buy => Rejection::NotEnough {
                name: t.name.clone(),
                left: h.quantity,
                asked: t.quantity,
            },
            TradeKind::Sell => Rejection::Overflow {
                name: t.name.clone(),
                asked: t.quantity,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: TradeKind, quantity: u64) -> TradeCommand {
        TradeCommand {
            name: "AAPL".into(),
            kind,
            quantity,
            key: "k".into(),
        }
    }

    const H: Holding = Holding {
        quantity: 10,
        volume: 5,
    };

    #[test]
    fn buys_and_sells_move_quantity_and_volume() {
        let bought = trade(Some(H), &t(TradeKind::Buy, 10)).unwrap();
        assert_eq!(
            bought,
            Holding {
                quantity: 0,
                volume: 15
            }
        );
        let sold = trade(Some(H), &t(TradeKind::Sell, 3)).unwrap();
        assert_eq!(
            sold,
            Holding {
                quantity: 13,
                volume: 8
            }
        );
    }

    #[test]
    fn rejections_keep_their_codes_and_messages() {
        let outcome = |r: Rejection| TradeOutcome::from(r);
        assert_eq!(
            outcome(trade(None, &t(TradeKind::Buy, 1)).unwrap_err()),
            TradeOutcome::Rejected {
                code: 404,
                message: "unknown stock AAPL".into()
            }
        );
        assert_eq!(
            outcome(trade(Some(H), &t(TradeKind::Buy, 11)).unwrap_err()),
            TradeOutcome::Rejected {
                code: 409,
                message: "not enough AAPL to buy: 10 left, 11 asked".into()
            }
        );
        assert_eq!(
            outcome(trade(Some(H), &t(TradeKind::Sell, u64::MAX)).unwrap_err()),
            TradeOutcome::Rejected {
                code: 409,
                message: format!("selling {} AAPL would overflow the quantity", u64::MAX)
            }
        );
    }
}
