//! The front-end's stock cache: least-recently-used, at most `cache_size`
//! entries (0 turns it off), exact across the whole cache.
//!
//! Why not quick_cache: it runs S3-FIFO (not LRU), and a sync cache this small
//! collapses to a single shard, where its 97% "hot" share leaves less than one
//! slot for new entries — not the LRU the design calls for, and its order
//! cannot be shown. The `lru` crate gives exact LRU and its order.
//!
//! Staleness: every invalidation bumps a generation counter and is
//! remembered with its name; a lookup that read the catalog inserts its
//! answer only if its stock was not invalidated since the lookup started, so
//! a trade acknowledged meanwhile can never be hidden behind an older
//! quantity. When the memory of recent invalidations does not reach back
//! far enough, the insert is skipped (safe, only a lost cache fill).
//!
//! Lease (only when the config lists several front-ends, see
//! [`StockCache::enforce_lease`]): a trade acknowledged by another
//! front-end does not pass through this one, so its cache may serve a
//! lookup only while it holds a lease the catalog renews (the catalog's
//! side and the timing argument: `catalog::invalidate::lease`). Each notice of
//! the catalog is numbered; a notice confirming an earlier one (the catalog
//! saw its answer) renews the lease to the time that earlier one arrived +
//! the lease length (less [`CLOCK_MARGIN_TENTHS`]). Without a lease the cache
//! serves and keeps nothing: every lookup goes to the catalog, and the
//! whole cache is dropped when the lease lapses, when it is renewed after a
//! lapse, and on the first notice of a new catalog process, so a front-end
//! that was cut off catches up by starting empty.

use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::types::{Data, Stock};
use common::types::{Invalidations, LeaseTerms};
use lru::LruCache;

/// A cached stock and the answer to its lookup, rendered once as it is
/// cached: a hit then costs no serialization (on a cached lookup, the JSON
/// and its buffer were 0.7 µs of the front-end's 25 µs of CPU; see
/// docs/PERFORMANCE.md).
#[derive(Debug)]
pub struct Cached {
    pub stock: Stock,
    /// `{"data": stock}` as JSON.
    pub body: Bytes,
}

impl Cached {
    fn new(stock: Stock) -> Cached {
        let data = Data::new(&stock);
        let body = serde_json::to_vec(&data).expect("a stock always serializes");
        Cached {
            body: Bytes::from(body),
            stock,
        }
    }
}

/// Counters of the cache; Prometheus counters, so `/metrics` shares them.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
    pub invalidations: Counter,
    pub lease_lapses: Counter,
}

impl CacheStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "cache_hits",
            "Lookups answered from the cache",
            self.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Lookups that went to the catalog",
            self.misses.clone(),
        );
        registry.register(
            "cache_evictions",
            "Stocks evicted as least recently used",
            self.evictions.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Cached stocks dropped after a trade",
            self.invalidations.clone(),
        );
        registry.register(
            "cache_lease_lapses",
            "Times the cache lease lapsed and the whole cache was dropped",
            self.lease_lapses.clone(),
        );
    }
}

/// Invalidations remembered for racing lookups; a lookup slower than this
/// many invalidations does not fill the cache.
const RECENT_INVALIDATIONS: usize = 1024;

/// The front-end gives up its lease this many tenths of its length early,
/// so a clock running up to 10% slower than the catalog's is still safe.
const CLOCK_MARGIN_TENTHS: u32 = 1;
/// Arrival times of the latest notices kept for confirmations; the catalog
/// confirms one of its last few (a heartbeat every quarter lease).
const RECEIPTS: usize = 256;

/// This front-end's lease.
#[derive(Default)]
struct Lease {
    /// Serving from the cache is allowed before this.
    until: Option<Instant>,
    /// The lapse is noticed (and the cache dropped) once.
    lapse_noticed: bool,
    catalog: Option<u64>,
    /// (seq, arrival) of the latest notices of `catalog`, oldest first.
    received: VecDeque<(u64, Instant)>,
}

struct Inner {
    lru: LruCache<String, Arc<Cached>>,
    generation: u64,
    /// (generation, name) of the latest invalidations, oldest first.
    recent: VecDeque<(u64, String)>,
    /// Generation of the latest drop of the whole cache.
    cleared: u64,
    /// `None` with one front-end: the cache serves whenever it holds a stock.
    lease: Option<Lease>,
}

