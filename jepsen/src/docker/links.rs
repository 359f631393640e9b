//! The network faults of the Docker mode as *state* and the kernel commands that realise it, with no I/O: which
//! flows are blocked, which link fault is on, and for each container the `iptables-restore` input and the `tc`
//! commands that bring its network namespace to that state. [`super::DockerCluster`] runs them through `nsenter`.
//!
//! # Model (the same as [`crate::net`]'s)
//!
//! Flow `a→b` is every packet replica `a` sends replica `b`. A *blocking* fault is a set of blocked flows; a *link*
//! fault (delay or loss) applies to every flow that is not blocked. A new fault of one kind replaces the previous
//! one of that kind; [`Links::heal`] clears both. Fault methods return the same descriptions as [`crate::net::Net`]'s,
//! so histories and reports read alike in both modes.
//!
//! # How a flow is cut, delayed or thinned
//!
//! * Blocked flow `a→b`: in `b`'s namespace, `INPUT -s ip(a) -j DROP`. Dropping on the receiver's `INPUT` is a
//!   silent loss, as on a real network (and as Jepsen does it); dropping on the sender's `OUTPUT` would instead
//!   fail its `connect`/`send` at once with `EPERM`. A one-way fault is therefore one rule on one side.
//! * Loss on flow `a→b`: in `b`'s namespace, `INPUT -s ip(a) -m statistic --mode random --probability p -j DROP`:
//!   real packet loss (TCP retransmits, its congestion window shrinks).
//! * Delay on flow `a→b`, [`DelayMethod::Netem`]: on `a`'s egress, a `prio` qdisc whose fourth band is a `netem`
//!   qdisc, and a `u32` filter per peer address sending that peer's packets to it. `base + uniform(0, jitter)` is
//!   netem's `delay (base + jitter/2) (jitter/2)` (netem's default jitter is uniform). Needs `sch_netem` and
//!   `sch_prio` in the kernel.
//! * Delay on flow `a→b`, [`DelayMethod::Nfqueue`] (kernels without netem): in `b`'s namespace,
//!   `INPUT -s ip(a) -j NFQUEUE --queue-num 7 --queue-bypass`, and a [`super::delayer::Delayer`] in that namespace
//!   releases each packet after its delay. [`super::DockerCluster`] probes which method works; the fault is
//!   skipped, with the reasons, when neither does.
//!
//! Only replica-to-replica flows are touched, as in the local mode: clients (on the host) and TaskManagers reach
//! every replica whatever the fault.
//!
//! # Invariants
//!
//! * [`Links::iptables_restore`] is a complete `filter` table: applying it replaces whatever was there, so applying
//!   the same state twice is harmless and a heal is the same operation with no rules.
//! * [`Links::tc_commands`] assumes the root qdisc was deleted first (see [`Links::tc_reset`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use rand::Rng;

use super::delayer::QUEUE;
use crate::net::{
    describe_faults, groups_string, majority_minority_groups, partition_flows, ring_description, ring_flows,
    ring_visibility,
};

/// The interface every container has on the run's network.
pub const IFACE: &str = "eth0";

/// The link fault on every unblocked flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkFault {
    /// Nothing.
    Pass,
    /// Each packet held `base + uniform(0, jitter)`.
    Delay {
        /// Minimum delay.
        base: Duration,
        /// Uniform extra delay, up to.
        jitter: Duration,
    },
    /// Each packet dropped with this probability.
    Loss {
        /// In `[0, 1]`.
        probability: f64,
    },
}

/// How a delay is carried out. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayMethod {
    /// tc netem on the sender's egress.
    Netem,
    /// iptables NFQUEUE on the receiver's input and a delayer thread in its namespace.
    Nfqueue,
}

/// The replicas' addresses and the faults on the links between them. See the module docs.
#[derive(Debug, Clone)]
pub struct Links {
    ips: BTreeMap<u64, Ipv4Addr>,
    delay_method: DelayMethod,
    blocked: BTreeSet<(u64, u64)>,
    blocking: Option<String>,
    link: LinkFault,
    link_description: Option<String>,
}

impl Links {
    /// All links passing between the given replicas (id → address).
    pub fn new(ips: BTreeMap<u64, Ipv4Addr>) -> Self {
        Links {
            ips,
            delay_method: DelayMethod::Netem,
            blocked: BTreeSet::new(),
            blocking: None,
            link: LinkFault::Pass,
            link_description: None,
        }
    }

