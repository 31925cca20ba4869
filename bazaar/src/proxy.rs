//! A TCP fault proxy for one link: it listens on 127.0.0.1:0 in front of
//! one address, and a test or `bazaar chaos` points one service at it (a
//! per-process override such as `BAZAAR_CATALOG__PORT=<proxy port>`) and
//! then switches the link between three modes:
//!
//! - [`LinkMode::Pass`]: bytes are forwarded both ways.
//! - [`LinkMode::Blackhole`]: the link is cut as if every packet were
//!   dropped. Connections are still accepted and held open, nothing is
//!   forwarded, so the callers' timeouts fire. Connections already open stall
//!   too (a keep-alive pool does not escape the cut). Healing resumes them
//!   where they stopped, as TCP delivers retransmitted bytes once the path
//!   is back, so a request written during the cut may still arrive late.
//! - [`LinkMode::Reset`]: every open connection is closed with a reset, and
//!   new ones are closed as soon as they are accepted.
//!
//! Everything is bounded: at most [`FaultProxy::start_with_limit`]
//! connections at once (further ones wait in the kernel's backlog, which is
//! what a peer behind a cut sees anyway), one [`CHUNK`] of buffer per
//! direction per connection, and the proxy's tasks end when it is dropped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Connections open at once by default: a service's connection pool to one
/// peer is a handful; this leaves room for the ones a cut strands while the
/// caller opens new ones.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Bytes read from one side before they are written to the other: the only
/// buffer of a connection, per direction.
pub const CHUNK: usize = 16 * 1024;
/// How long the proxy tries to reach its target for one connection before
/// it resets the caller's connection (a target that is down).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the link does with the connections through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkMode {
    Pass,
    Blackhole,
    Reset,
}

impl LinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Pass => "pass",
            LinkMode::Blackhole => "blackhole",
            LinkMode::Reset => "reset",
        }
    }
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LinkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pass" => Ok(LinkMode::Pass),
            "blackhole" => Ok(LinkMode::Blackhole),
            "reset" => Ok(LinkMode::Reset),
            other => Err(format!(
                "unknown link mode {other:?} (pass, blackhole, reset)"
            )),
        }
    }
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> OpenGuard {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A proxy in front of one address; see the module docs. Dropping it
/// closes its listener and every connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `target` in [`LinkMode::Pass`], with at most
    /// [`DEFAULT_MAX_CONNECTIONS`] connections.
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_with_limit(target, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Starts a proxy to `target` that serves at most `max_connections`
    /// connections at once (at least one).
    pub async fn start_with_limit(
        target: SocketAddr,
        max_connections: usize,
    ) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(LinkMode::Pass);
        let counters = Arc::new(Counters::default());
        let limit = Arc::new(Semaphore::new(max_connections.max(1)));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            rx,
            limit,
            Arc::clone(&counters),
        ));
        Ok(FaultProxy {
            addr,
            target,
            mode,
            counters,
            task,
        })
    }

    /// Where callers connect (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches the link; takes effect on open connections at once.
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
        tracing::info!(proxy = %self.addr, target = %self.target, %mode, "link mode");
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// Connections through the proxy now (stalled ones included).
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // drops them, which closes every socket.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<LinkMode>,
    limit: Arc<Semaphore>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // A free slot first: over the limit, callers wait in the backlog.
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: retry shortly rather
                // than spin.
                tracing::warn!(error = %e, "fault proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == LinkMode::Reset {
            reset(&client);
            continue;
        }
        let open = OpenGuard::new(&counters);
        let mode = mode.clone();
        connections.spawn(async move {
            serve(client, target, mode).await;
            drop((open, permit));
        });
    }
}

/// One connection: connect to the target once the link passes, then copy
/// both ways until both sides are done or the link is reset.
async fn serve(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<LinkMode>) {
    // Accepted during a cut: the caller's connection is held, and the
    // target is reached only once the link passes again.
    if !wait_pass(&mut mode).await {
        reset(&client);
        return;
    }
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        _ => {
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let outcome = {
        let (mut client_read, mut client_write) = client.split();
        let (mut up_read, mut up_write) = upstream.split();
        tokio::try_join!(
            pipe(&mut client_read, &mut up_write, mode.clone()),
            pipe(&mut up_read, &mut client_write, mode.clone()),
        )
    };
    if outcome.is_err() {
        reset(&client);
        reset(&upstream);
    }
}

/// Copies `from` to `to` while the link passes, stalling (reading and
/// writing nothing) while it is black-holed. Ends with `Ok` at the end of
/// `from`'s stream, with an error when the link is reset or a side fails.
async fn pipe<R, W>(from: &mut R, to: &mut W, mut mode: watch::Receiver<LinkMode>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        if !wait_pass(&mut mode).await {
            return Err(link_reset());
        }
        // Reading and writing are both cancel-safe on a TcpStream: a mode
        // change in the middle loses no byte.
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            () = until_not_pass(&mut mode) => continue,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let mut written = 0;
        while written < n {
            if !wait_pass(&mut mode).await {
                return Err(link_reset());
            }
            tokio::select! {
                w = to.write(&buf[written..n]) => match w? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    w => written += w,
                },
                () = until_not_pass(&mut mode) => {}
            }
        }
    }
}

