//! Prometheus metrics (`prometheus-client`, OpenMetrics text): the HTTP
//! figures every service shares, the registry each service fills with its
//! own, and the `GET /metrics` route. Names carry the `bazaar_` prefix and
//! a `service` label.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

/// Latency buckets from 25 µs to about 13 s, doubling: fine enough for a
/// cached lookup, wide enough for a failover.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 20))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

mod track;
pub use track::{HttpMetrics, Track, Tracked, TrackedFuture};

/// A registry with the service label and the HTTP metrics in it; the
/// service registers its own before `finish`.
pub struct MetricsBuilder {
    pub registry: Registry,
    pub http: HttpMetrics,
}

impl MetricsBuilder {
    pub fn new(service: &str) -> MetricsBuilder {
        let mut registry = Registry::with_prefix_and_labels(
            "bazaar",
            [("service".into(), service.to_string().into())].into_iter(),
        );
        let http = HttpMetrics::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route and method",
            http.latency.clone(),
        );
        MetricsBuilder { registry, http }
    }

    /// Wraps `router` so every request is counted and timed (by route:
    /// this layer is per route, to see the matched path), and adds
    /// `GET /metrics`. The request id comes from `http::Gate`.
    pub fn finish(self, router: Router) -> Router {
        let registry = Arc::new(self.registry);
        let metrics = Router::new()
            .route("/metrics", get(scrape))
            .with_state(registry);
        router.merge(metrics).layer(Track::new(self.http))
    }
}

/// The value of the first sample of metric `name` (any labels) in a
/// `/metrics` text, parsed as `T`; `None` when there is none.
pub fn sample<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => crate::ApiError::internal(format!("cannot encode metrics: {e}")).into_response(),
    }
}

/// Awaits `work`, observing the time it took in `histogram` whatever its
/// result.
pub async fn timed<F: Future>(histogram: &Histogram, work: F) -> F::Output {
    let started = Instant::now();
    let output = work.await;
    histogram.observe(started.elapsed().as_secs_f64());
    output
}

/// Count and time of the database flushes of a service, and its storage
/// errors (`bazaar_storage_errors_total`, registered with them). The store
/// times its own flush ([`FlushMetrics::time`]); this type never sees the
/// engine.
#[derive(Debug)]
pub struct FlushMetrics {
    pub flushes: Counter,
    pub seconds: Histogram,
}

impl Default for FlushMetrics {
    fn default() -> Self {
        FlushMetrics {
            flushes: Counter::default(),
            seconds: latency_histogram(),
        }
    }
}

impl FlushMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let engine = crate::storage::ENGINE;
        registry.register(
            format!("{engine}_flushes"),
            format!("Flushes of the {engine} database"),
            self.flushes.clone(),
        );
        registry.register(
            format!("{engine}_flush_seconds"),
            format!("Time of one {engine} flush"),
            self.seconds.clone(),
        );
        registry.register(
            "storage_errors",
            "Failed writes, flushes and damaged reads of the database (the log says it once)",
            crate::storage::storage_errors(),
        );
    }

    /// Awaits `flush`, counting and timing it whatever its result.
    pub async fn time<F: Future>(&self, flush: F) -> F::Output {
        let output = timed(&self.seconds, flush).await;
        self.flushes.inc();
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_whole_name() {
        let text = "# TYPE x counter\nbazaar_x_total_created{service=\"a\"} 9\n\
                    bazaar_x_total{service=\"a\"} 3\nbazaar_y 2.5\n";
        assert_eq!(sample::<u64>(text, "bazaar_x_total"), Some(3));
        assert_eq!(sample::<f64>(text, "bazaar_y"), Some(2.5));
        assert_eq!(sample::<u64>(text, "bazaar_x"), None);
    }

    #[test]
    fn flush_metrics_bring_the_storage_error_count() {
        let mut builder = MetricsBuilder::new("test");
        FlushMetrics::default().register(&mut builder.registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &builder.registry).unwrap();
        assert!(
            text.contains("bazaar_storage_errors_total{service=\"test\"}"),
            "{text}"
        );
        assert!(text.contains("bazaar_sled_flushes_total"), "{text}");
    }
}
