//! The network between replicas, as the harness controls it in local-process mode: no root, no iptables, just a TCP
//! [`Proxy`] on every directed link.
//!
//! # Model
//!
//! Replicas run on `127.0.0.1`. For every ordered pair `(i, j)`, `i != j`, [`Net::start`] starts a proxy that
//! carries the connections `i` opens to `j` and forwards them to `j`'s real Raft address; replica `i` is started
//! with `--peer-via` built from [`Net::via`]`(i)`, so it dials each peer through its own proxy. Links are
//! therefore directed by who dials, and every byte between two replicas crosses exactly one proxy direction:
//! `i`'s requests to `j` go upstream on proxy `(i→j)`, `j`'s replies come back downstream on the same proxy.
//!
//! Faults are expressed as *flows*: flow `a→b` is every byte `a` sends `b`, whoever opened the connection. Blocking
//! it blackholes the upstream of proxy `(a→b)` (`a`'s requests to `b`) and the downstream of proxy `(b→a)` (`a`'s
//! replies to `b`'s requests). A blackhole stops reading rather than dropping (see [`proxy`]): the sender stalls on
//! flow control like a peer behind an iptables `DROP`, its RPCs time out, and a heal lets the stalled bytes through
//! in order, as TCP retransmission would after a real partition heals.
//!
//! Two kinds of fault compose: a *blocking* fault (a set of blocked flows: [`Net::partition`], [`Net::isolate`],
//! [`Net::majority_minority`], [`Net::ring`], [`Net::one_way`], [`Net::block`]) and a *link* fault on every
//! unblocked direction ([`Net::delay`], [`Net::loss`]). A new fault of one kind replaces the previous one of that
//! kind; [`Net::heal`] clears both. Every fault method returns a short description for the history and the report,
//! and [`Net::describe`] gives the current state in the same words.
//!
//! # Caveats
//!
//! * TCP cannot lose bytes without breaking the stream, so "loss" is latency: a lost chunk stalls the connection
//!   for a retransmission timeout (see [`Fault::Loss`]). Real loss also shrinks the congestion window; this does
//!   not.
//! * One-way faults over request/response protocols (gRPC is one): with flow `a→b` blocked, `b`'s requests reach
//!   `a` and `a` acts on them, but `a`'s replies never reach `b`; `a`'s own requests never reach `b`. So `b` can
//!   influence `a` (e.g. a higher Raft term makes `a` step down) while seeing every RPC to `a` time out, and `a`
//!   sees every RPC to `b` time out. Nothing completes between them in either direction; what differs from a full
//!   partition is the side effects `b`'s requests have on `a`.
//! * Connections are still *established* across a blocked flow: the kernel completes the handshake with the
//!   proxy, the bytes then go nowhere. With iptables the dial itself would time out; both look like a timeout to
//!   gRPC.
//! * Faults apply to open connections at once, but they do not close them. A killed replica's peers keep their
//!   connections to the proxy until they notice; [`Net::reset`] closes them with an RST when the harness wants
//!   crash semantics.
//!
//! # How the harness uses it
//!
//! 1. Pick each replica's real Raft address, `Net::start(targets)`, then start replica `i` with
//!    `--peer-via` [`Net::peer_via`]`(i)`.
//! 2. The nemesis calls a fault method and records the returned description in the history as an `info` event,
//!    heals with [`Net::heal`], and after a kill calls [`Net::reset`] for the killed node.
//! 3. At the end, [`Net::stats`] goes into the report: per link and direction, bytes forwarded and chunks delayed
//!    or stalled.

pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

pub use proxy::{DirStats, Direction, Fault, Proxy, ProxyStats};

/// A split of the nodes into groups, as [`Net::majority_minority`] chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The groups, majority first, each sorted.
    pub groups: Vec<Vec<u64>>,
    /// What to log, as [`Net::describe`] says it.
    pub description: String,
}

/// A majorities ring, as [`Net::ring`] chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Per node, the nodes it exchanges messages with in both directions, itself included.
    pub visible: BTreeMap<u64, BTreeSet<u64>>,
    /// What to log, as [`Net::describe`] says it.
    pub description: String,
}

