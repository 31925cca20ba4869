//! The end-of-run checks of the system's guarantees (README, "Testing"),
//! from the dumps of a healed cluster and what the clients saw: nothing
//! acknowledged lost, no duplicate or missing numbers, identical replicas,
//! no order without a request, and the catalog's conservation per stock.
//! During a run, [`SoleTrader`] judges every lookup of a stock that one
//! session trades alone: stale, or showing a quantity no set of trades
//! explains (the `lookups` module).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use client::verify::{describe, index_by_number};
use client::{AckedTrade, UnknownTrade};
use common::types::{Order, Role, StockRow, TradeKind};
use serde::Serialize;

use crate::cluster::{Cluster, Service};

mod lookups;

pub use lookups::{LookupVerdict, Mark, SoleTrader};

/// Counts of each kind of violation; all zero on a correct run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Violations {
    /// Acknowledged trades missing from the log, or different there.
    pub lost: u64,
    /// Numbers held by two orders, or acknowledged for two trades.
    pub duplicates: u64,
    /// Replicas whose dump differs from the longest one.
    pub divergent_replicas: u64,
    /// Positions in the log where the number is not the next one.
    pub gaps: u64,
    /// Orders that match no request a client sent.
    pub unmatched_orders: u64,
    /// Stocks whose quantity or volume disagrees with the order log.
    pub conservation: u64,
    /// Lookups that showed a quantity from before an acknowledged trade.
    pub stale_lookups: u64,
    /// Lookups that showed a quantity no set of acknowledged trades and
    /// trades of unknown outcome explains (phantom state).
    pub unexplained_lookups: u64,
    /// Services not back to normal (answering, ready, storage ok, caught
    /// up) within a bound of their fault being healed.
    pub unhealed_faults: u64,
}

impl Violations {
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicates
            + self.divergent_replicas
            + self.gaps
            + self.unmatched_orders
            + self.conservation
            + self.stale_lookups
            + self.unexplained_lookups
            + self.unhealed_faults
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost {}, duplicates {}, divergent replicas {}, gaps {}, unmatched orders {}, \
             conservation {}, stale lookups {}, unexplained lookups {}, unhealed faults {}",
            self.lost,
            self.duplicates,
            self.divergent_replicas,
            self.gaps,
            self.unmatched_orders,
            self.conservation,
            self.stale_lookups,
            self.unexplained_lookups,
            self.unhealed_faults
        )
    }
}

/// What the checks found, with examples of the first violations.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub orders_in_log: u64,
    pub replicas_identical: bool,
    pub violations: Violations,
    pub examples: Vec<String>,
}

/// The shipped initial quantity of every stock.
pub fn initial_stocks() -> BTreeMap<String, u64> {
    client::config::shipped_stocks()
        .into_iter()
        .map(|s| (s.name, s.quantity))
        .collect()
}

