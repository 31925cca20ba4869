//! Bad input, limits and protected internals (issue 5), against a running
//! cluster of the real binaries with a cluster token:
//!
//! - a table of malformed and hostile requests to every service, each
//!   answered with a 4xx and the contract's error JSON, and nothing changed
//!   in the catalog or any order log;
//! - slowloris connections that do not keep other clients from being served;
//! - catalog down, all replicas down, and recovery without restarting the
//!   front-end.
//!
//! Requests go over a raw socket so that paths (`..`), header bytes and
//! `Content-Length` reach the server exactly as written. Run with
//! `--nocapture` to see the table of cases and answers.

mod support;

use std::time::{Duration, Instant};

use bazaar::cluster::{ScratchOptions, Service};
use common::types::{Order, StockRow, TradeKind};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "bad-input-test-token-0123456789";
/// Same length as [`TOKEN`], different bytes.
const WRONG_TOKEN: &str = "bad-input-test-token-9876543210";
/// Time one raw request may take; every case should be answered in
/// milliseconds, so this only turns a hang into a failure.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a request gets while other connections misbehave.
const PROMPT: Duration = Duration::from_secs(2);

fn token_options() -> ScratchOptions {
    ScratchOptions {
        token: Some(TOKEN.to_string()),
        ..ScratchOptions::default()
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// `host:port` of a service.
fn addr(t: &TestCluster, s: Service) -> String {
    t.cluster.url(s).trim_start_matches("http://").to_string()
}

/// Builds the bytes of one HTTP/1.1 request; `Content-Length` is added from
/// the body unless the headers carry one.
fn request_bytes(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends one request on a fresh connection and reads the whole answer
/// (the connection is closed by the server after it).
async fn raw(host: &str, request: &[u8]) -> Result<Reply, String> {
    let exchange = async {
        let mut s = TcpStream::connect(host)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The server may answer (413) and close before it read the whole
        // body: a failed write is fine as long as an answer comes back.
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        if buf.is_empty() {
            return Err(format!("no answer ({read:?})"));
        }
        parse_reply(&buf)
    };
    tokio::time::timeout(REPLY_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REPLY_TIMEOUT:?}"))?
}

fn parse_reply(buf: &[u8]) -> Result<Reply, String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_type = String::new();
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.to_string(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "content-length" => length = v.parse::<usize>().ok(),
            _ => {}
        }
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest[..length.unwrap_or(rest.len()).min(rest.len())].to_vec()
    };
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let stop = (start + size).min(data.len());
        out.extend_from_slice(&data[start..stop]);
        data = &data[(stop + 2).min(data.len())..];
    }
    out
}

/// One row of the table.
struct Case {
    label: String,
    service: Service,
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    expect: u16,
}

/// The cases, built with a few shorthands.
#[derive(Default)]
struct Table(Vec<Case>);

fn json_ct() -> (String, Vec<u8>) {
    ("content-type".into(), b"application/json".to_vec())
}

fn token(value: &str) -> (String, Vec<u8>) {
    (common::http::TOKEN_HEADER.into(), value.as_bytes().to_vec())
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        label: impl Into<String>,
        service: Service,
        method: &'static str,
        path: impl Into<String>,
        headers: Vec<(String, Vec<u8>)>,
        body: impl Into<Vec<u8>>,
        expect: u16,
    ) {
        self.0.push(Case {
            label: label.into(),
            service,
            method,
            path: path.into(),
            headers,
            body: body.into(),
            expect,
        });
    }

    /// `POST /orders` to the front-end with a JSON content type.
    fn trade(&mut self, label: &str, body: impl Into<Vec<u8>>, expect: u16) {
        self.add(
            label,
            Service::Frontend(1),
            "POST",
            "/orders",
            vec![json_ct()],
            body,
            expect,
        );
    }

    /// A valid-looking trade of `name` (a JSON string literal is built from it).
    fn trade_name(&mut self, label: &str, name: &str, expect: u16) {
        let body = json!({"name": name, "quantity": 1, "type": "buy"}).to_string();
        self.trade(label, body, expect);
    }

    fn trade_quantity(&mut self, label: &str, quantity: &str, expect: u16) {
        let body = format!(r#"{{"name":"AAPL","quantity":{quantity},"type":"buy"}}"#);
        self.trade(label, body, expect);
    }

    fn get(&mut self, label: &str, service: Service, path: impl Into<String>, expect: u16) {
        self.add(label, service, "GET", path, vec![], "", expect);
    }

    /// A trade with a valid body and the given `Idempotency-Key` bytes.
    fn keyed(&mut self, label: &str, key: &[u8]) {
        self.add(
            label,
            Service::Frontend(1),
            "POST",
            "/orders",
            vec![json_ct(), ("idempotency-key".into(), key.to_vec())],
            r#"{"name":"AAPL","quantity":1,"type":"buy"}"#,
            400,
        );
    }
}

