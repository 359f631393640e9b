//! A TCP proxy for one directed link: the connections node `from` opens to node `to`.
//!
//! # Model
//!
//! The proxy listens on `127.0.0.1:0`; node `from` is told to dial it instead of `to`'s real address, and each
//! connection it accepts is forwarded to that address. A connection carries bytes both ways, so each [`Proxy`] has
//! two [`Direction`]s: [`Direction::Upstream`] (`from`'s bytes to `to`: its requests) and
//! [`Direction::Downstream`] (`to`'s bytes to `from`: the replies). Each direction has its own [`Fault`], which can
//! be changed at any time and applies at once to every connection, open or future.
//!
//! A direction is a pump: a reader takes a chunk (whatever one `read` returns, up to 16 KiB) from the source socket
//! and queues it, stamped with its arrival time; a writer takes chunks in order, holds each as the fault says, then
//! writes it to the other socket. The queue is short, so when the writer holds, the reader soon stops reading and
//! TCP flow control pushes back on the sender, as a slow or dead network would.
//!
//! * [`Fault::Blackhole`] stops the reader outright rather than reading and discarding: discarding would corrupt
//!   the byte stream (TCP guarantees the peer sees every byte or a broken connection), while not reading is what
//!   an iptables `DROP` looks like to the endpoints: bytes sit unacknowledged, the sender's window fills, requests
//!   time out, and nothing is delivered late or out of order. A chunk already read when the blackhole starts is in
//!   flight; the writer holds it too. Healing resumes the stalled bytes in order. New connections are still
//!   accepted (the kernel completes the handshake before the proxy sees it), they just carry nothing that way.
//! * [`Fault::Delay`] holds each chunk until `arrival + base + uniform(0, jitter)`. The writer is FIFO, so a chunk
//!   that drew a shorter delay than the one before it waits for it: order is preserved and delay adds latency
//!   without capping throughput.
//! * [`Fault::Loss`]: TCP cannot lose bytes without breaking the stream, so a lost "packet" is modelled as what TCP
//!   does about one: with `probability` per chunk the chunk is held for `stall` (a retransmission timeout, e.g.
//!   200 ms), and, the writer being FIFO, so is everything behind it (head-of-line blocking). The application sees
//!   latency spikes, never missing bytes.
//!
//! [`Proxy::reset_all`] closes every open connection with an RST (zero linger), as a crashed or rebooted peer
//! would; the listener stays up so reconnects work. Dropping the [`Proxy`] stops the listener and closes every
//! connection: each connection task lives in a `JoinSet` owned by the accept task, which the drop aborts.
//!
//! Chunk boundaries are whatever the kernel hands one `read`, so "per chunk" is roughly "per write burst" of the
//! sender: one gRPC message or a coalesced batch, not a TCP segment.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Largest chunk one read takes: big enough for a Raft append batch, small enough that a held chunk is not much.
const CHUNK: usize = 16 * 1024;

/// Chunks queued between a direction's reader and writer. This is the "in flight" part of the link: beyond it the
/// reader stops and the sender sees backpressure.
const QUEUE: usize = 32;

/// Which way bytes travel on a link's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the dialing node `from` to `to`: requests.
    Upstream,
    /// From `to` back to `from`: replies.
    Downstream,
}

/// What happens to bytes going one way on a link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Fault {
    /// Forward as soon as read.
    #[default]
    Pass,
    /// Stop reading: nothing flows until the fault changes, and the sender stalls on flow control.
    Blackhole,
    /// Hold each chunk for `base + uniform(0, jitter)` after it arrived, preserving order.
    Delay {
        /// Minimum added latency.
        base: Duration,
        /// Upper bound of the uniform extra latency.
        jitter: Duration,
    },
    /// With `probability` per chunk, hold the chunk (and, FIFO, everything behind it) for `stall`: a lost segment
    /// and its retransmission, since TCP cannot lose bytes.
    Loss {
        /// Chance in `[0, 1]` that a chunk is "lost".
        probability: f64,
        /// How long a lost chunk is held: the retransmission timeout.
        stall: Duration,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Pass => write!(f, "pass"),
            Fault::Blackhole => write!(f, "blackhole"),
            Fault::Delay { base, jitter } => write!(f, "delay {base:?}+0..{jitter:?}"),
            Fault::Loss { probability, stall } => write!(f, "loss p={probability} stall {stall:?}"),
        }
    }
}

