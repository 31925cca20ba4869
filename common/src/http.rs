//! HTTP plumbing every service shares: the accept loop with its limits, the
//! gate in front of every router (request id, load shedding, timeout, body
//! limits, and the JSON error mapping for everything the router answers by
//! itself), the typed JSON extractor, the cluster-token check and the
//! internal HTTP client.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;

mod gate;
pub use gate::Gate;

/// Header carrying the cluster token on internal requests.
pub const TOKEN_HEADER: &str = "x-bazaar-token";

/// The limits of one server. Every field bounds something a caller controls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Longest a request may take from headers read to response; then 408.
    pub request_timeout: Duration,
    /// Requests handled at once; more are shed with 503 at once, not queued.
    pub max_in_flight: usize,
    /// Open connections at once; further connections are closed on accept so
    /// a connection flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers (slowloris defence).
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after a shutdown signal.
    pub drain_timeout: Duration,
}

impl Limits {
    /// Public endpoints: small JSON bodies only.
    pub const PUBLIC: Limits = Limits {
        max_body_bytes: 16 * 1024,
        request_timeout: Duration::from_secs(10),
        max_in_flight: 2048,
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
    };
    /// Services that also take batches of orders from their peers.
    pub const INTERNAL: Limits = Limits {
        max_body_bytes: 8 * 1024 * 1024,
        ..Limits::PUBLIC
    };
}

/// Serves `router` on an already-bound listener until `shutdown` completes,
/// then stops accepting and gives open requests `drain_timeout` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = with_limits(router, limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after the drain timeout; closing them");
    }
    Ok(())
}

/// A body over the limit whose Content-Length is at most this is read and
/// thrown away before the 413 goes out: a client that writes its whole body
/// before it reads the answer (Python's urllib and requests do) then sees
/// the 413 instead of a connection reset mid-upload. A larger body gets the
/// 413 at once and the connection is closed; the request timeout bounds the
/// time spent draining.
pub const DRAIN_LIMIT_BYTES: u64 = 16 * 1024 * 1024;

/// Wraps a router in the [`Gate`]: the request id, load shedding, the
/// request timeout, the body limits and the JSON error mapping. The
/// router's extractors read bodies up to `max_body_bytes`
/// (`DefaultBodyLimit`): a body without a Content-Length that runs over is
/// refused with 413 as it is read.
pub fn with_limits(
    router: Router,
    limits: Limits,
) -> Gate<
    impl tower::Service<Request, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    use tower::Layer;
    Gate::new(
        DefaultBodyLimit::max(limits.max_body_bytes).layer(router),
        limits,
    )
}

/// `Json<T>` whose rejections are the contract's error JSON: 415 for a
/// missing JSON content type, 413 for a body over the limit, 400 otherwise.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `Path<T>` whose rejection names the problem (`invalid path: ...`, e.g. a
/// segment that is not UTF-8 once percent-decoded) in the contract's error
/// JSON, instead of a bare 400.
pub struct PathParam<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParam(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `Query<T>` whose rejection names the problem (`invalid query: missing
/// field `limit``) in the contract's error JSON, instead of a bare 400.
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid query: {}",
                rejection.body_text()
            ))),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("invalid body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// Rejects requests that do not carry the cluster token (when one is set).
/// The comparison takes the same time wherever the first difference is.
pub fn require_token<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    token: Option<Arc<str>>,
) -> Router<S> {
    let Some(token) = token else { return router };
    // `route_layer`, not `layer`: a layer would also wrap the fallback, and
    // once merged into the public router every unknown path would answer
    // 401 instead of 404.
    router.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move {
            let given = req
                .headers()
                .get(TOKEN_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or(b"");
            if constant_time_eq(given, token.as_bytes()) {
                next.run(req).await
            } else {
                ApiError::unauthorized("missing or wrong cluster token").into_response()
            }
        }
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Connect timeout between services: peers are on a LAN or loopback, so a
/// connect that takes longer than this means the peer is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// An HTTP client for calls between services: keep-alive, no Nagle, bounded
/// connect and request time, and the cluster token on every request.
pub fn internal_client(timeout: Duration, token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token
        && let Ok(v) = reqwest::header::HeaderValue::from_str(t)
    {
        headers.insert(TOKEN_HEADER, v);
    }
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .default_headers(headers)
        .build()
        .expect("the HTTP client configuration is static and valid")
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Binds `host:port`, turning "address in use" into a one-line error.
pub async fn bind(what: &str, host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addr = crate::config::bind_addr(host, port)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}:{port} for the {what}: {e}"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({e}); is another {what} running?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    /// The gate's own answers (413 for a body over the limit, 404 for an
    /// unknown route) carry the request id too: the caller's when it sent
    /// one, else a fresh one.
    #[tokio::test]
    async fn the_gates_own_answers_carry_the_request_id() {
        use axum::body::Body;
        use axum::http::header;
        use axum::routing::post;
        use tower::ServiceExt;

        let app = with_limits(
            Router::new().route("/orders", post(|| async { "ok" })),
            Limits::PUBLIC,
        );
        let too_large = Limits::PUBLIC.max_body_bytes + 1;
        let request = Request::post("/orders")
            .header(header::CONTENT_LENGTH, too_large)
            .header(crate::request_id::REQUEST_ID_HEADER, "caller-id-1")
            .body(Body::from(vec![b'a'; too_large]))
            .expect("a request");
        let response = app.clone().oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers().get(crate::request_id::REQUEST_ID_HEADER),
            Some(&HeaderValue::from_static("caller-id-1"))
        );
        let request = Request::get("/nowhere")
            .body(Body::empty())
            .expect("a request");
        let response = app.oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let id = response
            .headers()
            .get(crate::request_id::REQUEST_ID_HEADER)
            .expect("a fresh request id");
        assert_eq!(id.len(), 16, "{id:?}");
    }

    #[tokio::test]
    async fn the_in_flight_limit_counts_every_route_together() {
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt;

        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let released = released.clone();
                    async move {
                        if let Some(r) = released.lock().await.take() {
                            let _ = r.await;
                        }
                        "slow"
                    }
                }),
            )
            .route("/other", get(|| async { "other" }));
        let app = with_limits(
            router,
            Limits {
                max_in_flight: 1,
                ..Limits::PUBLIC
            },
        );
        let get_status = |path: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::get(path).body(Body::empty()).expect("a request");
                app.oneshot(request).await.map(|r| r.status())
            }
        };
        let slow = tokio::spawn(get_status("/slow"));
        // While /slow holds the one place, /other (another route) is shed.
        crate::wait::wait_until(
            "a request to another route shed with 503",
            Duration::from_secs(5),
            || async { get_status("/other").await == Ok(StatusCode::SERVICE_UNAVAILABLE) },
        )
        .await;
        let _ = release.send(());
        assert_eq!(
            slow.await.expect("the slow request ran"),
            Ok(StatusCode::OK)
        );
        assert_eq!(get_status("/other").await, Ok(StatusCode::OK));
    }
}
