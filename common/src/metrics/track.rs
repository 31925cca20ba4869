//! The HTTP figures of every route: requests by route, method and status,
//! and their latency by route and method, counted by a layer on each route
//! ([`Track`]; a route layer sees the matched route pattern).
//!
//! The series of a route are looked up in their families once and kept
//! ([`HttpMetrics::series`]): a lookup in a family builds its label set,
//! two strings, for every request. Methods outside the standard ones are
//! counted as `other`, so a caller cannot add series without bound.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::{HistogramFamily, RequestLabels, RouteLabels};

/// Requests by route, method and status, and their latency.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily<RouteLabels>,
    series: Arc<RwLock<SeriesByRoute>>,
}

/// Route pattern → (method label, its series).
type SeriesByRoute = HashMap<String, Vec<(&'static str, Arc<RouteSeries>)>>;

/// The series of one route and method.
struct RouteSeries {
    route: String,
    method: &'static str,
    latency: Histogram,
    /// Counters by status, found in `requests` the first time each is seen.
    by_status: RwLock<Vec<(u16, Counter)>>,
    requests: Family<RequestLabels, Counter>,
}

impl RouteSeries {
    fn record(&self, started: Instant, status: u16) {
        self.latency.observe(started.elapsed().as_secs_f64());
        if let Some((_, counter)) = self
            .by_status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == status)
        {
            counter.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                method: self.method.to_string(),
                status,
            })
            .clone();
        counter.inc();
        let mut by_status = self
            .by_status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !by_status.iter().any(|(s, _)| *s == status) {
            by_status.push((status, counter));
        }
    }
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(super::latency_histogram),
            series: Arc::default(),
        }
    }
}

impl HttpMetrics {
    /// The series of `route` and `method`, created the first time.
    fn series(&self, route: &str, method: &Method) -> Arc<RouteSeries> {
        let method = method_label(method);
        let find = |map: &SeriesByRoute| {
            map.get(route)?
                .iter()
                .find(|(m, _)| *m == method)
                .map(|(_, s)| s.clone())
        };
        let known = find(
            &self
                .series
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if let Some(series) = known {
            return series;
        }
        let mut map = self
            .series
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(series) = find(&map) {
            return series;
        }
        let latency = self
            .latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .clone();
        let series = Arc::new(RouteSeries {
            route: route.to_string(),
            method,
            latency,
            by_status: RwLock::default(),
            requests: self.requests.clone(),
        });
        map.entry(route.to_string())
            .or_default()
            .push((method, series.clone()));
        series
    }
}

/// The method's label: its name when it is a standard one, else `other`.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// The layer that counts and times every request of the routes it wraps.
#[derive(Clone)]
pub struct Track(Arc<HttpMetrics>);

impl Track {
    pub fn new(http: HttpMetrics) -> Track {
        Track(Arc::new(http))
    }
}

impl<S> tower::Layer<S> for Track {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            http: self.0.clone(),
        }
    }
}

/// A route counted and timed by [`Track`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    http: Arc<HttpMetrics>,
}

impl<S> tower::Service<Request> for Tracked<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The route pattern, not the path: `/stocks/{name}` stays one series.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let series = self.http.series(route, request.method());
        TrackedFuture {
            inner: self.inner.call(request),
            series,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being counted: recorded when its response is ready.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        series: Arc<RouteSeries>,
        started: Instant,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.series
                .record(*this.started, response.status().as_u16());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"FROB").expect("a method");
        assert_eq!(method_label(&odd), "other");
    }

    #[test]
    fn series_are_found_again_and_counted_by_status() {
        let http = HttpMetrics::default();
        let a = http.series("/stocks/{name}", &Method::GET);
        let b = http.series("/stocks/{name}", &Method::GET);
        assert!(Arc::ptr_eq(&a, &b));
        let started = Instant::now();
        a.record(started, 200);
        b.record(started, 200);
        a.record(started, 404);
        let count = |status| {
            http.requests
                .get_or_create(&RequestLabels {
                    route: "/stocks/{name}".into(),
                    method: "GET".into(),
                    status,
                })
                .get()
        };
        assert_eq!((count(200), count(404)), (2, 1));
        let posts = http.series("/stocks/{name}", &Method::POST);
        assert!(!Arc::ptr_eq(&a, &posts));
    }
}