/// Counters of one direction, since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirStats {
    /// Bytes written to the destination.
    pub bytes: u64,
    /// Chunks written to the destination.
    pub chunks: u64,
    /// Chunks held by a [`Fault::Delay`].
    pub delayed: u64,
    /// Chunks "lost" under [`Fault::Loss`], i.e. stalled for the retransmission timeout.
    pub stalled: u64,
}

/// Counters of a proxy, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// `from`'s bytes to `to`.
    pub upstream: DirStats,
    /// `to`'s bytes to `from`.
    pub downstream: DirStats,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed by [`Proxy::reset_all`].
    pub reset: u64,
}

#[derive(Default)]
struct DirCounters {
    bytes: AtomicU64,
    chunks: AtomicU64,
    delayed: AtomicU64,
    stalled: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            bytes: self.bytes.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
        }
    }
}

/// One direction's fault and counters, shared by the proxy handle and every connection's pump.
struct Dir {
    fault: watch::Sender<Fault>,
    counters: DirCounters,
}

impl Dir {
    fn new() -> Self {
        Self { fault: watch::Sender::new(Fault::Pass), counters: DirCounters::default() }
    }
}

struct Shared {
    up: Dir,
    down: Dir,
    /// Bumped by `reset_all`; every connection watches it.
    reset: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
}

impl Shared {
    fn dir(&self, dir: Direction) -> &Dir {
        match dir {
            Direction::Upstream => &self.up,
            Direction::Downstream => &self.down,
        }
    }
}

/// A TCP proxy for the connections node `from` opens to node `to`. See the module docs for the fault model.
///
/// Dropping it stops the listener and closes every connection it forwards.
pub struct Proxy {
    from: u64,
    to: u64,
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("upstream", &self.fault(Direction::Upstream))
            .field("downstream", &self.fault(Direction::Downstream))
            .finish()
    }
}

impl Proxy {
    /// Binds `127.0.0.1:0` and forwards every accepted connection to `target`. Must be called within a tokio
    /// runtime; the proxy's tasks run there until it is dropped.
    pub async fn start(from: u64, to: u64, target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            up: Dir::new(),
            down: Dir::new(),
            reset: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Ok(Proxy { from, to, addr, target, shared, accept })
    }

    /// The node whose connections this proxy carries.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// The node they go to.
    pub fn to(&self) -> u64 {
        self.to
    }

    /// The address `from` must dial to reach `to` through this proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `to`'s real address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets the fault of one direction; open connections follow at once.
    pub fn set(&self, dir: Direction, fault: Fault) {
        // Only a real change wakes the pumps: a re-sent Delay or Loss would otherwise re-draw every held chunk's
        // hold and the counters would count it twice.
        self.shared.dir(dir).fault.send_if_modified(|f| {
            let changed = *f != fault;
            *f = fault;
            changed
        });
    }

    /// Sets the same fault both ways.
    pub fn set_both(&self, fault: Fault) {
        self.set(Direction::Upstream, fault);
        self.set(Direction::Downstream, fault);
    }

    /// The current fault of one direction.
    pub fn fault(&self, dir: Direction) -> Fault {
        *self.shared.dir(dir).fault.borrow()
    }

    /// Both directions back to [`Fault::Pass`]; stalled and held bytes flow again, in order.
    pub fn heal(&self) {
        self.set_both(Fault::Pass);
    }

