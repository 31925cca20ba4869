//! The gate: the one service in front of every server's router. Each
//! request, in this order: gets its request id (and keeps it on its log
//! lines and its answer), is shed with 503 when `max_in_flight` requests are
//! being served, is answered 413 when it declares a body over the limit,
//! and is answered 408 when it takes longer than the request timeout; every
//! error the router answers without a JSON body gets the contract's.
//!
//! One hand-written service instead of a stack of tower layers (a
//! middleware for the request id with a tracing span, one for the error
//! bodies, load shedding, a concurrency limit, a timeout, a middleware for
//! oversized bodies, two body limits, and a router around it all), each of
//! which boxed or cloned per request: with the stack, the front-end spent
//! 15.7-19.1 µs of CPU per cached lookup under `wrk` (6.3-8.4 µs of it in
//! user space), with the gate 12.4-12.5 µs (3.8-4.1), in alternating runs
//! (docs/PERFORMANCE.md, One gate instead of a stack of layers).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use super::{DRAIN_LIMIT_BYTES, Limits};
use crate::error::ApiError;
use crate::request_id::{REQUEST_ID, RequestInfo};

/// The gate around `inner` (see the module's documentation).
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    limits: Limits,
    /// One place per request being served, across every route.
    in_flight: Arc<Semaphore>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, limits: Limits) -> Gate<S> {
        Gate {
            inner,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }
}

type GateFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S, B> Service<Request<B>> for Gate<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture;

    /// Always ready: a request over the limit is answered 503 at once,
    /// not queued.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> GateFuture {
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        // The router is always ready; each request calls its own handle.
        let inner = self.inner.clone();
        let limits = self.limits;
        Box::pin(async move { Ok(pass(inner, limits, permit, request.map(Body::new)).await) })
    }
}

async fn pass<S>(
    mut inner: S,
    limits: Limits,
    permit: Option<OwnedSemaphorePermit>,
    request: Request,
) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let info = RequestInfo::of(request.method(), request.uri(), request.headers());
    let id = info.header();
    let served = async move {
        let Some(_permit) = permit else {
            return ApiError::unavailable(format!(
                "server overloaded: {} requests are being served, the limit",
                limits.max_in_flight
            ))
            .into_response();
        };
        let max = limits.max_body_bytes;
        let work = async move {
            match declared_over(max, &request) {
                Some(declared) => refuse_oversized(max, declared, request).await,
                None => match inner.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
            }
        };
        match tokio::time::timeout(limits.request_timeout, work).await {
            Ok(response) => json_errors(response),
            Err(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request took too long").into_response()
            }
        }
    };
    let mut response = crate::request_id::scope(Arc::new(info), served).await;
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

/// The Content-Length `request` declares, when it is over `max`.
fn declared_over(max: usize, request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > u64::try_from(max).unwrap_or(u64::MAX))
}

/// Answers 413 to a request that declared a body of `declared` bytes, over
/// `max`, after draining a body of up to [`DRAIN_LIMIT_BYTES`] (see there).
async fn refuse_oversized(max: usize, declared: u64, request: Request) -> Response {
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body too large: {declared} bytes, the limit is {max}"),
    )
    .into_response();
    if declared <= DRAIN_LIMIT_BYTES {
        let mut body = request.into_body();
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
/// router answers by itself with an empty or text body (unknown route,
/// wrong method, a body over the limit while it is read).
fn json_errors(response: Response) -> Response {
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