/// One proxy's counters, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// The dialing node.
    pub from: u64,
    /// The dialed node.
    pub to: u64,
    /// The proxy's counters (upstream is `from`'s bytes to `to`).
    #[serde(flatten)]
    pub stats: ProxyStats,
}

/// The grid of proxies between `n` replicas and the fault currently applied to it. See the module docs.
#[derive(Debug)]
pub struct Net {
    nodes: Vec<u64>,
    proxies: BTreeMap<(u64, u64), Proxy>,
    /// Blocked flows `(sender, receiver)`.
    blocked: BTreeSet<(u64, u64)>,
    blocking: Option<String>,
    link: Fault,
    link_description: Option<String>,
}

impl Net {
    /// Starts a proxy for every ordered pair of nodes in `targets` (node id → its real Raft address), all passing.
    pub async fn start(targets: BTreeMap<u64, SocketAddr>) -> io::Result<Net> {
        let mut proxies = BTreeMap::new();
        for &from in targets.keys() {
            for (&to, &target) in &targets {
                if from != to {
                    proxies.insert((from, to), Proxy::start(from, to, target).await?);
                }
            }
        }
        Ok(Net {
            nodes: targets.keys().copied().collect(),
            proxies,
            blocked: BTreeSet::new(),
            blocking: None,
            link: Fault::Pass,
            link_description: None,
        })
    }

    /// The node ids, ascending.
    pub fn nodes(&self) -> &[u64] {
        &self.nodes
    }

    /// The addresses `node` must dial for each peer.
    pub fn via(&self, node: u64) -> BTreeMap<u64, SocketAddr> {
        self.proxies.iter().filter(|((from, _), _)| *from == node).map(|(&(_, to), p)| (to, p.addr())).collect()
    }