    /// Closes every open connection with an RST. The listener stays up: the next dial gets a fresh connection
    /// (subject to the current faults).
    pub fn reset_all(&self) {
        self.shared.reset.send_modify(|epoch| *epoch += 1);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            upstream: s.up.counters.snapshot(),
            downstream: s.down.counters.snapshot(),
            accepted: s.accepted.load(Ordering::Relaxed),
            open: s.open.load(Ordering::Relaxed),
            reset: s.resets.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the listener and the JoinSet of connections: aborting it drops both, and dropping a
        // JoinSet aborts its tasks, whose sockets close as they are dropped.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    // Subscribed here, not in the task, so a reset issued right after the accept still reaches it.
                    let reset = shared.reset.subscribe();
                    conns.spawn(connection(client, target, shared.clone(), reset));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning, the listener itself is still fine.
                    tracing::warn!(%target, error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            // Reap finished connections so the set does not grow for the life of the run.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Decrements the open count however the connection task ends, including by abort.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(client: TcpStream, target: SocketAddr, shared: Arc<Shared>, mut reset: watch::Receiver<u64>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(shared.clone());
    reset.borrow_and_update();
    let server = tokio::select! {
        server = TcpStream::connect(target) => server,
        _ = reset.changed() => {
            shared.resets.fetch_add(1, Ordering::Relaxed);
            rst_on_close(&client);
            return;
        }
    };
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            // Closing the accepted socket is what the dialer would see if the peer were down: a refused or
            // broken connection.
            tracing::debug!(%target, error = %e, "proxy could not reach target");
            return;
        }
    };
    // Raft's messages are small and latency-bound; Nagle on the proxy hop would add delay no real link has.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let up = pump(&mut client_r, &mut server_w, &shared.up);
    let down = pump(&mut server_r, &mut client_w, &shared.down);
    let was_reset = tokio::select! {
        _ = async { tokio::try_join!(up, down) } => false,
        _ = reset.changed() => true,
    };
    if was_reset {
        shared.resets.fetch_add(1, Ordering::Relaxed);
        rst_on_close(client_w.as_ref());
        rst_on_close(server_w.as_ref());
    }
}

