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

use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use common::types::Stock;
use lru::LruCache;

/// Counters of the cache; Prometheus counters, so `/metrics` shares them.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
    pub invalidations: Counter,
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
    }
}

/// Invalidations remembered for racing lookups; a lookup slower than this
/// many invalidations does not fill the cache.
const RECENT_INVALIDATIONS: usize = 1024;

struct Inner {
    lru: LruCache<String, Stock>,
    generation: u64,
    /// (generation, name) of the latest invalidations, oldest first.
    recent: VecDeque<(u64, String)>,
}

impl Inner {
    /// Was `name` invalidated after generation `seen` (or can we not tell)?
    fn invalidated_since(&self, name: &str, seen: u64) -> bool {
        if self.generation == seen {
            return false;
        }
        let remembered_from = self.recent.front().map_or(u64::MAX, |(g, _)| *g);
        remembered_from > seen + 1 || self.recent.iter().any(|(g, n)| *g > seen && n == name)
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
            })
        });
        StockCache {
            inner,
            stats: CacheStats::default(),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        self.inner.as_ref().map(|m| {
            m.lock()
                .expect("cache lock is never poisoned: nothing panics while holding it")
        })
    }

    /// The cached stock, marking it most recently used.
    pub fn get(&self, name: &str) -> Option<Stock> {
        let found = self.lock().and_then(|mut g| g.lru.get(name).cloned());
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
        let mut g = self.lock()?;
        if g.invalidated_since(&stock.name, generation) {
            return None;
        }
        let name = stock.name.clone();
        // `push` hands back the old entry of the same key, or the evicted one.
        match g.lru.push(name.clone(), stock) {
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
            g.generation += 1;
            let generation = g.generation;
            g.recent.push_back((generation, name.to_string()));
            if g.recent.len() > RECENT_INVALIDATIONS {
                g.recent.pop_front();
            }
            // Counted only when a cached stock goes: each trade is
            // invalidated twice (by the relay and by the catalog's notice).
            if g.lru.pop(name).is_some() {
                self.stats.invalidations.inc();
            }
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
        assert_eq!(c.get("A").unwrap().quantity, 2);
        assert_eq!(c.stats.evictions.get(), 1);
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

    #[test]
    fn size_zero_is_off() {
        let c = StockCache::new(0);
        c.insert_if_current(stock("A", 1), c.generation());
        assert!(c.get("A").is_none());
        assert!(c.names().is_empty());
    }
}
