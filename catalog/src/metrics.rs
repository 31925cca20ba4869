//! The catalog's own Prometheus metrics (process-wide: one catalog per
//! process); `/metrics` also has the shared HTTP figures.

use std::sync::LazyLock;

use common::metrics::FlushMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct CatalogMetrics {
    pub trades_applied: Counter,
    pub trades_rejected: Counter,
    pub apply_batches: Counter,
    /// Flushes of the database; `store::Catalog` counts and times them.
    pub flush: FlushMetrics,
}

pub static METRICS: LazyLock<CatalogMetrics> = LazyLock::new(CatalogMetrics::default);

pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "catalog_trades_applied",
        "Trades applied to the stocks",
        m.trades_applied.clone(),
    );
    registry.register(
        "catalog_trades_rejected",
        "Trades refused (unknown stock, not enough quantity)",
        m.trades_rejected.clone(),
    );
    registry.register(
        "catalog_apply_batches",
        "Batches of trades applied in one write and flush",
        m.apply_batches.clone(),
    );
    m.flush.register(registry);
}