/// Zero linger turns the close that follows (when the socket is dropped) into an RST: the peer's next read or
/// write fails at once, like a peer that crashed, instead of seeing an orderly EOF.
fn rst_on_close(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

struct Chunk {
    data: Vec<u8>,
    arrived: Instant,
}

/// Copies one direction until EOF (then half-closes the destination) or an error. Reader and writer run
/// concurrently so that chunks held by the writer do not stop the reader until the queue is full.
async fn pump(src: &mut OwnedReadHalf, dst: &mut OwnedWriteHalf, dir: &Dir) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE);
    let reader = async move {
        let mut fault = dir.fault.subscribe();
        let mut buf = vec![0u8; CHUNK];
        loop {
            while *fault.borrow_and_update() == Fault::Blackhole {
                fault.changed().await.map_err(|_| gone())?;
            }
            let n = tokio::select! {
                n = src.read(&mut buf) => n?,
                // A blackhole must stop reading now, not after the next chunk arrives; `read` is cancel-safe.
                changed = fault.changed() => {
                    changed.map_err(|_| gone())?;
                    continue;
                }
            };
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            let chunk = Chunk { data: buf[..n].to_vec(), arrived: Instant::now() };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        let mut fault = dir.fault.subscribe();
        let mut rng = StdRng::from_entropy();
        while let Some(chunk) = rx.recv().await {
            hold(&chunk, &mut fault, &mut rng, &dir.counters).await?;
            dst.write_all(&chunk.data).await?;
            dir.counters.bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            dir.counters.chunks.fetch_add(1, Ordering::Relaxed);
        }
        // EOF from the source, everything before it delivered: pass the half-close on.
        dst.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Waits until the current fault lets `chunk` be written. Re-evaluated whenever the fault changes, so a heal
/// releases held chunks at once and a new blackhole catches chunks already queued.
async fn hold(
    chunk: &Chunk,
    fault: &mut watch::Receiver<Fault>,
    rng: &mut StdRng,
    counters: &DirCounters,
) -> io::Result<()> {
    let (mut counted_delay, mut counted_stall) = (false, false);
    loop {
        let current = *fault.borrow_and_update();
        let until = match current {
            Fault::Pass => return Ok(()),
            Fault::Blackhole => None,
            Fault::Delay { base, jitter } => {
                if !counted_delay {
                    counted_delay = true;
                    counters.delayed.fetch_add(1, Ordering::Relaxed);
                }
                let extra = if jitter.is_zero() { Duration::ZERO } else { rng.gen_range(Duration::ZERO..=jitter) };
                Some(chunk.arrived + base + extra)
            }
            Fault::Loss { probability, stall } => {
                // `gen_bool` panics outside [0, 1], and NaN slips through `clamp`: a bad knob must not kill a pump.
                let p = if probability > 0.0 { probability.min(1.0) } else { 0.0 };
                if !rng.gen_bool(p) {
                    return Ok(());
                }
                if !counted_stall {
                    counted_stall = true;
                    counters.stalled.fetch_add(1, Ordering::Relaxed);
                }
                Some(chunk.arrived + stall)
            }
        };
        match until {
            Some(until) => tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                changed = fault.changed() => changed.map_err(|_| gone())?,
            },
            None => fault.changed().await.map_err(|_| gone())?,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "proxy dropped")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::{Direction, Fault, Proxy};
    use crate::net::testkit::{line_server, raw_server, read_n, Client, BLOCKED};

    const SOON: Duration = Duration::from_secs(2);

    /// Opens a connection through `proxy` and returns both ends: the dialer's and the target's.
    async fn connected(
        proxy: &Proxy,
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
    ) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(proxy.addr()).await.unwrap();
        let server = tokio::time::timeout(SOON, accepted.recv()).await.unwrap().unwrap();
        (client, server)
    }

    /// Whether the peer closed or reset the connection within `SOON`.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(SOON, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts() {
        let (target, seen) = line_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        assert_eq!(proxy.target(), target);
        let mut client = Client::connect(proxy.addr()).await;
        assert_eq!(client.request("hello", SOON).await.as_deref(), Some("re:hello"));
        assert_eq!(client.request("again", SOON).await.as_deref(), Some("re:again"));
        assert_eq!(*seen.lock().unwrap(), ["hello", "again"]);
        let stats = proxy.stats();
        assert_eq!((stats.upstream.bytes, stats.downstream.bytes), (12, 18));
        assert_eq!((stats.accepted, stats.open), (1, 1));
    }

    #[tokio::test]
    async fn blackhole_stalls_exactly_one_direction_and_heal_resumes_in_order() {
        let (target, mut accepted) = raw_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        client.write_all(b"a").await.unwrap();
        assert_eq!(read_n(&mut server, 1, SOON).await.as_deref(), Some(&b"a"[..]));

        proxy.set(Direction::Upstream, Fault::Blackhole);
        client.write_all(b"b").await.unwrap();
        client.write_all(b"c").await.unwrap();
        // A connection opened during the blackhole is accepted and reaches the target, but carries nothing up.
        let (mut client2, mut server2) = connected(&proxy, &mut accepted).await;
        client2.write_all(b"z").await.unwrap();
        let (up, up2) = tokio::join!(read_n(&mut server, 1, BLOCKED), read_n(&mut server2, 1, BLOCKED));
        assert_eq!((up, up2), (None, None), "blackholed bytes went through");
        // The other direction still flows, on both connections.
        server.write_all(b"x").await.unwrap();
        server2.write_all(b"y").await.unwrap();
        assert_eq!(read_n(&mut client, 1, SOON).await.as_deref(), Some(&b"x"[..]));
        assert_eq!(read_n(&mut client2, 1, SOON).await.as_deref(), Some(&b"y"[..]));

        proxy.heal();
        assert_eq!(read_n(&mut server, 2, SOON).await.as_deref(), Some(&b"bc"[..]));
        assert_eq!(read_n(&mut server2, 1, SOON).await.as_deref(), Some(&b"z"[..]));
    }

    #[tokio::test]
    async fn blackholed_replies_leave_requests_unanswered_until_heal() {
        let (target, seen) = line_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        proxy.set(Direction::Downstream, Fault::Blackhole);
        let mut client = Client::connect(proxy.addr()).await;
        assert_eq!(client.request("ping", BLOCKED).await, None);
        assert_eq!(*seen.lock().unwrap(), ["ping"], "the request itself must arrive");
        proxy.heal();
        assert_eq!(client.reply(SOON).await.as_deref(), Some("re:ping"));
    }

    #[tokio::test]
    async fn delay_adds_at_least_base_and_preserves_order() {
        let (target, mut accepted) = raw_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        let base = Duration::from_millis(80);
        proxy.set(Direction::Upstream, Fault::Delay { base, jitter: Duration::from_millis(60) });

        let start = Instant::now();
        client.write_all(b"0").await.unwrap();
        assert_eq!(read_n(&mut server, 1, SOON).await.as_deref(), Some(&b"0"[..]));
        assert!(start.elapsed() >= base, "delivered after {:?}", start.elapsed());

        // Separate writes, so separate chunks with independent jitter: any reordering would show.
        let mut sent = Vec::new();
        for i in 1..10u8 {
            let byte = b'0' + i;
            client.write_all(&[byte]).await.unwrap();
            sent.push(byte);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        assert_eq!(read_n(&mut server, sent.len(), SOON).await, Some(sent));
        assert!(proxy.stats().upstream.delayed >= 2);
        assert_eq!(proxy.stats().downstream.delayed, 0);
    }

    #[tokio::test]
    async fn certain_loss_stalls_every_chunk_for_the_stall() {
        let (target, mut accepted) = raw_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        let stall = Duration::from_millis(150);
        proxy.set(Direction::Upstream, Fault::Loss { probability: 1.0, stall });
        for byte in [b"a", b"b"] {
            let start = Instant::now();
            client.write_all(byte).await.unwrap();
            assert_eq!(read_n(&mut server, 1, SOON).await.as_deref(), Some(&byte[..]));
            let took = start.elapsed();
            assert!(took >= stall && took < stall * 4, "stalled {took:?}");
        }
        assert_eq!(proxy.stats().upstream.stalled, 2);
    }

    #[tokio::test]
    async fn reset_all_closes_connections_and_new_ones_work() {
        let (target, mut accepted) = raw_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        client.write_all(b"a").await.unwrap();
        assert!(read_n(&mut server, 1, SOON).await.is_some());

        proxy.reset_all();
        assert!(closed(&mut client).await, "the dialer's connection is still open");
        assert!(closed(&mut server).await, "the target's connection is still open");

        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        client.write_all(b"b").await.unwrap();
        assert_eq!(read_n(&mut server, 1, SOON).await.as_deref(), Some(&b"b"[..]));
        // The reset connections' tasks account for themselves just after their sockets close.
        let deadline = Instant::now() + SOON;
        while proxy.stats().open != 1 {
            assert!(Instant::now() < deadline, "open connections: {:?}", proxy.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = proxy.stats();
        assert_eq!(stats.accepted, 2);
        assert_eq!(stats.reset, 1);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_connections_and_the_listener() {
        let (target, mut accepted) = raw_server().await;
        let proxy = Proxy::start(1, 2, target).await.unwrap();
        let addr = proxy.addr();
        let (mut client, mut server) = connected(&proxy, &mut accepted).await;
        drop(proxy);
        assert!(closed(&mut client).await);
        assert!(closed(&mut server).await);
        let deadline = Instant::now() + SOON;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the listener outlived the proxy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