/// Waits until every replica reports the same highest order number.
pub async fn wait_converged(cluster: &Cluster, timeout: Duration) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + timeout;
    let replicas: Vec<Service> = cluster
        .services()
        .into_iter()
        .filter(|s| matches!(s, Service::Order(_)))
        .collect();
    loop {
        let mut highest = Vec::new();
        for &r in &replicas {
            highest.push(cluster.health(r).await.map(|h| (h.role, h.highest)));
        }
        let settled = highest.iter().all(|h| {
            h.as_ref()
                .is_some_and(|(role, _)| *role != Role::CatchingUp)
        });
        let first = highest.first().cloned().flatten().map(|(_, n)| n);
        if settled && highest.iter().all(|h| h.as_ref().map(|(_, n)| *n) == first) {
            return Ok(first.flatten());
        }
        if Instant::now() > deadline {
            anyhow::bail!("replicas did not converge within {timeout:?}: {highest:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dumps every database of `cluster` and checks them against the trades the
/// clients saw acknowledged and those whose outcome stayed unknown.
pub fn check(
    cluster: &Cluster,
    acked: &[AckedTrade],
    unknown: &[UnknownTrade],
) -> anyhow::Result<Verdict> {
    let mut dumps = Vec::new();
    for s in cluster.services() {
        if let Service::Order(id) = s {
            dumps.push((id, cluster.dump_orders(id)?));
        }
    }
    let catalog = cluster.dump_catalog()?;
    Ok(judge(&dumps, &catalog, acked, unknown, &initial_stocks()))
}

/// The checks themselves, on dumps already read.
pub fn judge(
    dumps: &[(u32, Vec<Order>)],
    catalog: &[StockRow],
    acked: &[AckedTrade],
    unknown: &[UnknownTrade],
    initial: &BTreeMap<String, u64>,
) -> Verdict {
    let mut v = Violations::default();
    let mut examples = Vec::new();
    let mut note = |text: String| {
        if examples.len() < 20 {
            examples.push(text);
        }
    };
    let empty = Vec::new();
    let log = dumps
        .iter()
        .map(|(_, d)| d)
        .max_by_key(|d| d.len())
        .unwrap_or(&empty);

    for (id, dump) in dumps {
        if dump != log {
            v.divergent_replicas += 1;
            note(format!(
                "order-{id} holds {} orders and differs from the longest log ({})",
                dump.len(),
                log.len()
            ));
        }
    }

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (position, order) in log.iter().enumerate() {
        if order.number != position as u64 {
            v.gaps += 1;
            if v.gaps <= 3 {
                note(format!(
                    "position {position} holds order {} (a gap or a repeat)",
                    order.number
                ));
            }
        }
        *seen.entry(order.number).or_default() += 1;
    }
    v.duplicates += seen.values().filter(|&&n| n > 1).count() as u64;

    let by_number: HashMap<u64, &Order> = log.iter().map(|o| (o.number, o)).collect();
    let (acked_numbers, twice) = index_by_number(acked);
    for (earlier, t) in twice {
        v.duplicates += 1;
        note(format!(
            "number {} acknowledged for two trades ({} and {})",
            t.number, earlier.key, t.key
        ));
    }
    for t in acked {
        match by_number.get(&t.number) {
            Some(o) if o.name == t.name && o.kind == t.kind && o.quantity == t.quantity => {}
            Some(o) => {
                v.lost += 1;
                note(format!(
                    "order {}: acknowledged {}, the log holds {}",
                    t.number,
                    describe(t.kind, t.quantity, &t.name),
                    describe(o.kind, o.quantity, &o.name)
                ));
            }
            None => {
                v.lost += 1;
                note(format!("acknowledged order {} is not in the log", t.number));
            }
        }
    }

    // Orders nobody saw acknowledged must each match a distinct request
    // whose outcome stayed unknown.
    let mut pending: HashMap<(String, TradeKind, u64), u64> = HashMap::new();
    for u in unknown {
        *pending
            .entry((u.name.clone(), u.kind, u.quantity))
            .or_default() += 1;
    }
    for o in log {
        if acked_numbers.contains_key(&o.number) {
            continue;
        }
        match pending.get_mut(&(o.name.clone(), o.kind, o.quantity)) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                v.unmatched_orders += 1;
                note(format!(
                    "order {} ({}) matches no request",
                    o.number,
                    describe(o.kind, o.quantity, &o.name)
                ));
            }
        }
    }

    let mut expected: BTreeMap<&str, (i128, u128)> = initial
        .iter()
        .map(|(name, &q)| (name.as_str(), (i128::from(q), 0)))
        .collect();
    for o in log {
        let entry = expected.entry(o.name.as_str()).or_insert((0, 0));
        match o.kind {
            TradeKind::Buy => entry.0 -= i128::from(o.quantity),
            TradeKind::Sell => entry.0 += i128::from(o.quantity),
        }
        entry.1 += u128::from(o.quantity);
    }
    let rows: HashMap<&str, &StockRow> = catalog.iter().map(|r| (r.name.as_str(), r)).collect();
    for (name, (quantity, volume)) in &expected {
        let ok = rows.get(name).is_some_and(|r| {
            i128::from(r.quantity) == *quantity && u128::from(r.volume) == *volume
        });
        if !ok {
            v.conservation += 1;
            note(format!(
                "{name}: the log implies quantity {quantity} volume {volume}, the catalog holds {:?}",
                rows.get(name).map(|r| (r.quantity, r.volume))
            ));
        }
    }

    Verdict {
        orders_in_log: log.len() as u64,
        replicas_identical: v.divergent_replicas == 0,
        violations: v,
        examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(number: u64, name: &str, kind: TradeKind, quantity: u64) -> Order {
        Order {
            number,
            name: name.into(),
            kind,
            quantity,
        }
    }

    fn acked(o: &Order) -> AckedTrade {
        AckedTrade {
            key: format!("k{}", o.number),
            number: o.number,
            name: o.name.clone(),
            kind: o.kind,
            quantity: o.quantity,
        }
    }

    fn setup() -> (Vec<Order>, Vec<StockRow>, BTreeMap<String, u64>) {
        let log = vec![
            order(0, "A", TradeKind::Buy, 5),
            order(1, "B", TradeKind::Sell, 2),
            order(2, "A", TradeKind::Sell, 1),
        ];
        let catalog = vec![
            StockRow {
                name: "A".into(),
                price: 1.0,
                quantity: 96,
                volume: 6,
            },
            StockRow {
                name: "B".into(),
                price: 1.0,
                quantity: 102,
                volume: 2,
            },
        ];
        let initial = [("A".to_string(), 100), ("B".to_string(), 100)].into();
        (log, catalog, initial)
    }

    #[test]
    fn a_correct_run_has_no_violations() {
        let (log, catalog, initial) = setup();
        let acks: Vec<_> = log.iter().map(acked).collect();
        let dumps = vec![(1, log.clone()), (2, log.clone()), (3, log)];
        let verdict = judge(&dumps, &catalog, &acks, &[], &initial);
        assert_eq!(verdict.violations, Violations::default(), "{verdict:?}");
        assert_eq!(verdict.orders_in_log, 3);
    }

    #[test]
    fn every_kind_of_violation_is_counted() {
        let (log, mut catalog, initial) = setup();
        let mut acks: Vec<_> = log.iter().map(acked).collect();
        // An acknowledged order the log does not have.
        acks.push(AckedTrade {
            key: "lost".into(),
            number: 7,
            name: "A".into(),
            kind: TradeKind::Buy,
            quantity: 1,
        });
        // A replica behind, and an unacknowledged order nobody asked for.
        let mut longer = log.clone();
        longer.push(order(3, "B", TradeKind::Buy, 9));
        let dumps = vec![(1, log.clone()), (2, longer.clone()), (3, longer)];
        catalog[0].quantity = 95;
        let verdict = judge(&dumps, &catalog, &acks, &[], &initial);
        let v = &verdict.violations;
        assert_eq!(v.lost, 1);
        assert_eq!(v.divergent_replicas, 1);
        assert_eq!(v.unmatched_orders, 1);
        // A is off by the quantity edit; B by the unacknowledged buy.
        assert_eq!(v.conservation, 2);
        assert_eq!((v.gaps, v.duplicates), (0, 0));
    }

    #[test]
    fn an_unknown_outcome_may_be_in_the_log_once() {
        let (mut log, mut catalog, initial) = setup();
        let acks: Vec<_> = log.iter().map(acked).collect();
        log.push(order(3, "B", TradeKind::Buy, 2));
        log.push(order(4, "B", TradeKind::Buy, 2));
        catalog[1].quantity = 98;
        catalog[1].volume = 6;
        let unknown = vec![UnknownTrade {
            key: "u".into(),
            name: "B".into(),
            kind: TradeKind::Buy,
            quantity: 2,
        }];
        let verdict = judge(&[(1, log)], &catalog, &acks, &unknown, &initial);
        assert_eq!(verdict.violations.unmatched_orders, 1, "the second copy");
        assert_eq!(verdict.violations.conservation, 0);
    }

    #[test]
    fn gaps_and_repeats_are_found() {
        let (mut log, catalog, initial) = setup();
        log[2].number = 3;
        let verdict = judge(&[(1, log)], &catalog, &[], &[], &initial);
        assert_eq!(verdict.violations.gaps, 1);
    }
}
