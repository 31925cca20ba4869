//! The load generator of `bazaar bench`: closed loops over keep-alive
//! HTTP/1.1 connections (hyper's client connection, no pool), each request
//! timed into an HdrHistogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};

use super::Phase;

/// What each connection sends.
#[derive(Clone)]
pub(super) enum Workload {
    /// GET one of these paths, round robin.
    Get(Arc<Vec<String>>),
    /// POST /orders alternating sell and buy of 1 share of one stock per
    /// connection, so quantities never run out.
    Trades(Arc<Vec<String>>),
}

struct Outcome {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One closed-loop connection until `until`.
async fn connection(addr: SocketAddr, work: Workload, index: usize, until: Instant) -> Outcome {
    let mut out = Outcome {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"),
        requests: 0,
        errors: 0,
    };
    let mut sender = None;
    let mut i = index;
    while Instant::now() < until {
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let request = match &work {
            Workload::Get(paths) => Request::builder()
                .method(Method::GET)
                .uri(paths[i % paths.len()].as_str())
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new())),
            Workload::Trades(names) => {
                let kind = if (i - index).is_multiple_of(2) {
                    "sell"
                } else {
                    "buy"
                };
                let body = format!(
                    r#"{{"name":"{}","quantity":1,"type":"{kind}"}}"#,
                    names[index % names.len()]
                );
                Request::builder()
                    .method(Method::POST)
                    .uri("/orders")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
            }
        }
        .expect("a static request shape");
        i += 1;
        let started = Instant::now();
        let ok = match s.send_request(request).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => {
                sender = None;
                false
            }
        };
        out.requests += 1;
        if ok {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            out.hist.saturating_record(micros.max(1));
        } else {
            out.errors += 1;
        }
    }
    out
}

/// What a run of closed loops counted.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    /// Seconds the loops ran.
    elapsed: f64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
            requests: 0,
            errors: 0,
            elapsed: 0.0,
        }
    }

    /// Runs `connections` closed loops for `duration`, connection `i`
    /// against `addrs[i % addrs.len()]`, and adds what they counted.
    async fn run(
        &mut self,
        addrs: &[SocketAddr],
        work: &Workload,
        connections: usize,
        duration: Duration,
    ) {
        let until = Instant::now() + duration;
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .zip(addrs.iter().cycle())
            .map(|(i, &addr)| tokio::spawn(connection(addr, work.clone(), i, until)))
            .collect();
        for t in tasks {
            if let Ok(o) = t.await {
                self.hist.add(&o.hist).expect("same bounds");
                self.requests += o.requests;
                self.errors += o.errors;
            }
        }
        self.elapsed += started.elapsed().as_secs_f64();
    }

    /// The phase's figures, printed as one line.
    #[allow(clippy::cast_precision_loss)]
    fn into_phase(self, name: &str, connections: usize) -> Phase {
        let q = |q: f64| {
            if self.hist.is_empty() {
                0.0
            } else {
                self.hist.value_at_quantile(q) as f64
            }
        };
        let phase = Phase {
            name: name.to_string(),
            connections,
            requests: self.requests,
            errors: self.errors,
            rps: (self.requests - self.errors) as f64 / self.elapsed.max(1e-9),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            rps_ratio: 0.0,
            p50_ratio: 0.0,
        };
        eprintln!(
            "{:<36} conns {:>3}: {:>9.0} req/s  p50 {:>8.0} µs  p99 {:>8.0} µs  p99.9 {:>8.0} µs  errors {}",
            phase.name,
            connections,
            phase.rps,
            phase.p50_us,
            phase.p99_us,
            phase.p999_us,
            phase.errors
        );
        phase
    }
}

/// Runs `connections` closed loops for `duration`, connection `i` against
/// `addrs[i % addrs.len()]` (several front-ends share the load round robin).
pub(super) async fn measure(
    name: &str,
    addrs: &[SocketAddr],
    work: Workload,
    connections: usize,
    duration: Duration,
) -> Phase {
    let mut tally = Tally::new();
    tally.run(addrs, &work, connections, duration).await;
    tally.into_phase(name, connections)
}

/// How long each turn of [`alternate`] lasts.
pub(super) const TURN: Duration = Duration::from_secs(1);

/// Two servers measured by turns of [`TURN`] (`first`, `second`,
/// `first`, ...) until each has had `duration`: their ratio then compares
/// them at the same moments, where two phases run one after the other
/// also compare the machine's speed then and later (it moves by a third
/// between runs minutes apart here).
pub(super) async fn alternate(
    first: (&str, &[SocketAddr]),
    second: (&str, &[SocketAddr]),
    work: Workload,
    connections: usize,
    duration: Duration,
) -> [Phase; 2] {
    let (mut a, mut b) = (Tally::new(), Tally::new());
    let mut left = duration;
    while !left.is_zero() {
        let turn = left.min(TURN);
        a.run(first.1, &work, connections, turn).await;
        b.run(second.1, &work, connections, turn).await;
        left -= turn;
    }
    [
        a.into_phase(first.0, connections),
        b.into_phase(second.0, connections),
    ]
}
