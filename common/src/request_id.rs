//! Request ids: every request gets one (the caller's `x-request-id` when it
//! sent a sane one, else a fresh one), returns it in the response header,
//! passes it on to the services it calls ([`tag`]), and has it on every log
//! line written while it is served, so one trade can be followed across the
//! logs of the front-end, the leader and the catalog.
//!
//! The request is held in a task-local ([`scope`], set by the server's gate
//! in `http`), not in a tracing span: the log formatter
//! (`telemetry`) reads it from there. A span per request cost its creation,
//! the formatting of its fields and an enter and exit on every poll, on
//! every request whether anything was logged or not (docs/PERFORMANCE.md,
//! One gate instead of a stack of layers).

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, Method, Uri};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The same name as a header name, built once: inserting or reading a
/// header by a `&str` parses the name on every call.
pub static REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
/// Longest id taken from a caller; longer ones are replaced.
const MAX_ID_LEN: usize = 64;

/// The request a task is serving: its id, method and path.
#[derive(Debug)]
pub struct RequestInfo {
    id: HeaderValue,
    method: Method,
    uri: Uri,
}

impl RequestInfo {
    /// The caller's id in `headers` when it is acceptable, else a fresh one.
    pub fn of(method: &Method, uri: &Uri, headers: &axum::http::HeaderMap) -> RequestInfo {
        let id = headers
            .get(&REQUEST_ID)
            .filter(|v| acceptable(v.as_bytes()))
            .cloned()
            .unwrap_or_else(fresh);
        RequestInfo {
            id,
            method: method.clone(),
            uri: uri.clone(),
        }
    }

    pub fn id(&self) -> &str {
        // Only visible ASCII is ever taken (`acceptable`, `fresh`).
        self.id.to_str().unwrap_or_default()
    }

    /// The id as the response header's value.
    pub fn header(&self) -> HeaderValue {
        self.id.clone()
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }
}

/// A request with the caller's id `id`, as the gate makes it (tests).
#[cfg(test)]
pub(crate) fn test_request(
    id: &'static str,
    method: Method,
    uri: &'static str,
) -> Arc<RequestInfo> {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static(id));
    Arc::new(RequestInfo::of(&method, &Uri::from_static(uri), &headers))
}

/// The id.
impl fmt::Display for RequestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

tokio::task_local! {
    static REQUEST: Arc<RequestInfo>;
}

/// The request this task is serving, if any.
pub fn current() -> Option<Arc<RequestInfo>> {
    REQUEST.try_with(Arc::clone).ok()
}

/// Runs `f` as part of `request` (the gate for each request; a task a
/// request hands work to, so its log lines and calls carry the id).
pub fn scope<F: std::future::Future>(
    request: Arc<RequestInfo>,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST.scope(request, f)
}

/// Adds the current request id to an outgoing call.
pub fn tag(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(request) => builder.header(REQUEST_ID_HEADER, request.header()),
        None => builder,
    }
}

fn fresh() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).expect("hex digits are a valid header value")
}

fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ids_are_taken() {
        assert!(acceptable(b"abc-123"));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"a b"));
        assert!(!acceptable("x".repeat(65).as_bytes()));
        let id = fresh();
        assert_eq!(id.len(), 16);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        assert_ne!(fresh(), fresh());
    }

    #[tokio::test]
    async fn current_is_set_inside_the_scope_only() {
        assert!(current().is_none());
        let request = test_request("r1", Method::GET, "/stocks/A?x=1");
        let inside = scope(request, async { current() }).await;
        let inside = inside.expect("the request inside its scope");
        assert_eq!((inside.id(), inside.path()), ("r1", "/stocks/A"));
        assert_eq!(inside.to_string(), "r1");
    }
}