    /// [`Net::via`] in the form of `jm server --peer-via`: `ID=ADDR,...`.
    pub fn peer_via(&self, node: u64) -> String {
        self.via(node).iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",")
    }

    /// The proxy carrying the connections `from` opens to `to`.
    pub fn proxy(&self, from: u64, to: u64) -> Option<&Proxy> {
        self.proxies.get(&(from, to))
    }

    /// The blocked flows `(sender, receiver)`.
    pub fn blocked(&self) -> &BTreeSet<(u64, u64)> {
        &self.blocked
    }

    /// Whether flow `from→to` is blocked.
    pub fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Per node, the nodes it exchanges messages with in both directions (itself included): the ones it can
    /// complete a request/response with.
    pub fn visibility(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        self.nodes
            .iter()
            .map(|&a| {
                let seen = self.nodes.iter().copied().filter(|&b| !self.is_blocked(a, b) && !self.is_blocked(b, a));
                (a, seen.collect())
            })
            .collect()
    }

    /// Blocks exactly the given flows `(sender, receiver)`, replacing the current blocking fault: the general form
    /// of every other blocking fault.
    ///
    /// # Panics
    ///
    /// If a flow names an unknown node or a node to itself.
    pub fn block(&mut self, flows: impl IntoIterator<Item = (u64, u64)>) -> String {
        let flows: BTreeSet<(u64, u64)> = flows.into_iter().collect();
        let list = flows.iter().map(|(a, b)| format!("{a}->{b}")).collect::<Vec<_>>().join(",");
        self.set_blocked(flows, format!("block [{list}]"))
    }

    /// Nodes in different groups exchange nothing, either way; nodes in the same group are unaffected. Nodes in no
    /// group are unaffected too (list every node to cut them off).
    ///
    /// # Panics
    ///
    /// If a node is unknown or in two groups.
    pub fn partition(&mut self, groups: &[Vec<u64>]) -> String {
        let flows = partition_flows(&self.nodes, groups);
        self.set_blocked(flows, format!("partition {}", groups_string(groups)))
    }

    /// `node` exchanges nothing with anyone.
    pub fn isolate(&mut self, node: u64) -> String {
        let rest: Vec<u64> = self.nodes.iter().copied().filter(|&n| n != node).collect();
        self.partition(&[vec![node], rest]);
        let description = format!("isolate {node}");
        self.blocking = Some(description.clone());
        description
    }

    /// A random split into a majority and a minority (`n/2 + 1` and the rest), which exchange nothing.
    pub fn majority_minority(&mut self, rng: &mut impl Rng) -> Split {
        let groups = majority_minority_groups(&self.nodes, rng);
        let description = self.partition(&groups);
        Split { groups, description }
    }

    /// Jepsen's `majorities-ring`: every node exchanges messages with a majority (itself included), and no two
    /// nodes see the same majority, so any leader can be elected by a majority that others do not share.
    ///
    /// Visibility is symmetric (a node sees a peer iff flows both ways pass), since a one-way link completes no
    /// request/response. When the majority `m = n/2 + 1` is odd (n = 4, 5, 8, 9, ...), nodes are shuffled into a
    /// ring and each sees its `(m-1)/2` neighbours on either side: for 5 nodes, itself and its two neighbours. Other
    /// sizes have no such ring; they get random symmetric links added until the property holds (for 3 nodes that is
    /// always a bridge: one node sees both others, which do not see each other), as Jepsen's stochastic variant.
    ///
    /// # Panics
    ///
    /// With fewer than 3 nodes: two nodes cannot see distinct majorities.
    pub fn ring(&mut self, rng: &mut impl Rng) -> Ring {
        let visible = ring_visibility(&self.nodes, rng);
        let description = self.set_blocked(ring_flows(&self.nodes, &visible), ring_description(&visible));
        Ring { visible, description }
    }

    /// Flow `from→to` blocked, `to→from` passing. Over request/response: `from`'s requests never reach `to`;
    /// `to`'s requests reach `from`, which handles them, but its replies never reach `to`. See the module caveats.
    pub fn one_way(&mut self, from: u64, to: u64) -> String {
        self.set_blocked(BTreeSet::from([(from, to)]), format!("one-way {from}->{to}"))
    }

    /// Every unblocked direction of every link holds each chunk `base + uniform(0, jitter)`.
    pub fn delay(&mut self, base: Duration, jitter: Duration) -> String {
        self.set_link(Fault::Delay { base, jitter }, format!("delay {base:?}+0..{jitter:?}"))
    }

    /// Every unblocked direction of every link "loses" each chunk with `probability`: it stalls for `stall`.
    pub fn loss(&mut self, probability: f64, stall: Duration) -> String {
        self.set_link(Fault::Loss { probability, stall }, format!("loss p={probability} stall {stall:?}"))
    }

    /// Everything back to passing; stalled connections resume where they stopped.
    pub fn heal(&mut self) -> String {
        self.blocked.clear();
        self.blocking = None;
        self.link = Fault::Pass;
        self.link_description = None;
        self.apply();
        "heal".to_string()
    }

    /// The current fault, e.g. `partition [[1],[2,3]]` or `one-way 1->2; delay 50ms+0..10ms`; `healthy` if none.
    pub fn describe(&self) -> String {
        describe_faults(self.blocking.as_deref(), self.link_description.as_deref())
    }

    /// Closes (RST) every open connection from or to `node`, as if it had crashed: its peers must reconnect.
    pub fn reset(&self, node: u64) -> String {
        self.proxies.iter().filter(|((a, b), _)| *a == node || *b == node).for_each(|(_, p)| p.reset_all());
        format!("reset {node}")
    }

    /// Closes (RST) every open connection.
    pub fn reset_all(&self) -> String {
        self.proxies.values().for_each(Proxy::reset_all);
        "reset all".to_string()
    }

    /// Every proxy's counters.
    pub fn stats(&self) -> Vec<LinkStats> {
        self.proxies.iter().map(|(&(from, to), p)| LinkStats { from, to, stats: p.stats() }).collect()
    }

    fn set_blocked(&mut self, flows: BTreeSet<(u64, u64)>, description: String) -> String {
        for &(a, b) in &flows {
            assert!(a != b && self.proxies.contains_key(&(a, b)), "no link for flow {a}->{b} among {:?}", self.nodes);
        }
        self.blocked = flows;
        self.blocking = Some(description.clone());
        self.apply();
        description
    }

    fn set_link(&mut self, fault: Fault, description: String) -> String {
        self.link = fault;
        self.link_description = Some(description.clone());
        self.apply();
        description
    }

    /// Pushes the blocked flows and the link fault down to every proxy direction.
    fn apply(&self) {
        for (&(i, j), proxy) in &self.proxies {
            let fault = |sender, receiver| if self.is_blocked(sender, receiver) { Fault::Blackhole } else { self.link };
            proxy.set(Direction::Upstream, fault(i, j));
            proxy.set(Direction::Downstream, fault(j, i));
        }
    }
}

