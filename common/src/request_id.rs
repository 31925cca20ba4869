//! Request ids: every request gets one (the caller's `x-request-id` when it
//! sent a sane one, else a fresh one), runs inside a tracing span that
//! carries it, returns it in the response header, and passes it on to the
//! services it calls ([`tag`]), so one trade can be followed across the
//! logs of the front-end, the leader and the catalog.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest id taken from a caller; longer ones are replaced.
const MAX_ID_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request this task is serving, if any.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `f` as part of request `id` (for work a request hands to another
/// task).
pub fn scope<F: std::future::Future>(
    id: Arc<str>,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST_ID.scope(id, f)
}

/// Adds the current request id to an outgoing call.
pub fn tag(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(id) => builder.header(REQUEST_ID_HEADER, &*id),
        None => builder,
    }
}

fn fresh() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: assigns the id, opens the span, echoes the header.
pub async fn middleware(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(fresh, Arc::from);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ids_are_taken() {
        assert!(acceptable("abc-123"));
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable(&"x".repeat(65)));
        assert_eq!(fresh().len(), 16);
    }

    #[tokio::test]
    async fn current_is_set_inside_the_scope_only() {
        assert!(current().is_none());
        let inside = REQUEST_ID.scope(Arc::from("r1"), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("r1"));
    }
}