impl Inner {
    /// Was `name` invalidated after generation `seen` (or can we not tell)?
    fn invalidated_since(&self, name: &str, seen: u64) -> bool {
        if self.generation == seen {
            return false;
        }
        let remembered_from = self.recent.front().map_or(u64::MAX, |(g, _)| *g);
        self.cleared > seen
            || remembered_from > seen + 1
            || self.recent.iter().any(|(g, n)| *g > seen && n == name)
    }

    /// May the cache serve (and be filled) at `now`?
    fn leased(&self, now: Instant) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|l| l.until.is_some_and(|u| now < u))
    }

    /// Drops every entry; lookups under way do not fill the cache.
    fn clear(&mut self) {
        self.lru.clear();
        self.generation += 1;
        self.cleared = self.generation;
    }

    /// Drops the whole cache the first time a lapse is seen.
    fn notice_lapse(&mut self, now: Instant, stats: &CacheStats) {
        if self.leased(now) {
            return;
        }
        if let Some(l) = self.lease.as_mut()
            && !l.lapse_noticed
        {
            l.lapse_noticed = true;
            stats.lease_lapses.inc();
            self.clear();
        }
    }

    fn invalidate(&mut self, name: &str, stats: &CacheStats) {
        self.generation += 1;
        let generation = self.generation;
        self.recent.push_back((generation, name.to_string()));
        if self.recent.len() > RECENT_INVALIDATIONS {
            self.recent.pop_front();
        }
        // Counted only when a cached stock goes: each trade is
        // invalidated twice (by the relay and by the catalog's notice).
        if self.lru.pop(name).is_some() {
            stats.invalidations.inc();
        }
    }

    /// Records a notice's arrival; returns the lease end its confirmation
    /// grants, if any.
    fn record(&mut self, terms: &LeaseTerms, now: Instant) -> Option<Instant> {
        let lease = self.lease.as_mut()?;
        let new_catalog = lease.catalog != Some(terms.catalog);
        if new_catalog {
            lease.catalog = Some(terms.catalog);
            lease.received.clear();
        }
        lease.received.push_back((terms.seq, now));
        if lease.received.len() > RECEIPTS {
            lease.received.pop_front();
        }
        let arrived = terms
            .confirmed
            .and_then(|a| lease.received.iter().find(|(seq, _)| *seq == a))
            .map(|(_, at)| *at);
        if new_catalog {
            // What an earlier catalog process left pending is lost with it.
            self.clear();
        }
        let length = Duration::from_millis(terms.ms);
        let margin = length / 10 * CLOCK_MARGIN_TENTHS;
        arrived?.checked_add(length.saturating_sub(margin))
    }
}

pub struct StockCache {
    inner: Option<Mutex<Inner>>,
    pub stats: CacheStats,
}

impl StockCache {
    pub fn new(capacity: usize) -> StockCache {
        let inner = NonZeroUsize::new(capacity).map(|c| {
            Mutex::new(Inner {
                lru: LruCache::new(c),
                generation: 0,
                recent: VecDeque::new(),
                cleared: 0,
                lease: None,
            })
        });
        StockCache {
            inner,
            stats: CacheStats::default(),
        }
    }