    /// Sets how delays are carried out (netem by default).
    pub fn with_delay_method(mut self, method: DelayMethod) -> Self {
        self.delay_method = method;
        self
    }

    /// Whether `node` needs a delayer thread in its namespace: a delay is on and it is done with NFQUEUE.
    pub fn needs_delayer(&self) -> bool {
        matches!(self.link, LinkFault::Delay { .. }) && self.delay_method == DelayMethod::Nfqueue
    }

    /// The replica ids, ascending.
    pub fn nodes(&self) -> Vec<u64> {
        self.ips.keys().copied().collect()
    }

    /// The blocked flows `(sender, receiver)`.
    pub fn blocked(&self) -> &BTreeSet<(u64, u64)> {
        &self.blocked
    }

    /// The current link fault.
    pub fn link(&self) -> LinkFault {
        self.link
    }

    /// Whether nothing is faulty.
    pub fn is_healthy(&self) -> bool {
        self.blocked.is_empty() && self.link == LinkFault::Pass
    }

    /// Blocks exactly these flows, replacing the blocking fault.
    ///
    /// # Panics
    ///
    /// If a flow names an unknown node or a node to itself.
    pub fn block(&mut self, flows: impl IntoIterator<Item = (u64, u64)>) -> String {
        let flows: BTreeSet<(u64, u64)> = flows.into_iter().collect();
        let list = flows.iter().map(|(a, b)| format!("{a}->{b}")).collect::<Vec<_>>().join(",");
        self.set_blocked(flows, format!("block [{list}]"))
    }

    /// Nodes in different groups exchange nothing; nodes in no group are unaffected.
    ///
    /// # Panics
    ///
    /// If a node is unknown or in two groups.
    pub fn partition(&mut self, groups: &[Vec<u64>]) -> String {
        let flows = partition_flows(&self.nodes(), groups);
        self.set_blocked(flows, format!("partition {}", groups_string(groups)))
    }

    /// `node` exchanges nothing with any other replica.
    pub fn isolate(&mut self, node: u64) -> String {
        let rest: Vec<u64> = self.ips.keys().copied().filter(|&n| n != node).collect();
        self.partition(&[vec![node], rest]);
        let description = format!("isolate {node}");
        self.blocking = Some(description.clone());
        description
    }

    /// A random majority and minority that exchange nothing.
    pub fn majority_minority(&mut self, rng: &mut impl Rng) -> String {
        let groups = majority_minority_groups(&self.nodes(), rng);
        self.partition(&groups)
    }

    /// Jepsen's majorities ring (see [`crate::net::Net::ring`]).
    pub fn ring(&mut self, rng: &mut impl Rng) -> String {
        let nodes = self.nodes();
        let visible = ring_visibility(&nodes, rng);
        self.set_blocked(ring_flows(&nodes, &visible), ring_description(&visible))
    }

    /// Flow `from→to` blocked, `to→from` passing.
    pub fn one_way(&mut self, from: u64, to: u64) -> String {
        self.set_blocked(BTreeSet::from([(from, to)]), format!("one-way {from}->{to}"))
    }

    /// Every unblocked flow delayed `base + uniform(0, jitter)`.
    pub fn delay(&mut self, base: Duration, jitter: Duration) -> String {
        self.link = LinkFault::Delay { base, jitter };
        self.set_link_description(format!("delay {base:?}+0..{jitter:?}"))
    }

    /// Every unblocked flow loses each packet with `probability`.
    pub fn loss(&mut self, probability: f64) -> String {
        self.link = LinkFault::Loss { probability: probability.clamp(0.0, 1.0) };
        self.set_link_description(format!("loss p={probability}"))
    }

    /// Everything back to passing.
    pub fn heal(&mut self) -> String {
        self.blocked.clear();
        self.blocking = None;
        self.link = LinkFault::Pass;
        self.link_description = None;
        "heal".to_string()
    }

    /// The current faults in the words of [`crate::net::Net::describe`]; `healthy` if none.
    pub fn describe(&self) -> String {
        describe_faults(self.blocking.as_deref(), self.link_description.as_deref())
    }

