//! The lookup checks: a session that trades one stock alone knows which
//! quantities a lookup of it may show. A lookup that misses a trade
//! acknowledged before it began is stale; one that no set of the session's
//! trades explains shows state that never was (a phantom).

use std::collections::BTreeSet;

use common::types::TradeKind;

/// How a lookup of a stock traded by one session alone compares with what
/// that session knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupVerdict {
    /// Every trade acknowledged before the lookup began, and some subset of
    /// the trades whose outcome is unknown or that were under way during
    /// the lookup, give the quantity shown.
    Explained,
    /// Not explained, but by the state before some acknowledged trade: the
    /// lookup missed an acknowledged trade.
    Stale,
    /// No set of the session's trades gives the quantity shown.
    Unexplained,
}

/// How one trade of a [`SoleTrader`] ended, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Sent, no answer yet.
    Pending,
    Acknowledged,
    /// No final answer within the retry window: it may be an order.
    Unknown,
    /// A final refusal: no order.
    Refused,
}

/// What one session that trades a stock alone, one trade at a time, knows
/// of it. A lookup must show the initial quantity, plus every trade
/// acknowledged before the lookup began, plus some subset of the trades
/// whose outcome stayed unknown and of those under way while the lookup ran
/// (either may or may not be an order, now or later).
#[derive(Debug, Clone)]
pub struct SoleTrader {
    initial: i128,
    /// Every trade sent, in order: its effect on the quantity and its end.
    trades: Vec<(i128, Status)>,
}

/// When a lookup began: the trades before this index had ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(usize);

fn effect(kind: TradeKind, quantity: u64) -> i128 {
    match kind {
        TradeKind::Buy => -i128::from(quantity),
        TradeKind::Sell => i128::from(quantity),
    }
}

/// Every sum of a subset of `effects` (the empty one included).
fn subset_sums(effects: impl IntoIterator<Item = i128>) -> BTreeSet<i128> {
    let mut sums = BTreeSet::from([0]);
    for e in effects {
        add_optional(&mut sums, e);
    }
    sums
}

/// `sums` with an optional effect `e` more.
fn add_optional(sums: &mut BTreeSet<i128>, e: i128) {
    let shifted: Vec<i128> = sums.iter().map(|s| s + e).collect();
    sums.extend(shifted);
}

impl SoleTrader {
    pub fn new(initial: u64) -> SoleTrader {
        SoleTrader {
            initial: i128::from(initial),
            trades: Vec::new(),
        }
    }

    /// A trade is sent (the previous one has ended); returns its index.
    pub fn sent(&mut self, kind: TradeKind, quantity: u64) -> usize {
        self.trades.push((effect(kind, quantity), Status::Pending));
        self.trades.len() - 1
    }

    fn ended(&mut self, trade: usize, status: Status) {
        if let Some(t) = self.trades.get_mut(trade) {
            t.1 = status;
        }
    }

    /// Trade `trade` was acknowledged.
    pub fn acknowledged(&mut self, trade: usize) {
        self.ended(trade, Status::Acknowledged);
    }

    /// Trade `trade` got no final answer: it may be an order.
    pub fn unknown(&mut self, trade: usize) {
        self.ended(trade, Status::Unknown);
    }

    /// Trade `trade` was refused for good: no order.
    pub fn refused(&mut self, trade: usize) {
        self.ended(trade, Status::Refused);
    }

    /// Now, for a lookup that begins.
    pub fn mark(&self) -> Mark {
        Mark(
            self.trades
                .iter()
                .position(|t| t.1 == Status::Pending)
                .unwrap_or(self.trades.len()),
        )
    }

    /// For a lookup begun at `mark` and judged now: the quantity every
    /// explaining set has, and the sums of the optional trades.
    fn allowed(&self, mark: Mark) -> (i128, BTreeSet<i128>) {
        let (ended, since) = self.trades.split_at(mark.0.min(self.trades.len()));
        let base = self.initial
            + ended
                .iter()
                .filter(|t| t.1 == Status::Acknowledged)
                .map(|t| t.0)
                .sum::<i128>();
        let optional = ended
            .iter()
            .filter(|t| t.1 == Status::Unknown)
            .chain(since.iter().filter(|t| t.1 != Status::Refused))
            .map(|t| t.0);
        (base, subset_sums(optional))
    }

    /// The quantity, or the range of quantities, a lookup begun at `mark`
    /// may show (every one in between when all trades are of 1).
    pub fn expected(&self, mark: Mark) -> String {
        let (base, sums) = self.allowed(mark);
        match (sums.first(), sums.last()) {
            (Some(low), Some(high)) if low != high => {
                format!("{}..={}", base + low, base + high)
            }
            _ => format!("{base}"),
        }
    }