    /// Serve from the cache only under a lease (several front-ends).
    /// Until the first renewal it serves nothing from the cache.
    pub fn enforce_lease(&self) {
        if let Some(mut g) = self.lock()
            && g.lease.is_none()
        {
            g.lease = Some(Lease {
                lapse_noticed: true,
                ..Lease::default()
            });
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        self.inner.as_ref().map(|m| {
            m.lock()
                .expect("cache lock is never poisoned: nothing panics while holding it")
        })
    }

    /// The cached stock, marking it most recently used.
    pub fn get(&self, name: &str) -> Option<Arc<Cached>> {
        let found = self.lock().and_then(|mut g| {
            g.notice_lapse(Instant::now(), &self.stats);
            g.lru.get(name).cloned()
        });
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.inc();
        found
    }

    /// Take this before reading the catalog; pass it to [`insert_if_current`](Self::insert_if_current).
    pub fn generation(&self) -> u64 {
        self.lock().map_or(0, |g| g.generation)
    }

    /// Inserts unless the stock was invalidated since `generation`; evicts
    /// the least recently used entry when full. Returns the evicted name.
    pub fn insert_if_current(&self, stock: Stock, generation: u64) -> Option<String> {
        let cached = Arc::new(Cached::new(stock));
        let mut g = self.lock()?;
        if !g.leased(Instant::now()) || g.invalidated_since(&cached.stock.name, generation) {
            return None;
        }
        let name = cached.stock.name.clone();
        // `push` hands back the old entry of the same key, or the evicted one.
        match g.lru.push(name.clone(), cached) {
            Some((old, _)) if old != name => {
                self.stats.evictions.inc();
                Some(old)
            }
            _ => None,
        }
    }

    /// Drops `name`; later lookups go to the catalog.
    pub fn invalidate(&self, name: &str) {
        if let Some(mut g) = self.lock() {
            g.invalidate(name, &self.stats);
        }
    }

    /// A notice of the catalog: drops its names and, under a lease, renews
    /// the lease by its confirmation (dropping the whole cache first if
    /// the lease had lapsed). One lock, so a lookup sees all of it or none.
    pub fn receive(&self, notice: &Invalidations) {
        let Some(mut g) = self.lock() else { return };
        let now = Instant::now();
        let renewed = notice.lease.as_ref().and_then(|t| g.record(t, now));
        for name in &notice.names {
            g.invalidate(name, &self.stats);
        }
        if notice.everything {
            // Too many names to list: every cached stock goes, and lookups
            // under way do not fill.
            let dropped = g.lru.len();
            g.clear();
            self.stats
                .invalidations
                .inc_by(u64::try_from(dropped).unwrap_or(u64::MAX));
        }
        let Some(until) = renewed.filter(|u| *u > now) else {
            return;
        };
        if !g.leased(now) {
            // Fills of lookups that started during the lapse are refused too.
            g.notice_lapse(now, &self.stats);
            g.clear();
        }
        if let Some(lease) = g.lease.as_mut() {
            lease.until = lease.until.max(Some(until));
            lease.lapse_noticed = false;
        }
    }

    /// Cached names, most recently used first.
    pub fn names(&self) -> Vec<String> {
        self.lock()
            .map(|g| g.lru.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    pub fn capacity(&self) -> usize {
        self.lock().map_or(0, |g| g.lru.cap().get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(name: &str, quantity: u64) -> Stock {
        Stock {
            name: name.into(),
            price: 1.0,
            quantity,
        }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let c = StockCache::new(2);
        let g = c.generation();
        assert_eq!(c.insert_if_current(stock("A", 1), g), None);
        assert_eq!(c.insert_if_current(stock("B", 1), g), None);
        assert!(c.get("A").is_some()); // A is now most recent
        assert_eq!(c.insert_if_current(stock("C", 1), g), Some("B".into()));
        assert_eq!(c.names(), vec!["C".to_string(), "A".to_string()]);
        // Re-inserting a present key is an update, not an eviction.
        assert_eq!(c.insert_if_current(stock("A", 2), g), None);
        assert_eq!(c.get("A").unwrap().stock.quantity, 2);
        assert_eq!(c.stats.evictions.get(), 1);
    }

    /// A hit answers the bytes a miss answers: the stock under `data`.
    #[test]
    fn the_cached_answer_is_the_lookups_json() {
        let c = StockCache::new(2);
        let s = Stock {
            name: "A\"x".into(),
            price: 15.99,
            quantity: 7,
        };
        c.insert_if_current(s.clone(), c.generation());
        let cached = c.get("A\"x").expect("cached");
        assert_eq!(cached.stock, s);
        assert_eq!(
            cached.body.as_ref(),
            serde_json::to_vec(&Data::new(s)).unwrap().as_slice()
        );
        assert_eq!(
            std::str::from_utf8(&cached.body).unwrap(),
            r#"{"data":{"name":"A\"x","price":15.99,"quantity":7}}"#
        );
    }

    #[test]
    fn an_invalidation_during_a_lookup_blocks_the_stale_insert() {
        let c = StockCache::new(5);
        let before = c.generation();
        c.invalidate("A");
        assert_eq!(c.insert_if_current(stock("A", 100), before), None);
        assert!(c.get("A").is_none());
        // Another stock's invalidation does not block this one.
        assert_eq!(c.insert_if_current(stock("B", 100), before), None);
        assert!(c.get("B").is_some());
    }

    #[test]
    fn a_lookup_older_than_the_remembered_invalidations_does_not_fill() {
        let c = StockCache::new(5);
        let before = c.generation();
        for i in 0..=RECENT_INVALIDATIONS {
            c.invalidate(&format!("X{i}"));
        }
        c.insert_if_current(stock("A", 1), before);
        assert!(c.get("A").is_none());
    }

    fn notice(catalog: u64, seq: u64, confirmed: Option<u64>, ms: u64) -> Invalidations {
        Invalidations {
            names: Vec::new(),
            everything: false,
            lease: Some(LeaseTerms {
                catalog,
                seq,
                confirmed,
                ms,
            }),
        }
    }

    #[test]
    fn under_a_lease_the_cache_serves_only_once_a_notice_is_confirmed() {
        let c = StockCache::new(5);
        c.enforce_lease();
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_none(), "no lease yet: nothing is kept");
        c.receive(&notice(7, 0, None, 60_000));
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_none(), "a notice alone grants nothing");
        // A confirmation of a notice this front-end never got grants nothing.
        c.receive(&notice(7, 1, Some(5), 60_000));
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_none());
        c.receive(&notice(7, 2, Some(0), 60_000));
        c.insert_if_current(stock("A", 1), c.generation());
        assert_eq!(c.get("A").map(|s| s.stock.quantity), Some(1));
        // Names in a notice go.
        c.receive(&Invalidations {
            names: vec!["A".into()],
            everything: false,
            lease: None,
        });
        assert!(c.get("A").is_none());
    }

    #[test]
    fn too_many_names_drop_the_whole_cache_and_racing_fills() {
        let c = StockCache::new(5);
        let before = c.generation();
        c.insert_if_current(stock("A", 1), before);
        let names = (0..=common::types::MAX_INVALIDATED_NAMES)
            .map(|i| format!("S{i}"))
            .collect();
        let notice = Invalidations::of(names, None);
        assert!(notice.everything && notice.names.is_empty());
        c.receive(&notice);
        assert!(c.get("A").is_none(), "the cached stock went");
        c.insert_if_current(stock("B", 1), before);
        assert!(c.get("B").is_none(), "a lookup begun before does not fill");
    }

    #[test]
    fn a_new_catalog_process_drops_the_whole_cache() {
        let c = StockCache::new(5);
        c.enforce_lease();
        c.receive(&notice(7, 0, None, 60_000));
        c.receive(&notice(7, 1, Some(0), 60_000));
        let before = c.generation();
        c.insert_if_current(stock("A", 1), before);
        c.insert_if_current(stock("B", 1), before);
        assert!(c.get("A").is_some());
        c.receive(&notice(8, 0, None, 60_000));
        assert!(c.names().is_empty());
        // The old lease still holds (it ended before the new process could
        // answer anything), but a lookup that started before is not kept.
        c.insert_if_current(stock("A", 0), before);
        assert!(c.get("A").is_none());
        // Sequence numbers of the old process mean nothing to the new one.
        c.receive(&notice(8, 1, Some(0), 60_000));
        c.insert_if_current(stock("A", 2), c.generation());
        assert_eq!(c.get("A").map(|s| s.stock.quantity), Some(2));
    }

    #[test]
    fn a_lapsed_lease_drops_the_cache_until_renewed() {
        let c = StockCache::new(5);
        c.enforce_lease();
        c.receive(&notice(7, 0, None, 100));
        c.receive(&notice(7, 1, Some(0), 100));
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_some());
        std::thread::sleep(Duration::from_millis(100));
        assert!(c.get("A").is_none());
        assert!(c.names().is_empty());
        assert_eq!(c.stats.lease_lapses.get(), 1);
        let during = c.generation();
        c.insert_if_current(stock("A", 1), during);
        assert!(c.names().is_empty(), "no fill without a lease");
        c.receive(&notice(7, 2, None, 60_000));
        c.receive(&notice(7, 3, Some(2), 60_000));
        // A lookup that read the catalog during the lapse does not fill.
        c.insert_if_current(stock("A", 1), during);
        assert!(c.names().is_empty());
        c.insert_if_current(stock("A", 2), c.generation());
        assert_eq!(c.get("A").map(|s| s.stock.quantity), Some(2));
        assert_eq!(c.stats.lease_lapses.get(), 1);
    }

    #[test]
    fn without_a_lease_notices_only_drop_names() {
        let c = StockCache::new(5);
        c.insert_if_current(stock("A", 1), c.generation());
        c.insert_if_current(stock("B", 1), c.generation());
        let mut n = notice(7, 0, None, 1);
        n.names = vec!["A".into()];
        c.receive(&n);
        assert_eq!(c.names(), vec!["B".to_string()]);
    }

    #[test]
    fn size_zero_is_off() {
        let c = StockCache::new(0);
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_none());
        assert!(c.names().is_empty());
    }
}