    /// The complete `filter` table for `node`'s namespace, as `iptables-restore` reads it: a DROP per blocked flow
    /// into `node`, else the loss (or NFQUEUE delay) rule per flow into it.
    pub fn iptables_restore(&self, node: u64) -> String {
        let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        for (&peer, ip) in self.ips.iter().filter(|(&peer, _)| peer != node) {
            if self.blocked.contains(&(peer, node)) {
                let _ = writeln!(text, "-A INPUT -s {ip}/32 -j DROP");
            } else if let LinkFault::Loss { probability } = self.link {
                let _ = writeln!(
                    text,
                    "-A INPUT -s {ip}/32 -m statistic --mode random --probability {probability} -j DROP"
                );
            } else if self.needs_delayer() {
                let _ = writeln!(text, "-A INPUT -s {ip}/32 -j NFQUEUE --queue-num {} --queue-bypass", QUEUE);
            }
        }
        text.push_str("COMMIT\n");
        text
    }

    /// The arguments of `tc` that remove any qdisc the harness installed on `node`'s interface. It fails when there
    /// is none, which is fine.
    pub fn tc_reset() -> Vec<String> {
        ["qdisc", "del", "dev", IFACE, "root"].map(String::from).to_vec()
    }

    /// The `tc` invocations (arguments only) that delay `node`'s packets to each peer it is not blocked from, when
    /// the link fault is a delay; none otherwise. Run after [`Links::tc_reset`].
    pub fn tc_commands(&self, node: u64) -> Vec<Vec<String>> {
        let LinkFault::Delay { base, jitter } = self.link else { return Vec::new() };
        if self.delay_method != DelayMethod::Netem {
            return Vec::new();
        }
        let half = jitter / 2;
        let mean = base + half;
        let mut commands = vec![
            format!("qdisc add dev {IFACE} root handle 1: prio bands 4"),
            format!(
                "qdisc add dev {IFACE} parent 1:4 handle 40: netem delay {}us {}us",
                mean.as_micros(),
                half.as_micros()
            ),
        ];
        let delayed = self.ips.iter().filter(|(&peer, _)| peer != node && !self.blocked.contains(&(node, peer)));
        for (_, ip) in delayed {
            commands.push(format!(
                "filter add dev {IFACE} parent 1: protocol ip prio 1 u32 match ip dst {ip}/32 flowid 1:4"
            ));
        }
        commands.into_iter().map(|c| c.split(' ').map(String::from).collect()).collect()
    }

    fn set_blocked(&mut self, flows: BTreeSet<(u64, u64)>, description: String) -> String {
        for &(a, b) in &flows {
            assert!(
                a != b && self.ips.contains_key(&a) && self.ips.contains_key(&b),
                "no link for flow {a}->{b} among {:?}",
                self.nodes()
            );
        }
        self.blocked = flows;
        self.blocking = Some(description.clone());
        description
    }