    /// Judges a lookup that began at `mark` and showed `shown`; call it
    /// once the lookup has ended.
    pub fn judge(&self, mark: Mark, shown: u64) -> LookupVerdict {
        let shown = i128::from(shown);
        let (base, sums) = self.allowed(mark);
        if sums.contains(&(shown - base)) {
            return LookupVerdict::Explained;
        }
        // The state before each acknowledged trade the lookup had to show.
        let mut base = self.initial;
        let mut sums = BTreeSet::from([0]);
        for &(e, status) in &self.trades[..mark.0.min(self.trades.len())] {
            match status {
                Status::Acknowledged => {
                    if sums.contains(&(shown - base)) {
                        return LookupVerdict::Stale;
                    }
                    base += e;
                }
                Status::Unknown => add_optional(&mut sums, e),
                Status::Refused | Status::Pending => {}
            }
        }
        LookupVerdict::Unexplained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trader that sent `kinds` and saw each end as `ends` says.
    fn trader(initial: u64, trades: &[(TradeKind, u64, char)]) -> SoleTrader {
        let mut t = SoleTrader::new(initial);
        for &(kind, q, end) in trades {
            let i = t.sent(kind, q);
            match end {
                'a' => t.acknowledged(i),
                'u' => t.unknown(i),
                'r' => t.refused(i),
                _ => {}
            }
        }
        t
    }

    #[test]
    fn a_sole_trader_explains_acknowledged_and_unknown_trades() {
        use TradeKind::{Buy, Sell};
        let t = trader(100, &[(Sell, 1, 'a')]);
        assert_eq!(t.judge(t.mark(), 101), LookupVerdict::Explained);
        assert_eq!(
            t.judge(t.mark(), 100),
            LookupVerdict::Stale,
            "misses the sell"
        );
        assert_eq!(t.judge(t.mark(), 102), LookupVerdict::Unexplained);
        assert_eq!(t.expected(t.mark()), "101");
        // A buy of unknown outcome may or may not be in the catalog.
        let t = trader(100, &[(Sell, 1, 'a'), (Buy, 1, 'u')]);
        assert_eq!(t.expected(t.mark()), "100..=101");
        assert_eq!(t.judge(t.mark(), 101), LookupVerdict::Explained);
        assert_eq!(t.judge(t.mark(), 100), LookupVerdict::Explained);
        assert_eq!(t.judge(t.mark(), 99), LookupVerdict::Unexplained);
        let t = trader(100, &[(Sell, 1, 'a'), (Buy, 1, 'u'), (Buy, 1, 'a')]);
        assert_eq!(t.expected(t.mark()), "99..=100");
        assert_eq!(t.judge(t.mark(), 101), LookupVerdict::Stale);
        assert_eq!(t.judge(t.mark(), 102), LookupVerdict::Unexplained);
        // A refused trade is no order.
        let t = trader(100, &[(Sell, 1, 'r')]);
        assert_eq!(t.judge(t.mark(), 101), LookupVerdict::Unexplained);
    }

    #[test]
    fn subset_sums_of_mixed_quantities() {
        use TradeKind::Sell;
        assert_eq!(subset_sums([]), BTreeSet::from([0]));
        let want: BTreeSet<i128> = [0, 2, -3, 5, -1, 7, 4].into();
        assert_eq!(subset_sums([2, -3, 5]), want);
        let t = trader(10, &[(Sell, 2, 'u'), (Sell, 5, 'u')]);
        assert_eq!(
            t.judge(t.mark(), 13),
            LookupVerdict::Unexplained,
            "10 + 3 is no subset"
        );
        assert_eq!(t.judge(t.mark(), 17), LookupVerdict::Explained);
    }

    #[test]
    fn trades_under_way_during_a_lookup_may_or_may_not_show() {
        use TradeKind::{Buy, Sell};
        let mut t = trader(50, &[(Buy, 1, 'a')]);
        let pending = t.sent(Sell, 1);
        let begun = t.mark();
        assert_eq!(t.expected(begun), "49..=50");
        assert_eq!(t.judge(begun, 51), LookupVerdict::Unexplained);
        // Acknowledged while the lookup ran, and the next one sent: either
        // may show, since the lookup began before them.
        t.acknowledged(pending);
        let next = t.sent(Sell, 1);
        assert_eq!(t.judge(begun, 49), LookupVerdict::Explained);
        assert_eq!(t.judge(begun, 51), LookupVerdict::Explained);
        // A lookup begun after the acknowledgement must show it.
        t.acknowledged(next);
        assert_eq!(t.judge(t.mark(), 49), LookupVerdict::Stale);
        assert_eq!(t.judge(t.mark(), 51), LookupVerdict::Explained);
    }
}
