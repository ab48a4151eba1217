//! Emulated nodes: a LAN netns holding a bridge, and one netns per node
//! cabled to it with the node's IP, as in the tutorial:
//!
//! ```text
//!   tb-<pid>-lan   [lan0 bridge] ---- v-inajob   <-> eth0 192.168.43.111/24  tb-<pid>-inajob
//!                                \--- v-yuanying <-> eth0 192.168.43.112/24  tb-<pid>-yuanying
//! ```
//!
//! Every name carries the run prefix; dropping the cluster deletes it all,
//! and [`Cluster::new`] first removes what killed runs left behind.

use std::net::Ipv4Addr;

use crate::netns::{Netns, reap_stale, run_prefix};

/// The tutorial's two workers.
pub const INAJOB: (&str, Ipv4Addr) = ("inajob", Ipv4Addr::new(192, 168, 43, 111));
pub const YUANYING: (&str, Ipv4Addr) = ("yuanying", Ipv4Addr::new(192, 168, 43, 112));
const LAN_PREFIX: u8 = 24;

pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: Netns,
}

impl Node {
    /// Runs `script` with `sh -c` on the node; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        self.ns.sh(script)
    }

    /// Runs `f` on a thread inside the node's netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f)
    }
}

pub struct Cluster {
    // Nodes before the LAN: dropping a node netns deletes its cable.
    nodes: Vec<Node>,
    lan: Netns,
    tag: String,
}

impl Cluster {
    /// An empty LAN. `tag` keeps parallel clusters of one run apart.
    pub fn new(tag: &str) -> Self {
        reap_stale();
        let lan = Netns::named(&format!("{}{tag}-lan", run_prefix()));
        lan.sh("ip link add lan0 type bridge && ip link set lan0 up");
        Cluster {
            nodes: Vec::new(),
            lan,
            tag: tag.to_string(),
        }
    }

    /// The tutorial's two nodes, inajob and yuanying.
    pub fn tutorial(tag: &str) -> Self {
        let mut c = Self::new(tag);
        c.add_node(INAJOB.0, INAJOB.1);
        c.add_node(YUANYING.0, YUANYING.1);
        c
    }

    /// Adds a node netns with `eth0` = `ip`/24 on the LAN.
    pub fn add_node(&mut self, name: &str, ip: Ipv4Addr) -> &Node {
        let ns = Netns::named(&format!("{}{}-{name}", run_prefix(), self.tag));
        // Interface names have 15 characters at most.
        let cable: String = format!("v{}-{name}", self.nodes.len())
            .chars()
            .take(15)
            .collect();
        self.lan.sh(&format!(
            "ip link add {cable} type veth peer name eth0 netns {node} && \
             ip link set {cable} master lan0 up",
            node = ns.name()
        ));
        ns.sh(&format!(
            "ip addr add {ip}/{LAN_PREFIX} dev eth0 && ip link set eth0 up"
        ));
        self.nodes.push(Node {
            name: name.to_string(),
            ip,
            ns,
        });
        self.nodes.last().unwrap_or_else(|| unreachable!())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn lan(&self) -> &Netns {
        &self.lan
    }
}