    fn set_link_description(&mut self, description: String) -> String {
        self.link_description = Some(description.clone());
        description
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn links(n: u64) -> Links {
        Links::new((1..=n).map(|id| (id, Ipv4Addr::new(10, 9, 0, 10 + id as u8))).collect())
    }

    fn rules(links: &Links, node: u64) -> Vec<String> {
        let text = links.iptables_restore(node);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..4], ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]);
        assert_eq!(lines.last(), Some(&"COMMIT"));
        lines[4..lines.len() - 1].iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn a_healthy_table_has_no_rules_and_no_qdisc() {
        let l = links(3);
        assert!(l.is_healthy());
        assert_eq!(l.describe(), "healthy");
        for node in 1..=3 {
            assert!(rules(&l, node).is_empty());
            assert!(l.tc_commands(node).is_empty());
        }
        assert_eq!(Links::tc_reset(), ["qdisc", "del", "dev", "eth0", "root"]);
    }

    #[test]
    fn a_one_way_fault_is_one_drop_on_the_receivers_input() {
        let mut l = links(3);
        assert_eq!(l.one_way(1, 2), "one-way 1->2");
        assert_eq!(rules(&l, 2), ["-A INPUT -s 10.9.0.11/32 -j DROP"]);
        assert!(rules(&l, 1).is_empty(), "2's packets still reach 1");
        assert!(rules(&l, 3).is_empty());
    }

    #[test]
    fn isolation_drops_every_peer_on_both_sides_and_heal_clears_it() {
        let mut l = links(3);
        assert_eq!(l.isolate(1), "isolate 1");
        assert_eq!(rules(&l, 1), ["-A INPUT -s 10.9.0.12/32 -j DROP", "-A INPUT -s 10.9.0.13/32 -j DROP"]);
        assert_eq!(rules(&l, 2), ["-A INPUT -s 10.9.0.11/32 -j DROP"]);
        assert_eq!(rules(&l, 3), ["-A INPUT -s 10.9.0.11/32 -j DROP"]);
        assert_eq!(l.heal(), "heal");
        assert!((1..=3).all(|n| rules(&l, n).is_empty()));
    }

    #[test]
    fn partitions_and_rings_block_the_same_flows_as_the_local_grid() {
        let mut l = links(5);
        assert_eq!(l.partition(&[vec![1, 2, 3], vec![4, 5]]), "partition [[1,2,3],[4,5]]");
        assert_eq!(l.blocked().len(), 12);
        let mut l = links(5);
        let ring = l.ring(&mut StdRng::seed_from_u64(42));
        assert!(ring.starts_with("ring 1:["), "{ring}");
        // Each node sees itself and two others: two peers dropped on its INPUT.
        for node in 1..=5 {
            assert_eq!(rules(&l, node).len(), 2, "{ring}");
        }
        let mut l = links(5);
        let halves = l.majority_minority(&mut StdRng::seed_from_u64(7));
        assert!(halves.starts_with("partition [["), "{halves}");
        assert_eq!(l.blocked().len(), 12);
    }

    #[test]
    fn loss_thins_every_unblocked_flow_and_composes_with_a_block() {
        let mut l = links(3);
        assert_eq!(l.loss(0.2), "loss p=0.2");
        assert_eq!(
            rules(&l, 1),
            [
                "-A INPUT -s 10.9.0.12/32 -m statistic --mode random --probability 0.2 -j DROP",
                "-A INPUT -s 10.9.0.13/32 -m statistic --mode random --probability 0.2 -j DROP"
            ]
        );
        l.one_way(2, 1);
        assert_eq!(l.describe(), "one-way 2->1; loss p=0.2");
        assert_eq!(
            rules(&l, 1),
            [
                "-A INPUT -s 10.9.0.12/32 -j DROP",
                "-A INPUT -s 10.9.0.13/32 -m statistic --mode random --probability 0.2 -j DROP"
            ]
        );
        assert!(l.tc_commands(1).is_empty(), "loss needs no qdisc");
    }

    #[test]
    fn delay_is_a_netem_band_with_a_filter_per_unblocked_peer() {
        let mut l = links(3);
        assert_eq!(l.delay(Duration::from_millis(50), Duration::from_millis(100)), "delay 50ms+0..100ms");
        let commands: Vec<String> = l.tc_commands(1).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            commands,
            [
                "qdisc add dev eth0 root handle 1: prio bands 4",
                "qdisc add dev eth0 parent 1:4 handle 40: netem delay 100000us 50000us",
                "filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.12/32 flowid 1:4",
                "filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.13/32 flowid 1:4",
            ]
        );
        assert!(rules(&l, 1).is_empty(), "a delay drops nothing");
        l.one_way(1, 3);
        assert_eq!(l.tc_commands(1).len(), 3, "a blocked flow is not delayed as well");
        l.heal();
        assert!(l.tc_commands(1).is_empty());
    }

    #[test]
    fn without_netem_a_delay_queues_every_unblocked_flow_to_the_delayer() {
        let mut l = links(3).with_delay_method(DelayMethod::Nfqueue);
        assert!(!l.needs_delayer());
        l.delay(Duration::from_millis(50), Duration::from_millis(100));
        assert!(l.needs_delayer());
        assert!(l.tc_commands(1).is_empty(), "no qdisc without netem");
        assert_eq!(
            rules(&l, 1),
            [
                "-A INPUT -s 10.9.0.12/32 -j NFQUEUE --queue-num 7 --queue-bypass",
                "-A INPUT -s 10.9.0.13/32 -j NFQUEUE --queue-num 7 --queue-bypass"
            ]
        );
        l.one_way(3, 1);
        assert_eq!(
            rules(&l, 1),
            ["-A INPUT -s 10.9.0.12/32 -j NFQUEUE --queue-num 7 --queue-bypass", "-A INPUT -s 10.9.0.13/32 -j DROP"]
        );
        l.heal();
        assert!(!l.needs_delayer() && rules(&l, 1).is_empty());
    }
}
