//! Fuzzing the front-end's whole request path in process: generated
//! requests (any method, routes with arbitrary percent-encoded segments,
//! content types, idempotency keys, arbitrary or nearly valid bodies) go
//! through `router` wrapped in the same limits and error mapping as the
//! real server, with no catalog or replica reachable. Every answer must be
//! the one a plain statement of the API gives: 404 unknown route, 405 wrong
//! method, 415/400 bad body, 400 bad name, number or key, and 503 only for
//! a request that is valid but needs the (absent) back-end. Every error is
//! the contract's JSON, and nothing panics.
//!
//! `cargo test -p frontend --test router_props -- --nocapture` prints the
//! number of requests and the time taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::config::Config;
use common::types::{TradeRequest, validate_idempotency_key, validate_stock_name};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tower::ServiceExt;

const TOKEN: &str = "router-props-token-0123456789";
/// Requests per run: a few seconds in a debug build.
const CASES: u32 = 2000;

/// A config whose catalog and replicas listen nowhere: ports the kernel
/// handed out and that were closed again refuse connections at once.
fn dead_config() -> Config {
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    drop(listeners);
    let yaml = format!(
        "catalog: {{ host: 127.0.0.1, port: {}, db_path: db, stocks: s.csv }}\n\
         frontend: {{ host: 127.0.0.1, port: {}, cache_size: 5, health_check_interval_ms: 1000 }}\n\
         orders:\n\
         - {{ id: 1, host: 127.0.0.1, port: {}, db_path: o1 }}\n\
         - {{ id: 2, host: 127.0.0.1, port: {}, db_path: o2 }}\n\
         - {{ id: 3, host: 127.0.0.1, port: {}, db_path: o3 }}\n\
         token: {TOKEN}\n",
        ports[0], ports[1], ports[2], ports[3], ports[4]
    );
    Config::from_yaml(&yaml, std::path::Path::new("/tmp/c.yaml"), Vec::new()).expect("config")
}

/// A path segment: the raw bytes it decodes to, and its encoded form
/// (everything but unreserved characters percent-encoded, so it stays one
/// segment).
#[derive(Debug, Clone)]
struct Segment {
    decoded: Vec<u8>,
    encoded: String,
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        "[A-Z]{1,6}".prop_map(String::into_bytes),
        "[0-9]{1,22}".prop_map(String::into_bytes),
        Just(b"-1".to_vec()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(Vec::new()),
        "[ -~]{0,70}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
    .prop_map(|decoded| {
        let encoded = decoded
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Segment { decoded, encoded }
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Stock,
    Orders,
    Order,
    Health,
    Invalidation,
    Unknown,
}

#[derive(Debug, Clone)]
struct Generated {
    method: &'static str,
    route: Route,
    segment: Segment,
    content_type: Option<&'static str>,
    key: Option<Vec<u8>>,
    token: Option<&'static str>,
    body: Vec<u8>,
}

fn trade_body() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof!["[A-Z]{1,5}", "[ -~]{0,8}", Just("..".to_string())];
    let quantity = prop_oneof![
        (1..=1_000_000u64).prop_map(|q| q.to_string()),
        any::<i64>().prop_map(|q| q.to_string()),
        Just("1.5".to_string()),
        Just("\"3\"".to_string()),
    ];
    let kind = prop_oneof![
        Just("\"buy\""),
        Just("\"sell\""),
        Just("\"hold\""),
        Just("null")
    ];
    (name, quantity, kind).prop_map(|(n, q, k)| {
        format!(
            "{{\"name\":{},\"quantity\":{q},\"type\":{k}}}",
            serde_json::to_string(&n).expect("a string serializes")
        )
        .into_bytes()
    })
}

fn request() -> impl Strategy<Value = Generated> {
    let method = prop_oneof![
        3 => Just("GET"),
        3 => Just("POST"),
        1 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("HEAD"),
        1 => Just("OPTIONS"),
    ];
    let route = prop_oneof![
        3 => Just(Route::Stock),
        3 => Just(Route::Orders),
        2 => Just(Route::Order),
        1 => Just(Route::Health),
        1 => Just(Route::Invalidation),
        1 => Just(Route::Unknown),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("text/plain")),
    ];
    let key = proptest::option::weighted(
        0.3,
        prop_oneof![
            "[!-~]{1,130}".prop_map(String::into_bytes),
            "[ -~]{0,20}".prop_map(String::into_bytes),
            Just(b"key\xff".to_vec()),
        ],
    );
    let token = prop_oneof![
        Just(None),
        Just(Some(TOKEN)),
        Just(Some("router-props-token-9999999999")),
    ];
    let body = prop_oneof![
        3 => trade_body(),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ];
    // Mostly the route's own method, so that the answers behind the
    // method check are reached often.
    let method = (proptest::bool::weighted(0.75), method);
    (method, route, segment(), content_type, key, token, body).prop_map(
        |((proper, method), route, segment, content_type, key, token, body)| Generated {
            method: match (proper, route) {
                (true, Route::Orders | Route::Invalidation) => "POST",
                (true, _) => "GET",
                (false, _) => method,
            },
            route,
            segment,
            content_type,
            key,
            token,
            body,
        },
    )
}

impl Generated {
    fn path(&self) -> String {
        let seg = &self.segment.encoded;
        match self.route {
            Route::Stock => format!("/stocks/{seg}"),
            Route::Orders => "/orders".into(),
            Route::Order => format!("/orders/{seg}"),
            Route::Health => "/health".into(),
            Route::Invalidation => format!("/invalidation/{seg}"),
            Route::Unknown => format!("/x{seg}"),
        }
    }