/// Waits while the link is black-holed: `true` once it passes, `false`
/// when it is reset (or the proxy is gone).
async fn wait_pass(mode: &mut watch::Receiver<LinkMode>) -> bool {
    match mode.wait_for(|m| *m != LinkMode::Blackhole).await {
        Ok(m) => *m == LinkMode::Pass,
        Err(_) => false,
    }
}

/// Resolves once the link no longer passes (or the proxy is gone).
async fn until_not_pass(mode: &mut watch::Receiver<LinkMode>) {
    let _ = mode.wait_for(|m| *m != LinkMode::Pass).await;
}

fn link_reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "the link was reset")
}

/// Makes the close of `stream` a reset (RST) rather than an orderly FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wait::wait_until;

    /// A server that echoes every byte back, on 127.0.0.1:0.
    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the echo comes back through the proxy")
            .unwrap();
        back
    }

    /// Nothing arrives on `s` within `window` (the read is still pending).
    async fn assert_silent(s: &mut TcpStream, window: Duration) {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(window, s.read(&mut b)).await;
        assert!(r.is_err(), "expected a stalled link, the read gave {r:?}");
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let (echo, _srv) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        assert_eq!(proxy.mode(), LinkMode::Pass);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello").await, b"hello");
        // More than one chunk, in both directions.
        let big: Vec<u8> = (0..3 * CHUNK + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        assert_eq!(roundtrip(&mut s, &big).await, big);
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);
    }

    #[tokio::test]
    async fn blackhole_stalls_open_connections_and_healing_resumes_them() {
        let (echo, _srv) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"before").await, b"before");

        proxy.set(LinkMode::Blackhole);
        s.write_all(b"during").await.unwrap();
        assert_silent(&mut s, Duration::from_millis(300)).await;
        // A new connection is accepted and held, not refused or closed.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        assert_silent(&mut late, Duration::from_millis(200)).await;
        assert_eq!(proxy.open_connections(), 2);

        proxy.set(LinkMode::Pass);
        let mut back = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the stalled bytes arrive once healed")
            .unwrap();
        assert_eq!(&back, b"during");
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut back))
            .await
            .expect("the held connection reaches the target once healed")
            .unwrap();
        assert_eq!(&back, b"late");
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_refuses_new_ones() {
        let (echo, _srv) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut open, b"x").await, b"x");
        proxy.set(LinkMode::Blackhole);
        let mut held = TcpStream::connect(proxy.addr()).await.unwrap();
        wait_until(
            "the held connection is accepted",
            Duration::from_secs(5),
            || async { proxy.open_connections() == 2 },
        )
        .await;

        proxy.set(LinkMode::Reset);
        for s in [&mut open, &mut held] {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("a reset link closes the connection");
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "expected end of stream or an error, got {r:?}"
            );
        }
        wait_until(
            "no connection is left open",
            Duration::from_secs(5),
            || async { proxy.open_connections() == 0 },
        )
        .await;
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), fresh.read(&mut b))
            .await
            .expect("a new connection is closed at once");
        assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}");

        proxy.set(LinkMode::Pass);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut again, b"back").await, b"back");
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_free_slot() {
        let (echo, _srv) = echo_server().await;
        let proxy = FaultProxy::start_with_limit(echo, 2).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut a, b"a").await, b"a");
        assert_eq!(roundtrip(&mut b, b"b").await, b"b");
        // The kernel completes the handshake, but the proxy does not take
        // the third connection while two are open.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"c").await.unwrap();
        assert_silent(&mut c, Duration::from_millis(300)).await;
        assert_eq!(proxy.accepted(), 2);
        drop(a);
        let mut back = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
            .await
            .expect("the waiting connection is served once a slot frees")
            .unwrap();
        assert_eq!(&back, b"c");
        assert_eq!(proxy.accepted(), 3);
    }

    #[tokio::test]
    async fn half_close_and_target_down() {
        let (echo, srv) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .expect("the end of stream travels both ways")
            .unwrap();
        assert_eq!(all, b"bye");

        // With the target gone, a caller's connection is closed, not held.
        srv.abort();
        let _ = srv.await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("closed when the target cannot be reached");
        assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}");
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [LinkMode::Pass, LinkMode::Blackhole, LinkMode::Reset] {
            assert_eq!(m.as_str().parse::<LinkMode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert!("cut".parse::<LinkMode>().is_err());
    }
}