/// The blocking fault and the link fault in force, joined (`one-way 1->2; delay 50ms+0..10ms`); `healthy` if none.
pub(crate) fn describe_faults(blocking: Option<&str>, link: Option<&str>) -> String {
    let parts: Vec<&str> = blocking.into_iter().chain(link).collect();
    if parts.is_empty() {
        "healthy".to_string()
    } else {
        parts.join("; ")
    }
}

pub(crate) fn list_string(nodes: &[u64]) -> String {
    format!("[{}]", nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

pub(crate) fn groups_string(groups: &[Vec<u64>]) -> String {
    format!("[{}]", groups.iter().map(|g| list_string(g)).collect::<Vec<_>>().join(","))
}

/// The flows a partition into `groups` blocks: every direction between nodes of different groups.
///
/// # Panics
///
/// If a node is not in `nodes` or is in two groups.
pub(crate) fn partition_flows(nodes: &[u64], groups: &[Vec<u64>]) -> BTreeSet<(u64, u64)> {
    let mut group_of = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        for &node in group {
            assert!(nodes.contains(&node), "unknown node {node} in {groups:?}");
            assert!(group_of.insert(node, g).is_none(), "node {node} is in two groups of {groups:?}");
        }
    }
    let mut flows = BTreeSet::new();
    for (&a, ga) in &group_of {
        for (&b, gb) in &group_of {
            if ga != gb {
                flows.insert((a, b));
            }
        }
    }
    flows
}

/// A random majority (`n/2 + 1` nodes) and minority, each sorted.
pub(crate) fn majority_minority_groups(nodes: &[u64], rng: &mut impl Rng) -> Vec<Vec<u64>> {
    let mut shuffled = nodes.to_vec();
    shuffled.shuffle(rng);
    let (majority, minority) = shuffled.split_at(nodes.len() / 2 + 1);
    let mut groups = vec![majority.to_vec(), minority.to_vec()];
    groups.iter_mut().for_each(|g| g.sort_unstable());
    groups
}

/// The flows a majorities ring blocks: both directions between nodes that do not see each other.
pub(crate) fn ring_flows(nodes: &[u64], visible: &BTreeMap<u64, BTreeSet<u64>>) -> BTreeSet<(u64, u64)> {
    let mut flows = BTreeSet::new();
    for (&a, seen) in visible {
        for &b in nodes.iter().filter(|b| !seen.contains(b)) {
            flows.insert((a, b));
            flows.insert((b, a));
        }
    }
    flows
}

/// `ring 1:[1,2] 2:[1,2,3] ...`: who sees whom.
pub(crate) fn ring_description(visible: &BTreeMap<u64, BTreeSet<u64>>) -> String {
    let mut description = "ring".to_string();
    for (node, seen) in visible {
        let seen: Vec<u64> = seen.iter().copied().collect();
        let _ = write!(description, " {node}:{}", list_string(&seen));
    }
    description
}

/// Per node, the (symmetric) set of nodes it sees in a majorities ring. See [`Net::ring`].
pub(crate) fn ring_visibility(nodes: &[u64], rng: &mut impl Rng) -> BTreeMap<u64, BTreeSet<u64>> {
    let n = nodes.len();
    assert!(n >= 3, "a majorities ring needs at least 3 nodes, not {n}");
    let majority = n / 2 + 1;
    let mut ring = nodes.to_vec();
    ring.shuffle(rng);
    if majority % 2 == 1 {
        let side = majority / 2;
        return (0..n).map(|k| (ring[k], (0..majority).map(|d| ring[(k + n - side + d) % n]).collect())).collect();
    }
    // No perfect ring: add random links one at a time until every node sees a distinct majority. Adding a link can
    // make two neighbourhoods equal for good (both full), so a dead end restarts with a fresh order.
    let mut pairs: Vec<(u64, u64)> =
        nodes.iter().flat_map(|&a| nodes.iter().filter(move |&&b| a < b).map(move |&b| (a, b))).collect();
    loop {
        pairs.shuffle(rng);
        let mut visible: BTreeMap<u64, BTreeSet<u64>> = nodes.iter().map(|&a| (a, BTreeSet::from([a]))).collect();
        for &(a, b) in &pairs {
            visible.get_mut(&a).expect("node").insert(b);
            visible.get_mut(&b).expect("node").insert(a);
            let distinct: BTreeSet<&BTreeSet<u64>> = visible.values().collect();
            if distinct.len() == n && visible.values().all(|seen| seen.len() >= majority) {
                return visible;
            }
        }
    }
}

/// Small TCP targets and probes for the proxy and grid tests.
#[cfg(test)]
pub(crate) mod testkit {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// How long a probe waits before calling a flow blocked. Generous against a loaded 2-core machine, small
    /// enough to keep the suite fast; blocked probes run concurrently.
    pub const BLOCKED: Duration = Duration::from_millis(300);

    /// A line server: records each line it receives, replies `re:<line>`. Returns its address and the record.
    pub async fn line_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        record.lock().unwrap().push(line.clone());
                        if w.write_all(format!("re:{line}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A target that hands each accepted connection to the test, so it holds both ends of a proxied connection.
    pub async fn raw_server() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send(stream).is_err() {
                    break;
                }
            }
        });
        (addr, rx)
    }

    /// Reads exactly `n` bytes, or `None` on timeout, EOF or error.
    pub async fn read_n(stream: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    /// A request/response exchange on an open connection: sends `line`, waits for one reply line.
    pub struct Client {
        lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
        w: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Client {
        pub async fn connect(addr: SocketAddr) -> Client {
            let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
            Client { lines: BufReader::new(r).lines(), w }
        }

        pub async fn send(&mut self, line: &str) {
            self.w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        }

        /// The next reply, or `None` if none came within `within`.
        pub async fn reply(&mut self, within: Duration) -> Option<String> {
            tokio::time::timeout(within, self.lines.next_line()).await.ok().and_then(|r| r.ok()).flatten()
        }

        pub async fn request(&mut self, line: &str, within: Duration) -> Option<String> {
            self.send(line).await;
            self.reply(within).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tokio::task::JoinSet;

    use super::testkit::{line_server, Client, BLOCKED};
    use super::{ring_visibility, Direction, Fault, Net};

    const SOON: Duration = Duration::from_secs(2);

    type Record = Arc<Mutex<Vec<String>>>;

    /// `n` line servers as the replicas, and the grid in front of them.
    async fn cluster(n: u64) -> (Net, BTreeMap<u64, Record>) {
        let mut targets = BTreeMap::new();
        let mut records = BTreeMap::new();
        for id in 1..=n {
            let (addr, record) = line_server().await;
            targets.insert(id, addr);
            records.insert(id, record);
        }
        (Net::start(targets).await.unwrap(), records)
    }

    /// A grid whose targets are never dialed: for tests of the fault logic only.
    async fn idle_net(n: u64) -> Net {
        let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
        Net::start((1..=n).map(|id| (id, unused)).collect()).await.unwrap()
    }

    struct Probe {
        client: Client,
        replied: bool,
        delivered: bool,
    }

    /// For every ordered pair `(a, b)`, `a` sends `b` the request `"a->b"` through the grid, all at once, and waits
    /// up to `BLOCKED` for the reply. `delivered` is whether `b` received the request.
    async fn probe_all(net: &Net, records: &BTreeMap<u64, Record>) -> BTreeMap<(u64, u64), Probe> {
        let mut probes = JoinSet::new();
        for &a in net.nodes() {
            for (b, addr) in net.via(a) {
                probes.spawn(async move {
                    let mut client = Client::connect(addr).await;
                    let reply = client.request(&format!("{a}->{b}"), BLOCKED).await;
                    if let Some(reply) = &reply {
                        assert_eq!(reply, &format!("re:{a}->{b}"));
                    }
                    ((a, b), client, reply.is_some())
                });
            }
        }
        let mut out = BTreeMap::new();
        while let Some(done) = probes.join_next().await {
            let ((a, b), client, replied) = done.unwrap();
            let delivered = records[&b].lock().unwrap().contains(&format!("{a}->{b}"));
            out.insert((a, b), Probe { client, replied, delivered });
        }
        out
    }

    /// After a heal, every request probed earlier gets its reply on its original connection.
    async fn all_answered(probes: &mut BTreeMap<(u64, u64), Probe>) {
        for ((a, b), probe) in probes.iter_mut() {
            if !probe.replied {
                assert_eq!(probe.client.reply(SOON).await, Some(format!("re:{a}->{b}")), "{a}->{b} after heal");
            }
        }
    }

    #[tokio::test]
    async fn via_lists_a_distinct_proxy_per_peer() {
        let net = idle_net(3).await;
        let via = net.via(1);
        assert_eq!(via.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(net.peer_via(1), format!("2={},3={}", via[&2], via[&3]));
        let all: BTreeSet<SocketAddr> = net.nodes().iter().flat_map(|&n| net.via(n).into_values()).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(net.proxy(1, 2).unwrap().addr(), via[&2]);
        assert_eq!(net.describe(), "healthy");
    }

    #[tokio::test]
    async fn partition_blocks_across_groups_only_and_heal_delivers_the_stalled() {
        let (mut net, records) = cluster(3).await;
        assert_eq!(net.partition(&[vec![1], vec![2, 3]]), "partition [[1],[2,3]]");
        assert_eq!(net.describe(), "partition [[1],[2,3]]");
        let mut probes = probe_all(&net, &records).await;
        for ((a, b), probe) in &probes {
            let across = (*a == 1) != (*b == 1);
            assert_eq!(probe.replied, !across, "{a}->{b} replied");
            assert_eq!(probe.delivered, !across, "{a}->{b} delivered");
        }
        assert_eq!(net.heal(), "heal");
        assert_eq!(net.describe(), "healthy");
        all_answered(&mut probes).await;
    }

    /// One-way `1->2` is flow 1→2 blocked, flow 2→1 passing. Over request/response that means: 1's requests never
    /// reach 2; 2's requests do reach 1 (which handles them) but 1's replies never reach 2; links to 3 are intact.
    #[tokio::test]
    async fn one_way_blocks_one_flow_whoever_dialed() {
        let (mut net, records) = cluster(3).await;
        assert_eq!(net.one_way(1, 2), "one-way 1->2");
        let mut probes = probe_all(&net, &records).await;
        let p12 = &probes[&(1, 2)];
        assert!(!p12.delivered && !p12.replied, "1's request reached 2");
        let p21 = &probes[&(2, 1)];
        assert!(p21.delivered, "2's request must reach 1");
        assert!(!p21.replied, "1's reply reached 2");
        for pair in [(1, 3), (3, 1), (2, 3), (3, 2)] {
            assert!(probes[&pair].replied, "{pair:?} is not part of the fault");
        }
        assert_eq!(net.visibility()[&1], BTreeSet::from([1, 3]));
        assert_eq!(net.visibility()[&2], BTreeSet::from([2, 3]));
        net.heal();
        all_answered(&mut probes).await;
    }

    #[tokio::test]
    async fn flows_map_to_proxy_directions() {
        let mut net = idle_net(3).await;
        net.one_way(1, 2);
        let fault = |from, to, dir| net.proxy(from, to).unwrap().fault(dir);
        // 1's bytes to 2: its requests on its own link, its replies on 2's link.
        assert_eq!(fault(1, 2, Direction::Upstream), Fault::Blackhole);
        assert_eq!(fault(2, 1, Direction::Downstream), Fault::Blackhole);
        assert_eq!(fault(1, 2, Direction::Downstream), Fault::Pass);
        assert_eq!(fault(2, 1, Direction::Upstream), Fault::Pass);
        assert_eq!(fault(1, 3, Direction::Upstream), Fault::Pass);
    }

    #[tokio::test]
    async fn link_faults_compose_with_blocking_faults() {
        let mut net = idle_net(3).await;
        let (base, jitter) = (Duration::from_millis(50), Duration::from_millis(10));
        net.isolate(1);
        assert_eq!(net.delay(base, jitter), "delay 50ms+0..10ms");
        assert_eq!(net.describe(), "isolate 1; delay 50ms+0..10ms");
        let delay = Fault::Delay { base, jitter };
        assert_eq!(net.proxy(1, 2).unwrap().fault(Direction::Upstream), Fault::Blackhole);
        assert_eq!(net.proxy(2, 3).unwrap().fault(Direction::Downstream), delay);
        // A new blocking fault replaces the old one and keeps the delay where it no longer blocks.
        net.partition(&[vec![1, 2], vec![3]]);
        assert_eq!(net.proxy(1, 2).unwrap().fault(Direction::Upstream), delay);
        assert_eq!(net.proxy(2, 3).unwrap().fault(Direction::Downstream), Fault::Blackhole);
        assert_eq!(net.loss(0.1, Duration::from_millis(200)), "loss p=0.1 stall 200ms");
        assert_eq!(net.describe(), "partition [[1,2],[3]]; loss p=0.1 stall 200ms");
        net.heal();
        for link in net.stats() {
            let proxy = net.proxy(link.from, link.to).unwrap();
            assert_eq!(
                (proxy.fault(Direction::Upstream), proxy.fault(Direction::Downstream)),
                (Fault::Pass, Fault::Pass)
            );
        }
    }

    #[tokio::test]
    async fn majority_minority_splits_into_two_sides() {
        let mut net = idle_net(5).await;
        let split = net.majority_minority(&mut StdRng::seed_from_u64(7));
        assert_eq!(split.groups.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        let all: BTreeSet<u64> = split.groups.iter().flatten().copied().collect();
        assert_eq!(all, BTreeSet::from([1, 2, 3, 4, 5]));
        assert_eq!(net.describe(), split.description);
        assert_eq!(net.blocked().len(), 2 * 3 * 2);
    }

    #[tokio::test]
    async fn ring_on_five_nodes_gives_every_node_its_own_majority() {
        let (mut net, records) = cluster(5).await;
        let ring = net.ring(&mut StdRng::seed_from_u64(42));
        assert_eq!(ring.visible, net.visibility());
        assert!(ring.description.starts_with("ring 1:["), "{}", ring.description);
        for (node, seen) in &ring.visible {
            assert!(seen.contains(node) && seen.len() >= 3, "{node} sees {seen:?}");
        }
        let distinct: BTreeSet<&BTreeSet<u64>> = ring.visible.values().collect();
        assert_eq!(distinct.len(), 5, "{:?}", ring.visible);
        // What the traffic says, not just the bookkeeping.
        let mut probes = probe_all(&net, &records).await;
        for ((a, b), probe) in &probes {
            assert_eq!(probe.replied, ring.visible[a].contains(b), "{a}->{b} under {}", ring.description);
        }
        net.heal();
        all_answered(&mut probes).await;
    }

    #[test]
    fn ring_visibility_holds_for_three_to_nine_nodes() {
        for n in 3..=9u64 {
            let nodes: Vec<u64> = (1..=n).collect();
            for seed in 0..20 {
                let visible = ring_visibility(&nodes, &mut StdRng::seed_from_u64(seed));
                let distinct: BTreeSet<&BTreeSet<u64>> = visible.values().collect();
                assert_eq!(distinct.len(), n as usize, "n={n}: {visible:?}");
                for (a, seen) in &visible {
                    assert!(seen.contains(a) && seen.len() as u64 > n / 2, "n={n}: {a} sees {seen:?}");
                    assert!(seen.iter().all(|b| visible[b].contains(a)), "n={n}: not symmetric: {visible:?}");
                }
                let sizes: BTreeSet<usize> = visible.values().map(BTreeSet::len).collect();
                match n {
                    3 => assert_eq!(sizes, BTreeSet::from([2, 3]), "a bridge: {visible:?}"),
                    5 => assert_eq!(sizes, BTreeSet::from([3]), "a ring: {visible:?}"),
                    _ => {}
                }
            }
        }
    }

    #[tokio::test]
    async fn reset_closes_the_nodes_connections_only() {
        let (net, _records) = cluster(3).await;
        let mut to2 = Client::connect(net.via(1)[&2]).await;
        let mut to3 = Client::connect(net.via(1)[&3]).await;
        assert!(to2.request("x", SOON).await.is_some() && to3.request("x", SOON).await.is_some());
        assert_eq!(net.reset(2), "reset 2");
        assert_eq!(to2.reply(SOON).await, None, "the connection to 2 survived");
        assert_eq!(to3.request("y", SOON).await.as_deref(), Some("re:y"));
    }
}