fn cases() -> Table {
    use Service::{Catalog, Frontend, Order as Replica};
    let mut t = Table::default();

    // Bodies that are not a trade at all.
    t.trade("body not JSON", "{not json", 400);
    t.trade("body empty", "", 400);
    t.trade("body a JSON array", "[]", 400);
    t.trade("body JSON null", "null", 400);
    t.trade("body a JSON string", r#""AAPL""#, 400);
    t.trade(
        "trailing bytes after the JSON object",
        r#"{"name":"AAPL","quantity":1,"type":"buy"} x"#,
        400,
    );
    t.trade(
        "body not UTF-8",
        b"{\"name\":\"AA\xff\xfePL\",\"quantity\":1,\"type\":\"buy\"}".to_vec(),
        400,
    );
    t.trade("JSON nested 5000 deep", "[".repeat(5000), 400);

    // Missing and extra-typed fields.
    t.trade("missing name", r#"{"quantity":1,"type":"buy"}"#, 400);
    t.trade("missing quantity", r#"{"name":"AAPL","type":"buy"}"#, 400);
    t.trade("missing type", r#"{"name":"AAPL","quantity":1}"#, 400);
    t.trade("empty object", "{}", 400);
    t.trade_quantity("quantity a string \"5\"", "\"5\"", 400);
    t.trade_quantity("quantity null", "null", 400);
    t.trade_quantity("quantity true", "true", 400);
    t.trade(
        "name a number",
        r#"{"name":42,"quantity":1,"type":"buy"}"#,
        400,
    );
    t.trade(
        "name an array",
        r#"{"name":["AAPL"],"quantity":1,"type":"buy"}"#,
        400,
    );
    t.trade(
        "type a number",
        r#"{"name":"AAPL","quantity":1,"type":1}"#,
        400,
    );
    t.trade(
        "unknown extra field",
        r#"{"name":"AAPL","quantity":1,"type":"buy","price":1}"#,
        400,
    );
    t.trade(
        "field given twice",
        r#"{"name":"AAPL","name":"MSFT","quantity":1,"type":"buy"}"#,
        400,
    );

    // Quantities.
    t.trade_quantity("quantity 0", "0", 400);
    t.trade_quantity("quantity -1", "-1", 400);
    t.trade_quantity("quantity 1.5", "1.5", 400);
    t.trade_quantity("quantity 5.0", "5.0", 400);
    t.trade_quantity("quantity 1e3", "1e3", 400);
    t.trade_quantity("quantity 1000001", "1000001", 400);
    t.trade_quantity("quantity u64::MAX", &u64::MAX.to_string(), 400);
    t.trade_quantity("quantity 2^64 (beyond u64)", "18446744073709551616", 400);
    t.trade_quantity("quantity 40 digits", &"9".repeat(40), 400);
    t.trade_quantity("quantity -2^63-1", "-9223372036854775809", 400);

    // Trade types.
    t.trade(
        "type \"hold\"",
        r#"{"name":"AAPL","quantity":1,"type":"hold"}"#,
        400,
    );
    t.trade(
        "type \"BUY\" (case)",
        r#"{"name":"AAPL","quantity":1,"type":"BUY"}"#,
        400,
    );
    t.trade(
        "type empty",
        r#"{"name":"AAPL","quantity":1,"type":""}"#,
        400,
    );

    // Stock names in a trade.
    t.trade_name("trade of unknown stock", "NOPE", 404);
    t.trade_name("trade of lowercase name (names are exact)", "aapl", 404);
    t.trade_name("trade name empty", "", 400);
    t.trade_name("trade name 10 kB", &"A".repeat(10 * 1024), 400);
    t.trade_name("trade name with /", "AA/PL", 400);
    t.trade_name("trade name ..", "..", 400);
    t.trade_name("trade name .", ".", 400);
    t.trade_name("trade name ../AAPL", "../AAPL", 400);
    t.trade_name("trade name with literal %00", "AA%00PL", 404);
    t.trade_name("trade name with NUL", "AA\u{0}PL", 400);
    t.trade_name("trade name non-ASCII", "Äpfel", 400);
    t.trade_name("trade name with trailing space", "AAPL ", 400);
    t.trade_name("trade name AAPL? (query char)", "AAPL?", 404);
    t.trade(
        "buy more than the stock holds",
        r#"{"name":"AAPL","quantity":1000,"type":"buy"}"#,
        409,
    );

    // Content types and sizes.
    let body = r#"{"name":"AAPL","quantity":1,"type":"buy"}"#;
    t.add(
        "no content type",
        Frontend(1),
        "POST",
        "/orders",
        vec![],
        body,
        415,
    );
    t.add(
        "content type text/plain",
        Frontend(1),
        "POST",
        "/orders",
        vec![("content-type".into(), b"text/plain".to_vec())],
        body,
        415,
    );
    t.add(
        "content type form",
        Frontend(1),
        "POST",
        "/orders",
        vec![(
            "content-type".into(),
            b"application/x-www-form-urlencoded".to_vec(),
        )],
        "name=AAPL&quantity=1&type=buy",
        415,
    );
    let padded = format!(
        r#"{{"name":"AAPL","quantity":1,"type":"buy","pad":"{}"}}"#,
        "x".repeat(20 * 1024)
    );
    t.trade("body of 20 kB (limit 16 kB)", padded, 413);
    t.add(
        "Content-Length of 1 GB announced",
        Frontend(1),
        "POST",
        "/orders",
        vec![json_ct(), ("content-length".into(), b"1000000000".to_vec())],
        body,
        413,
    );

    // Idempotency keys.
    t.keyed("Idempotency-Key 129 characters", "k".repeat(129).as_bytes());
    t.keyed("Idempotency-Key empty", b"");
    t.keyed("Idempotency-Key with a space", b"bad key");
    t.keyed("Idempotency-Key with a tab", b"bad\tkey");
    t.keyed("Idempotency-Key with byte 0xFF", b"key\xff");

    // Lookups.
    t.get("lookup unknown stock", Frontend(1), "/stocks/NOPE", 404);
    t.get("lookup empty name /stocks/", Frontend(1), "/stocks/", 404);
    t.get("lookup /stocks", Frontend(1), "/stocks", 404);
    t.get(
        "lookup name 10 kB",
        Frontend(1),
        format!("/stocks/{}", "A".repeat(10 * 1024)),
        400,
    );
    t.get("lookup name with %2F", Frontend(1), "/stocks/AA%2FPL", 400);
    t.get("lookup /stocks/..", Frontend(1), "/stocks/..", 400);
    t.get("lookup /stocks/%2E%2E", Frontend(1), "/stocks/%2E%2E", 400);
    t.get(
        "lookup /stocks/../health",
        Frontend(1),
        "/stocks/../health",
        404,
    );
    t.get("lookup name with %00", Frontend(1), "/stocks/AA%00PL", 400);
    t.get(
        "lookup name non-ASCII %C3%84pfel",
        Frontend(1),
        "/stocks/%C3%84pfel",
        400,
    );
    t.get("lookup name not UTF-8 %FF", Frontend(1), "/stocks/%FF", 400);
    t.get(
        "lookup name with space %20",
        Frontend(1),
        "/stocks/AAPL%20",
        400,
    );
    t.get("lookup AAPL%3F (?)", Frontend(1), "/stocks/AAPL%3F", 404);
    t.get("lookup AAPL%23x (#)", Frontend(1), "/stocks/AAPL%23x", 404);
    t.get("lookup AAPL%3Fa=b", Frontend(1), "/stocks/AAPL%3Fa=b", 404);
    t.get(
        "lookup /stocks/AAPL/extra",
        Frontend(1),
        "/stocks/AAPL/extra",
        404,
    );

    // Order numbers.
    t.get("order -1", Frontend(1), "/orders/-1", 400);
    t.get(
        "order 2^64 (beyond u64)",
        Frontend(1),
        "/orders/18446744073709551616",
        400,
    );
    t.get("order abc", Frontend(1), "/orders/abc", 400);
    t.get("order 1.5", Frontend(1), "/orders/1.5", 400);
    t.get("order 0x10", Frontend(1), "/orders/0x10", 400);
    t.get("order with space %200", Frontend(1), "/orders/%200", 400);
    t.get(
        "order 10 kB of digits",
        Frontend(1),
        format!("/orders/{}", "9".repeat(10 * 1024)),
        400,
    );
    t.get("order /orders/ (empty)", Frontend(1), "/orders/", 404);
    t.get(
        "order not (yet) existing",
        Frontend(1),
        "/orders/999999",
        404,
    );

    // Routes and methods.
    t.get("unknown route", Frontend(1), "/nope", 404);
    t.get("root /", Frontend(1), "/", 404);
    t.add(
        "POST /stocks/AAPL",
        Frontend(1),
        "POST",
        "/stocks/AAPL",
        vec![],
        "",
        405,
    );
    t.get("GET /orders", Frontend(1), "/orders", 405);
    t.add(
        "DELETE /orders/0",
        Frontend(1),
        "DELETE",
        "/orders/0",
        vec![],
        "",
        405,
    );
    t.add(
        "PUT /orders",
        Frontend(1),
        "PUT",
        "/orders",
        vec![json_ct()],
        body,
        405,
    );
    t.add(
        "POST /health",
        Frontend(1),
        "POST",
        "/health",
        vec![],
        "",
        405,
    );

    // Internal endpoints without (or with a wrong) cluster token: 401.
    t.add(
        "frontend /invalidation without token",
        Frontend(1),
        "POST",
        "/invalidation/AAPL",
        vec![],
        "",
        401,
    );
    t.add(
        "frontend /invalidation wrong token",
        Frontend(1),
        "POST",
        "/invalidation/AAPL",
        vec![token(WRONG_TOKEN)],
        "",
        401,
    );
    let apply = r#"{"epoch":1000,"base":1,"trades":[{"name":"AAPL","kind":"buy","quantity":7,"key":"evil"}]}"#;
    t.add(
        "catalog /apply without token",
        Catalog,
        "POST",
        "/apply",
        vec![json_ct()],
        apply,
        401,
    );
    t.add(
        "catalog /apply wrong token",
        Catalog,
        "POST",
        "/apply",
        vec![json_ct(), token(WRONG_TOKEN)],
        apply,
        401,
    );
    t.add(
        "catalog /apply token of wrong length",
        Catalog,
        "POST",
        "/apply",
        vec![json_ct(), token("x")],
        apply,
        401,
    );
    t.add(
        "catalog /fence without token",
        Catalog,
        "POST",
        "/fence",
        vec![json_ct()],
        r#"{"epoch":1000000}"#,
        401,
    );
    t.get(
        "catalog /applied without token",
        Catalog,
        "/applied?from=0&limit=10",
        401,
    );
    t.get("catalog /dump without token", Catalog, "/dump", 401);
    let trade_cmd = r#"{"name":"AAPL","kind":"buy","quantity":1,"key":"evil"}"#;
    let propagate = r#"{"epoch":999,"leader_id":1,"orders":[{"number":1,"name":"AAPL","kind":"buy","quantity":1,"key":"evil"}],"next":2}"#;
    for id in 1..=3 {
        t.add(
            format!("order-{id} /propagate without token"),
            Replica(id),
            "POST",
            "/propagate",
            vec![json_ct()],
            propagate,
            401,
        );
        t.add(
            format!("order-{id} /leader without token"),
            Replica(id),
            "POST",
            "/leader",
            vec![json_ct()],
            r#"{"epoch":999,"leader_id":1}"#,
            401,
        );
    }
    t.add(
        "order-3 /orders (trade) without token",
        Replica(3),
        "POST",
        "/orders",
        vec![json_ct()],
        trade_cmd,
        401,
    );
    t.add(
        "order-3 /orders (trade) wrong token",
        Replica(3),
        "POST",
        "/orders",
        vec![json_ct(), token(WRONG_TOKEN)],
        trade_cmd,
        401,
    );
    t.get(
        "order-3 /orders/0 without token",
        Replica(3),
        "/orders/0",
        401,
    );
    t.get(
        "order-2 /synchronize without token",
        Replica(2),
        "/synchronize",
        401,
    );
    t.get(
        "order-1 /log without token",
        Replica(1),
        "/log?from=0&limit=10",
        401,
    );

    // Internal endpoints with the token but malformed requests: still 4xx.
    t.add(
        "catalog /apply with token, body {}",
        Catalog,
        "POST",
        "/apply",
        vec![json_ct(), token(TOKEN)],
        "{}",
        400,
    );
    t.add(
        "catalog /fence with token, text/plain",
        Catalog,
        "POST",
        "/fence",
        vec![token(TOKEN)],
        r#"{"epoch":1}"#,
        415,
    );
    t.add(
        "catalog /applied with token, from=abc",
        Catalog,
        "GET",
        "/applied?from=abc&limit=1",
        vec![token(TOKEN)],
        "",
        400,
    );
    t.add(
        "order-3 /orders with token, quantity 0",
        Replica(3),
        "POST",
        "/orders",
        vec![json_ct(), token(TOKEN)],
        r#"{"name":"AAPL","kind":"buy","quantity":0,"key":"k"}"#,
        400,
    );
    t.add(
        "order-2 /leader with token, unknown leader id",
        Replica(2),
        "POST",
        "/leader",
        vec![json_ct(), token(TOKEN)],
        r#"{"epoch":999,"leader_id":99}"#,
        400,
    );
    t.add(
        "order-1 /propagate with token, body []",
        Replica(1),
        "POST",
        "/propagate",
        vec![json_ct(), token(TOKEN)],
        "[]",
        400,
    );
    t.add(
        "order-1 /log with token, limit missing",
        Replica(1),
        "GET",
        "/log?from=0",
        vec![token(TOKEN)],
        "",
        400,
    );
    t.add(
        "order-1 /orders/-1 with token",
        Replica(1),
        "GET",
        "/orders/-1",
        vec![token(TOKEN)],
        "",
        400,
    );
    t
}

/// Everything a bad request must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    catalog: Vec<StockRow>,
    orders: Vec<Vec<Order>>,
}

fn snapshot(t: &TestCluster) -> Snapshot {
    Snapshot {
        catalog: t.cluster.dump_catalog().expect("catalog dump"),
        orders: (1..=3)
            .map(|id| t.cluster.dump_orders(id).expect("order dump"))
            .collect(),
    }
}

/// Checks one answer against its case; `None` when it is right.
fn verdict(case: &Case, reply: &Result<Reply, String>) -> Option<String> {
    let r = match reply {
        Err(e) => return Some(e.clone()),
        Ok(r) => r,
    };
    if r.status != case.expect {
        return Some(format!("status {} instead of {}", r.status, case.expect));
    }
    if !r.content_type.starts_with("application/json") {
        return Some(format!("content type {:?}", r.content_type));
    }
    let body = r.json();
    let message_ok = body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty());
    if body["error"]["code"].as_u64() != Some(u64::from(r.status)) || !message_ok {
        return Some(format!("not the contract's error JSON: {body}"));
    }
    // A caller's mistake is named, not answered with the bare reason phrase.
    if r.status == 400 && body["error"]["message"] == "Bad Request" {
        return Some(format!("a 400 that does not say what is wrong: {body}"));
    }
    None
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// A connection that sends part of a request and then nothing.
struct Stalled {
    stream: TcpStream,
    what: &'static str,
}

async fn stall(host: &str, partial: &[u8], what: &'static str) -> Stalled {
    let mut stream = TcpStream::connect(host).await.expect("connect");
    stream.write_all(partial).await.expect("partial write");
    Stalled { stream, what }
}

/// Waits (within `limit`) for the server to give up on a stalled connection;
/// returns what it sent before closing and how long that took.
async fn server_gives_up(mut s: Stalled, since: Instant, limit: Duration) -> (String, Duration) {
    let mut buf = Vec::new();
    let outcome = tokio::time::timeout(limit, s.stream.read_to_end(&mut buf)).await;
    assert!(
        outcome.is_ok(),
        "the server kept the {} connection open for more than {limit:?}",
        s.what
    );
    let first_line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("(closed without an answer)")
        .to_string();
    (first_line, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_error_json_and_changes_nothing() {
    let t = TestCluster::start(token_options()).await;
    let frontend = addr(&t, Service::Frontend(1));

    // One good trade first, so that the logs are not empty and an order can
    // be looked up.
    let (status, body) = t.trade("AAPL", TradeKind::Buy, 5, Some("setup")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(t.quantity("AAPL").await, 95);
    t.wait_replicas_at(Some(0)).await;
    let before = snapshot(&t);

    // Slowloris: many connections that send half a header, and one that
    // sends headers and a part of its body, then stall for the whole run.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..64 {
        stalled.push(
            stall(
                &frontend,
                b"GET /stocks/AAPL HTTP/1.1\r\nhost: x\r\nx-slow: ",
                "half-header",
            )
            .await,
        );
    }
    let slow_body = stall(
        &frontend,
        b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"name\":",
        "slow-body",
    )
    .await;

    // Another client is served promptly meanwhile.
    let t0 = Instant::now();
    let lookup = tokio::time::timeout(PROMPT, t.get("/stocks/AAPL")).await;
    let lookup_time = t0.elapsed();
    assert!(
        matches!(lookup, Ok((200, _))),
        "a lookup next to 65 stalled connections was not served within {PROMPT:?}: {lookup:?}"
    );
    let t0 = Instant::now();
    let query = tokio::time::timeout(PROMPT, t.get("/orders/0")).await;
    let query_time = t0.elapsed();
    assert!(
        matches!(query, Ok((200, _))),
        "an order query next to 65 stalled connections was not served within {PROMPT:?}: {query:?}"
    );

    // The table.
    let table = cases();
    assert!(table.0.len() >= 40, "at least 40 cases");
    let mut failures = Vec::new();
    println!();
    println!(
        "{:>3}  {:<46} {:<9} {:<34} {:>6} {:>4}  body",
        "#", "case", "service", "request", "expect", "got"
    );
    for (i, case) in table.0.iter().enumerate() {
        let host = addr(&t, case.service);
        let bytes = request_bytes(&host, case.method, &case.path, &case.headers, &case.body);
        let reply = raw(&host, &bytes).await;
        let wrong = verdict(case, &reply);
        let (got, shown) = match &reply {
            Ok(r) => (
                r.status.to_string(),
                String::from_utf8_lossy(&r.body).into_owned(),
            ),
            Err(e) => ("-".into(), e.clone()),
        };
        println!(
            "{:>3}  {:<46} {:<9} {:<34} {:>6} {:>4}  {}{}",
            i + 1,
            shorten(&case.label, 46),
            case.service.to_string(),
            shorten(&format!("{} {}", case.method, case.path), 34),
            case.expect,
            got,
            shorten(&shown, 110),
            if wrong.is_some() { "   <-- WRONG" } else { "" }
        );
        if let Some(w) = wrong {
            failures.push(format!("case {} ({}): {w}", i + 1, case.label));
        }
    }
    println!(
        "{} cases; a lookup took {lookup_time:?} and an order query {query_time:?} next to 65 stalled connections",
        table.0.len()
    );

    // The server closes the stalled connections on its own: the half-header
    // ones after the header read timeout, the slow body with a 408 after
    // the request timeout.
    let limits = common::http::Limits::PUBLIC;
    let (answer, took) = server_gives_up(
        slow_body,
        started,
        limits.request_timeout + Duration::from_secs(5),
    )
    .await;
    println!("slow-body connection: {answer:?} after {took:?}");
    assert!(
        answer.contains(" 408"),
        "a stalled body gets 408, got {answer:?}"
    );
    let mut closed = 0;
    for s in stalled {
        let (answer, took) = server_gives_up(
            s,
            started,
            limits.header_read_timeout + Duration::from_secs(5),
        )
        .await;
        if closed == 0 {
            println!("half-header connections: first closed after {took:?} with {answer:?}");
        }
        closed += 1;
    }
    assert_eq!(closed, 64);

    // Nothing changed anywhere.
    let after = snapshot(&t);
    assert_eq!(
        before, after,
        "a bad request changed the catalog or an order log"
    );
    assert_eq!(t.quantity("AAPL").await, 95);
    assert!(
        failures.is_empty(),
        "{} of {} cases were answered wrongly:\n{}",
        failures.len(),
        table.0.len(),
        failures.join("\n")
    );
}

/// A request through the front-end, timed.
async fn timed<F: std::future::Future<Output = (u16, Value)>>(f: F) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let (status, body) = f.await;
    (status, body, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_answer_503_quickly_and_recover_without_a_frontend_restart() {
    let mut t = TestCluster::start(token_options()).await;
    let frontend_pid = t.cluster.pid(Service::Frontend(1));
    // AAPL is cached, a trade is on record.
    assert_eq!(t.quantity("AAPL").await, 100);
    let (status, body) = t.trade("MSFT", TradeKind::Buy, 1, Some("before")).await;
    assert_eq!(status, 200, "{body}");

    // Catalog down: trades 503 (after the front-end's bounded retries),
    // cached lookups served, uncached ones 503 at once, orders readable.
    t.cluster.kill(Service::Catalog).unwrap();
    let (status, body, took) = timed(t.trade("IBM", TradeKind::Buy, 1, Some("no-catalog"))).await;
    println!("catalog down: trade -> {status} in {took:?}: {body}");
    assert_error(status, &body, 503);
    assert!(
        took < Duration::from_secs(12),
        "a trade without catalog took {took:?}"
    );
    let (status, body, took) = timed(t.get("/stocks/AAPL")).await;
    println!("catalog down: cached lookup -> {status} in {took:?}");
    assert_eq!(status, 200, "the cached AAPL is served: {body}");
    assert_eq!(body["data"]["quantity"], 100);
    let (status, body, took) = timed(t.get("/stocks/GOOG")).await;
    println!("catalog down: uncached lookup -> {status} in {took:?}");
    assert_error(status, &body, 503);
    assert!(took < PROMPT, "an uncached lookup took {took:?}");
    let (status, body) = t.get("/orders/0").await;
    assert_eq!(status, 200, "orders are still readable: {body}");

    // The catalog comes back: trades go through again.
    t.cluster.start_and_wait(Service::Catalog).await.unwrap();
    let (status, body) = t
        .trade_until_done("IBM", TradeKind::Buy, 1, "after-catalog")
        .await;
    assert_eq!(status, 200, "{body}");
    let ibm = body["data"]["transaction_number"]
        .as_u64()
        .expect("a number");
    assert_eq!(t.quantity("GOOG").await, 100);

    // Every replica down: trades and order queries 503 quickly, lookups fine.
    for id in 1..=3 {
        t.cluster.kill(Service::Order(id)).unwrap();
    }
    let (status, body, took) = timed(t.trade("AAPL", TradeKind::Buy, 1, Some("no-replica"))).await;
    println!("replicas down: trade -> {status} in {took:?}: {body}");
    assert_error(status, &body, 503);
    assert!(took < PROMPT, "a trade without replicas took {took:?}");
    let (status, body, took) = timed(t.get("/orders/0")).await;
    println!("replicas down: order query -> {status} in {took:?}");
    assert_error(status, &body, 503);
    assert!(
        took < PROMPT,
        "an order query without replicas took {took:?}"
    );
    assert_eq!(t.quantity("AAPL").await, 100);

    // The replicas come back; the same front-end process finds a leader.
    for id in 1..=3 {
        t.cluster.start(Service::Order(id)).unwrap();
    }
    for id in 1..=3 {
        t.cluster
            .wait_healthy(Service::Order(id), bazaar::cluster::START_TIMEOUT)
            .await
            .unwrap();
    }
    let (status, body) = t
        .trade_until_done("AAPL", TradeKind::Sell, 3, "after-replicas")
        .await;
    assert_eq!(status, 200, "{body}");
    let last = body["data"]["transaction_number"]
        .as_u64()
        .expect("a number");
    assert_eq!(last, ibm + 1, "numbers continue without a gap");
    let (status, body) = t.get(&format!("/orders/{ibm}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["name"], "IBM");
    assert_eq!(t.quantity("AAPL").await, 103);
    assert_eq!(
        t.cluster.pid(Service::Frontend(1)),
        frontend_pid,
        "the front-end was not restarted"
    );

    // Nothing was applied twice or without an order.
    t.wait_replicas_at(Some(last)).await;
    let orders = t.cluster.dump_orders(3).unwrap();
    assert_contiguous(&orders);
    assert_conservation(&t.cluster.dump_catalog().unwrap(), &orders, 100);
}