    /// The answer the API must give with no back-end reachable.
    fn expected(&self) -> StatusCode {
        let get = matches!(self.method, "GET" | "HEAD");
        let decoded = std::str::from_utf8(&self.segment.decoded).ok();
        let empty = self.segment.decoded.is_empty();
        match self.route {
            Route::Unknown => StatusCode::NOT_FOUND,
            Route::Stock | Route::Order | Route::Invalidation if empty => StatusCode::NOT_FOUND,
            Route::Health if get => StatusCode::OK,
            Route::Stock if get => match decoded.map(validate_stock_name) {
                Some(Ok(())) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            },
            Route::Order if get => match decoded.map(str::parse::<u64>) {
                Some(Ok(_)) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            },
            Route::Orders if self.method == "POST" => self.expected_trade(),
            // Internal: the token is checked before anything else.
            Route::Invalidation if self.token != Some(TOKEN) => StatusCode::UNAUTHORIZED,
            Route::Invalidation if self.method == "POST" && decoded.is_none() => {
                StatusCode::BAD_REQUEST
            }
            Route::Invalidation if self.method == "POST" => StatusCode::OK,
            _ => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn expected_trade(&self) -> StatusCode {
        if !self
            .content_type
            .is_some_and(|c| c.starts_with("application/json"))
        {
            return StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        let valid = serde_json::from_slice::<TradeRequest>(&self.body)
            .map_err(|e| e.to_string())
            .and_then(|t| t.validate());
        if valid.is_err() {
            return StatusCode::BAD_REQUEST;
        }
        match &self.key {
            Some(k) if std::str::from_utf8(k).map(validate_idempotency_key) != Ok(Ok(())) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn build(&self) -> Request<Body> {
        let mut r = Request::builder().method(self.method).uri(self.path());
        if let Some(c) = self.content_type {
            r = r.header("content-type", c);
        }
        if let Some(k) = &self.key {
            r = r.header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(k).expect("generated keys are header values"),
            );
        }
        if let Some(t) = self.token {
            r = r.header(common::http::TOKEN_HEADER, t);
        }
        r.body(Body::from(self.body.clone())).expect("request")
    }
}

#[test]
fn every_generated_request_gets_the_specified_answer() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = rt.block_on(async {
        let state = frontend::open(&dead_config());
        common::http::with_limits(frontend::router(state), common::http::Limits::PUBLIC)
    });
    let mut runner = TestRunner::new(RunnerConfig {
        cases: CASES,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let executions = AtomicU64::new(0);
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u64>::new());
    let start = Instant::now();
    let result = runner.run(&request(), |g| {
        executions.fetch_add(1, Ordering::Relaxed);
        let (status, content_type, body) = rt.block_on(async {
            let resp = app.clone().oneshot(g.build()).await.expect("infallible");
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, content_type, body)
        });
        *statuses
            .lock()
            .expect("not poisoned")
            .entry(status.as_u16())
            .or_default() += 1;
        let shown = String::from_utf8_lossy(&body);
        prop_assert_eq!(
            status,
            g.expected(),
            "{} {} answered {}",
            g.method,
            g.path(),
            shown
        );
        if status.is_client_error() || status.is_server_error() {
            prop_assert!(content_type.starts_with("application/json"));
            if g.method != "HEAD" {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                prop_assert_eq!(
                    v["error"]["code"].as_u64(),
                    Some(u64::from(status.as_u16())),
                    "{}",
                    shown
                );
                prop_assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                );
            }
        }
        Ok(())
    });
    println!(
        "property frontend-router: {} requests in {:.1?}; answers by status {:?}",
        executions.load(Ordering::Relaxed),
        start.elapsed(),
        statuses.lock().expect("not poisoned")
    );
    if let Err(e) = result {
        panic!("property frontend-router failed: {e}");
    }
}
