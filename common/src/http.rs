//! HTTP plumbing every service shares: the accept loop with its limits, the
//! JSON error mapping for everything the router answers by itself (unknown
//! route, wrong method, body too large, timeout, overload), the typed JSON
//! extractor, the cluster-token check and the internal HTTP client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::error::ApiError;

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
    let router = with_limits(router, limits);
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
        let service = TowerToHyperService::new(router.clone());
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

/// Wraps a router in the request id, the JSON error mapping, load
/// shedding, the request timeout and the body limits.
///
/// The layers wrap the router as one service, not each route (which is what
/// `Router::layer` does): a per-route layer clones its inner route, boxed,
/// on every request; wrapping once took cached lookups at 64 connections
/// from 79k/s to 83k/s (docs/PERFORMANCE.md). Outermost first, so the
/// request id is on every answer, also a 408, 413 or 503 the layers give
/// themselves.
pub fn with_limits(router: Router, limits: Limits) -> Router {
    let max = limits.max_body_bytes;
    let stack = ServiceBuilder::new()
        .layer(middleware::from_fn(crate::request_id::middleware))
        .layer(middleware::from_fn(json_errors))
        .layer(HandleErrorLayer::new(|e: BoxError| async move {
            ApiError::unavailable(format!("server overloaded: {e}"))
        }))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            refuse_oversized(max, req, next)
        }))
        // Refuses a body whose Content-Length is over the limit before it
        // is read: without it such a request waits for its body until the
        // request timeout (408) instead of getting 413 at once.
        .layer(RequestBodyLimitLayer::new(max))
        .layer(DefaultBodyLimit::max(max))
        .service(router);
    Router::new().fallback_service(stack)
}

/// Answers 413 to a request whose declared body is over `max`, after
/// draining a body of up to [`DRAIN_LIMIT_BYTES`] (see there).
async fn refuse_oversized(max: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > u64::try_from(max).unwrap_or(u64::MAX)) else {
        return next.run(req).await;
    };
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body too large: {declared} bytes, the limit is {max}"),
    )
    .into_response();
    if declared <= DRAIN_LIMIT_BYTES {
        let mut body = req.into_body();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if frame.is_err() {
                break;
            }
        }
    } else {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Gives every error response the contract's JSON body, also those the
/// router and the layers produce with an empty or text body.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::NOT_FOUND => "no such route".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
        StatusCode::REQUEST_TIMEOUT => "request took too long".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut fixed = ApiError::new(status, message).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        fixed.headers_mut().insert(header::ALLOW, allow.clone());
    }
    fixed
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

    /// The layers' own answers (413 for a body over the limit, 404 for an
    /// unknown route) carry the request id too: the caller's when it sent
    /// one, else a fresh one.
    #[tokio::test]
    async fn the_layers_own_answers_carry_the_request_id() {
        use axum::body::Body;
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
