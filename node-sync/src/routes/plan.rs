//! Routes to other nodes' pods, host-gw style: which podCIDRs this node
//! routes, which it refuses and why, and what to change in the kernel to
//! get there. Pure functions of the Nodes and the kernel's routes.
//!
//! The rules, in the order a podCIDR is checked:
//! 1. a malformed podCIDR (or one with host bits set) is refused;
//! 2. one that equals or overlaps this node's own podCIDR is refused,
//!    whatever the Nodes' ages: this node's pods are on cni0;
//! 3. between Nodes, the oldest (creationTimestamp, then name) keeps a
//!    podCIDR; a younger Node's that equals or overlaps it is refused. This
//!    depends on the Nodes alone, so every node of the cluster decides the
//!    same, and no order of a list or a store can flip it;
//! 4. a Node without an InternalIP is not routed yet (nothing to report);
//!    a malformed InternalIP, or none of the podCIDR's family, is refused;
//! 5. one that equals or overlaps the node's own networks (a connected
//!    route such as cni0's or eth0's, an address of the node) is refused;
//! 6. one with someone else's route at the same destination (any protocol
//!    but ours, any metric) or inside it is refused, and that route is left
//!    alone. A wider route of someone else's (the default route) is not a
//!    conflict: a more specific route is what routing is for.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

/// Where a podCIDR is routed, and for which Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub via: IpAddr,
    pub node: String,
}

/// `dst via gateway` (one route per podCIDR).
pub type Routes = BTreeMap<IpNetwork, Target>;

/// A route with our protocol in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ours {
    pub dst: IpNetwork,
    /// None for a route without a gateway (not one we make).
    pub via: Option<IpAddr>,
    pub metric: u32,
}

/// A route that is not ours: one in the main table with another protocol,
/// or an address of the node (the local table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub dst: IpNetwork,
    /// One of the node's own networks or addresses: a connected route
    /// (straight out of a device, no gateway) or a local address. Never a
    /// default route.
    pub local: bool,
    /// As `ip route` shows it, for the report.
    pub text: String,
}

/// Why a podCIDR is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Malformed, host bits set, or no usable InternalIP.
    Invalid,
    /// Equals or overlaps this node's podCIDR.
    ThisNode,
    /// Equals or overlaps an older Node's podCIDR.
    OlderNode,
    /// Equals or overlaps one of the node's own networks or addresses.
    LocalRoute,
    /// Someone else's route is at that destination or inside it.
    ForeignRoute,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::ThisNode => "this-node",
            Reason::OlderNode => "older-node",
            Reason::LocalRoute => "local-route",
            Reason::ForeignRoute => "foreign-route",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [
            Reason::Invalid,
            Reason::ThisNode,
            Reason::OlderNode,
            Reason::LocalRoute,
            Reason::ForeignRoute,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A podCIDR of another Node that is not routed. All strings, so that it
/// is the same whether made by the planner or read back from the metric.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub node: String,
    /// As the Node has it (it may be malformed).
    pub cidr: String,
    pub reason: Reason,
    /// What it conflicts with: this node's podCIDR, the older Node's name,
    /// the route; or what is malformed.
    pub with: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (node, cidr, with) = (&self.node, &self.cidr, &self.with);
        write!(f, "Node {node}'s podCIDR {cidr}: ")?;
        match self.reason {
            Reason::Invalid => write!(f, "{with}"),
            Reason::ThisNode => write!(f, "overlaps this node's podCIDR {with}"),
            Reason::OlderNode => write!(
                f,
                "overlaps Node {with}'s podCIDR; {with} is older and keeps the route"
            ),
            Reason::LocalRoute => write!(f, "overlaps this node's own network: {with}"),
            Reason::ForeignRoute => {
                write!(
                    f,
                    "a route that is not node-sync's is there, left alone: {with}"
                )
            }
        }
    }
}

/// The routes this node should have and the podCIDRs it refuses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Routes,
    /// Sorted by Node, then podCIDR.
    pub refused: Vec<Refusal>,
}

impl Desired {
    /// Nodes with at least one podCIDR refused.
    pub fn nodes_refused(&self) -> usize {
        self.refused
            .iter()
            .map(|r| &r.node)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// The metric the kernel gives a route made without one: IPv6 routes get
/// 1024 (IP6_RT_PRIO_USER), IPv4 routes 0.
pub fn default_metric(dst: &IpNetwork) -> u32 {
    if dst.is_ipv6() { 1024 } else { 0 }
}

/// A prefix as (family, first address, length), so that prefixes of both
/// families sort and compare in one map.
type Key = (bool, u128, u8);

fn key(n: &IpNetwork) -> Key {
    match n {
        IpNetwork::V4(v) => (false, u32::from(v.network()) as u128, v.prefix()),
        IpNetwork::V6(v) => (true, u128::from(v.network()), v.prefix()),
    }
}

fn bits(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

/// The first address of the `len`-bit prefix holding `start`.
fn masked(v6: bool, start: u128, len: u8) -> u128 {
    let host = bits(v6) - len;
    if host >= 128 {
        0
    } else {
        start >> host << host
    }
}

fn last(k: Key) -> u128 {
    let host = bits(k.0) - k.2;
    if host >= 128 {
        u128::MAX
    } else {
        k.1 | ((1u128 << host) - 1)
    }
}

/// Prefixes found by overlap: those inside a prefix (a range of first
/// addresses) and those holding it (one lookup per shorter length).
struct Index<T> {
    map: BTreeMap<Key, T>,
}

impl<T> Index<T> {
    fn new() -> Self {
        Index {
            map: BTreeMap::new(),
        }
    }

    fn insert(&mut self, n: &IpNetwork, v: T) {
        self.map.entry(key(n)).or_insert(v);
    }

    /// A prefix equal to `n` or inside it. Every entry in the range starts
    /// inside `n`; one that starts at `n`'s first address may be wider.
    fn within(&self, n: &IpNetwork) -> Option<&T> {
        let k = key(n);
        self.map
            .range(k..=(k.0, last(k), u8::MAX))
            .find(|(e, _)| e.2 >= k.2)
            .map(|(_, v)| v)
    }

    /// A prefix wider than `n` holding it.
    fn holding(&self, n: &IpNetwork) -> Option<&T> {
        let (v6, start, len) = key(n);
        (0..len).find_map(|l| self.map.get(&(v6, masked(v6, start, l), l)))
    }

    /// The wider first: a network reads better in a report than one of
    /// its addresses.
    fn overlapping(&self, n: &IpNetwork) -> Option<&T> {
        self.holding(n).or_else(|| self.within(n))
    }
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    let (ka, kb) = (key(a), key(b));
    ka.0 == kb.0 && ka.1 <= last(kb) && kb.1 <= last(ka)
}

/// A Node as the planner reads it.
struct Claimant<'a> {
    name: &'a str,
    /// Oldest first: missing timestamps last, then by name.
    age: (bool, Option<k8s_openapi::jiff::Timestamp>, &'a str),
    /// Each podCIDR as written, parsed when it is well formed.
    cidrs: Vec<(&'a str, Result<IpNetwork, String>)>,
    internal_ips: Vec<&'a str>,
}

fn claimant(n: &Node) -> Claimant<'_> {
    let name = n.metadata.name.as_deref().unwrap_or("");
    let ts = n.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let spec = n.spec.as_ref();
    let raw: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(l) if !l.is_empty() => l.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .into_iter()
            .collect(),
    };
    let mut cidrs: Vec<(&str, Result<IpNetwork, String>)> = Vec::new();
    for c in raw {
        if cidrs.iter().any(|(r, _)| *r == c) {
            continue;
        }
        let parsed = match c.parse::<IpNetwork>() {
            Ok(net) if net.network() == net.ip() => Ok(net),
            Ok(_) => Err("host bits set".to_string()),
            Err(e) => Err(format!("not a CIDR: {e}")),
        };
        cidrs.push((c, parsed));
    }
    let internal_ips = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
        .collect();
    Claimant {
        name,
        age: (ts.is_none(), ts, name),
        cidrs,
        internal_ips,
    }
}

/// The gateway for `net`: the Node's first InternalIP of its family.
fn gateway(c: &Claimant<'_>, net: &IpNetwork) -> Result<Option<IpAddr>, String> {
    if c.internal_ips.is_empty() {
        // Not reported yet (a node that is starting): nothing to route.
        return Ok(None);
    }
    let mut bad = None;
    for ip in &c.internal_ips {
        match ip.parse::<IpAddr>() {
            Ok(a) if a.is_ipv4() == net.is_ipv4() => return Ok(Some(a)),
            Ok(_) => {}
            Err(_) => bad = bad.or(Some(*ip)),
        }
    }
    Err(match bad {
        Some(ip) => format!("InternalIP {ip:?} is not an IP address"),
        None => format!(
            "no InternalIP of its family (has {})",
            c.internal_ips.join(", ")
        ),
    })
}

/// What this node (`me`) should route, from the Nodes and the routes in
/// the kernel that are not ours. `own` is this node's podCIDR from its
/// settings, if any, which counts with its Node's before the Node is
/// registered or when the two differ.
pub fn desired<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    own: Option<IpNetwork>,
    foreign: &[Foreign],
) -> Desired {
    let mut all: Vec<Claimant<'a>> = Vec::new();
    let mut mine: Vec<IpNetwork> = own.into_iter().collect();
    for n in nodes {
        let c = claimant(n);
        if c.name == me {
            mine.extend(c.cidrs.iter().filter_map(|(_, p)| p.as_ref().ok().copied()));
        }
        // A Node being deleted gives up its podCIDR; this node's own
        // network is this node's all the same.
        if c.name == me || n.metadata.deletion_timestamp.is_none() {
            all.push(c);
        }
    }
    all.sort_by(|a, b| a.age.cmp(&b.age));

    // Between Nodes, oldest first: a podCIDR is granted unless it overlaps
    // one granted to an older Node. Granted podCIDRs never overlap.
    let mut granted: Index<&str> = Index::new();
    let mut lost: BTreeMap<(&str, IpNetwork), &str> = BTreeMap::new();
    for c in &all {
        let ok: Vec<IpNetwork> = c
            .cidrs
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().copied())
            .collect();
        for net in &ok {
            match granted.overlapping(net) {
                Some(owner) if *owner != c.name => {
                    lost.insert((c.name, *net), owner);
                }
                _ => {}
            }
        }
        for net in ok {
            if !lost.contains_key(&(c.name, net)) {
                granted.insert(&net, c.name);
            }
        }
    }

    let mut local: Index<&str> = Index::new();
    let mut others: Index<&str> = Index::new();
    for f in foreign {
        if f.local {
            local.insert(&f.dst, &f.text);
        } else {
            others.insert(&f.dst, &f.text);
        }
    }

    let mut d = Desired::default();
    for c in all.iter().filter(|c| c.name != me) {
        for (raw, parsed) in &c.cidrs {
            let refuse = |reason: Reason, with: String| Refusal {
                node: c.name.to_string(),
                cidr: raw.to_string(),
                reason,
                with,
            };
            let net = match parsed {
                Ok(net) => net,
                Err(e) => {
                    d.refused.push(refuse(Reason::Invalid, e.clone()));
                    continue;
                }
            };
            if let Some(m) = mine.iter().find(|m| overlaps(m, net)) {
                d.refused.push(refuse(Reason::ThisNode, m.to_string()));
                continue;
            }
            if let Some(owner) = lost.get(&(c.name, *net)) {
                d.refused.push(refuse(Reason::OlderNode, owner.to_string()));
                continue;
            }
            let via = match gateway(c, net) {
                Ok(Some(via)) => via,
                Ok(None) => continue,
                Err(e) => {
                    d.refused.push(refuse(Reason::Invalid, e));
                    continue;
                }
            };
            if let Some(r) = local.overlapping(net) {
                d.refused.push(refuse(Reason::LocalRoute, r.to_string()));
                continue;
            }
            if let Some(r) = others.within(net) {
                d.refused.push(refuse(Reason::ForeignRoute, r.to_string()));
                continue;
            }
            d.routes.insert(
                *net,
                Target {
                    via,
                    node: c.name.to_string(),
                },
            );
        }
    }
    d.refused.sort();
    d
}

/// What to do to the kernel: deletes first, then adds. A changed route is
/// deleted and added again, so that nothing but a route of ours is ever
/// replaced: the kernel matches a delete on our protocol, and refuses an
/// add (create-exclusive) where any route already is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub delete: Vec<Ours>,
    pub add: Vec<(IpNetwork, IpAddr)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
}

/// From `current` (our routes in the kernel) to `want`.
pub fn plan(want: &Routes, current: &[Ours]) -> Plan {
    let mut p = Plan::default();
    let mut kept = BTreeSet::new();
    for o in current {
        let right = want.get(&o.dst).map(|t| t.via) == o.via
            && o.via.is_some()
            && o.metric == default_metric(&o.dst);
        // A second copy of a route that is right goes too.
        if !(right && kept.insert(o.dst)) {
            p.delete.push(o.clone());
        }
    }
    for (dst, t) in want {
        if !kept.contains(dst) {
            p.add.push((*dst, t.via));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_at(name: &str, created: Option<&str>, cidrs: &[&str], ips: &[&str]) -> Node {
        let addrs: Vec<_> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        let mut meta = json!({"name": name});
        if let Some(t) = created {
            meta["creationTimestamp"] = json!(t);
        }
        serde_json::from_value(json!({"metadata": meta,
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
            "status": {"addresses": addrs}}))
        .expect("node")
    }

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        node_at(name, Some("2026-01-01T00:00:00Z"), &[cidr], &[ip])
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn routes(d: &Desired) -> Vec<String> {
        d.routes
            .iter()
            .map(|(n, t)| format!("{n} via {} ({})", t.via, t.node))
            .collect()
    }

    fn refused(d: &Desired) -> Vec<String> {
        d.refused
            .iter()
            .map(|r| format!("{} {} {} {}", r.node, r.cidr, r.reason.as_str(), r.with))
            .collect()
    }

    fn connected(dst: &str, dev: &str) -> Foreign {
        Foreign {
            dst: net(dst),
            local: true,
            text: format!("{dst} dev {dev} proto kernel scope link"),
        }
    }

    fn static_route(dst: &str, via: &str) -> Foreign {
        Foreign {
            dst: net(dst),
            local: false,
            text: format!("{dst} via {via} dev eth0 proto static"),
        }
    }

    fn permutations<T: Clone>(v: &[T]) -> Vec<Vec<T>> {
        if v.len() <= 1 {
            return vec![v.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..v.len() {
            let mut rest = v.to_vec();
            let x = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x.clone());
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn other_nodes_only_and_bad_ones_skipped() {
        let nodes = [
            node("inajob", "10.244.1.0/24", "192.168.43.111"),
            node("yuanying", "10.244.2.0/24", "192.168.43.112"),
            node("bad-cidr", "10.244.3.1/24", "192.168.43.113"),
            node("bad-ip", "10.244.4.0/24", "nope"),
            node("garbage", "x", "192.168.43.115"),
            node("v6-cidr-v4-ip", "fd00:4::/64", "192.168.43.116"),
            node_at("starting", None, &["10.244.7.0/24"], &[]),
        ];
        let d = desired(&nodes, "inajob", None, &[]);
        assert_eq!(routes(&d), ["10.244.2.0/24 via 192.168.43.112 (yuanying)"]);
        assert_eq!(
            refused(&d),
            [
                "bad-cidr 10.244.3.1/24 invalid host bits set",
                "bad-ip 10.244.4.0/24 invalid InternalIP \"nope\" is not an IP address",
                "garbage x invalid not a CIDR: invalid address: x",
                "v6-cidr-v4-ip fd00:4::/64 invalid no InternalIP of its family (has 192.168.43.116)",
            ]
        );
        assert_eq!(d.nodes_refused(), 4);
    }

    #[test]
    fn the_oldest_node_keeps_a_duplicate_whatever_the_order() {
        let nodes = [
            // The older is last by name: a name order would pick the other.
            node_at(
                "zz-old",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.3.0/24"],
                &["192.168.43.113"],
            ),
            node_at(
                "aa-young",
                Some("2026-01-01T00:00:01Z"),
                &["10.244.3.0/24"],
                &["192.168.43.114"],
            ),
            node_at(
                "mm-younger",
                Some("2026-01-02T00:00:00Z"),
                &["10.244.3.0/24"],
                &["192.168.43.115"],
            ),
            node("inajob", "10.244.1.0/24", "192.168.43.111"),
        ];
        let want = Desired {
            routes: [(
                net("10.244.3.0/24"),
                Target {
                    via: ip("192.168.43.113"),
                    node: "zz-old".into(),
                },
            )]
            .into(),
            refused: vec![
                Refusal {
                    node: "aa-young".into(),
                    cidr: "10.244.3.0/24".into(),
                    reason: Reason::OlderNode,
                    with: "zz-old".into(),
                },
                Refusal {
                    node: "mm-younger".into(),
                    cidr: "10.244.3.0/24".into(),
                    reason: Reason::OlderNode,
                    with: "zz-old".into(),
                },
            ],
        };
        for p in permutations(&nodes) {
            assert_eq!(desired(&p, "inajob", None, &[]), want);
        }
        assert_eq!(
            want.refused[0].to_string(),
            "Node aa-young's podCIDR 10.244.3.0/24: overlaps Node zz-old's podCIDR; zz-old is older and keeps the route"
        );
    }

    #[test]
    fn equal_timestamps_go_by_name_and_a_missing_one_is_youngest() {
        let t = Some("2026-01-01T00:00:00Z");
        let nodes = [
            node_at("b", t, &["10.244.3.0/24"], &["192.168.43.2"]),
            node_at("a", t, &["10.244.3.0/24"], &["192.168.43.1"]),
            node_at("0-no-time", None, &["10.244.3.0/24"], &["192.168.43.3"]),
        ];
        for p in permutations(&nodes) {
            let d = desired(&p, "me", None, &[]);
            assert_eq!(routes(&d), ["10.244.3.0/24 via 192.168.43.1 (a)"]);
            assert_eq!(
                refused(&d),
                [
                    "0-no-time 10.244.3.0/24 older-node a",
                    "b 10.244.3.0/24 older-node a"
                ]
            );
        }
    }

    #[test]
    fn overlaps_between_other_nodes_go_to_the_oldest() {
        let nodes = [
            node_at(
                "wide-old",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.4.0/23"],
                &["192.168.43.1"],
            ),
            node_at(
                "narrow-young",
                Some("2026-01-02T00:00:00Z"),
                &["10.244.5.0/24"],
                &["192.168.43.2"],
            ),
            node_at(
                "narrow-old",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.8.0/24"],
                &["192.168.43.3"],
            ),
            node_at(
                "wide-young",
                Some("2026-01-02T00:00:00Z"),
                &["10.244.8.0/22"],
                &["192.168.43.4"],
            ),
            node_at(
                "beside",
                Some("2026-01-03T00:00:00Z"),
                &["10.244.6.0/24"],
                &["192.168.43.5"],
            ),
        ];
        let d = desired(&nodes, "me", None, &[]);
        assert_eq!(
            routes(&d),
            [
                "10.244.4.0/23 via 192.168.43.1 (wide-old)",
                "10.244.6.0/24 via 192.168.43.5 (beside)",
                "10.244.8.0/24 via 192.168.43.3 (narrow-old)",
            ]
        );
        assert_eq!(
            refused(&d),
            [
                "narrow-young 10.244.5.0/24 older-node wide-old",
                "wide-young 10.244.8.0/22 older-node narrow-old",
            ]
        );
    }

    #[test]
    fn this_nodes_podcidr_is_never_given_away() {
        let nodes = [
            // Older than this node, and the same podCIDR.
            node_at(
                "intruder",
                Some("2025-01-01T00:00:00Z"),
                &["10.244.1.0/24"],
                &["192.168.43.113"],
            ),
            node_at(
                "wide",
                Some("2026-02-01T00:00:00Z"),
                &["10.244.0.0/16"],
                &["192.168.43.114"],
            ),
            node_at(
                "narrow",
                Some("2026-02-01T00:00:00Z"),
                &["10.244.1.128/25"],
                &["192.168.43.115"],
            ),
            node_at(
                "inajob",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.1.0/24"],
                &["192.168.43.111"],
            ),
        ];
        let d = desired(&nodes, "inajob", None, &[]);
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        assert_eq!(
            refused(&d),
            [
                "intruder 10.244.1.0/24 this-node 10.244.1.0/24",
                "narrow 10.244.1.128/25 this-node 10.244.1.0/24",
                "wide 10.244.0.0/16 this-node 10.244.1.0/24",
            ]
        );
        // Before this node's Node is registered: from its settings.
        let d = desired(&nodes[..1], "inajob", Some(net("10.244.1.0/24")), &[]);
        assert_eq!(
            refused(&d),
            ["intruder 10.244.1.0/24 this-node 10.244.1.0/24"]
        );
        assert_eq!(
            d.refused[0].to_string(),
            "Node intruder's podCIDR 10.244.1.0/24: overlaps this node's podCIDR 10.244.1.0/24"
        );
    }

    #[test]
    fn a_node_that_lost_here_still_holds_its_claim_between_others() {
        // wide is the oldest: every node of the cluster gives it
        // 10.244.0.0/16 over young. This node refuses wide for its own
        // podCIDR, and young all the same, as every node does.
        let nodes = [
            node_at(
                "wide",
                Some("2025-01-01T00:00:00Z"),
                &["10.244.0.0/16"],
                &["192.168.43.114"],
            ),
            node_at(
                "young",
                Some("2026-02-01T00:00:00Z"),
                &["10.244.9.0/24"],
                &["192.168.43.115"],
            ),
            node_at(
                "inajob",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.1.0/24"],
                &["192.168.43.111"],
            ),
        ];
        let d = desired(&nodes, "inajob", None, &[]);
        assert!(d.routes.is_empty());
        assert_eq!(
            refused(&d),
            [
                "wide 10.244.0.0/16 this-node 10.244.1.0/24",
                "young 10.244.9.0/24 older-node wide",
            ]
        );
    }

    #[test]
    fn local_networks_and_addresses_are_never_routed_away() {
        let kernel = [
            connected("10.244.1.0/24", "cni0"),
            connected("192.168.43.0/24", "eth0"),
            Foreign {
                dst: net("172.16.0.1/32"),
                local: true,
                text: "local 172.16.0.1 dev dummy0 table local proto kernel scope host".into(),
            },
            // Wider routes with a gateway are what more specific routes
            // are for.
            static_route("0.0.0.0/0", "192.168.43.1"),
            static_route("10.0.0.0/8", "192.168.43.1"),
        ];
        let nodes = [
            // cni0's subnet, with no podCIDR on this node's Node (the
            // bridge was set up from a CNI config alone).
            node("intruder", "10.244.1.0/24", "192.168.43.113"),
            node("lan", "192.168.43.0/25", "192.168.43.114"),
            node("addr", "172.16.0.0/24", "192.168.43.115"),
            node("fine", "10.244.2.0/24", "192.168.43.112"),
        ];
        let d = desired(&nodes, "inajob", None, &kernel);
        assert_eq!(routes(&d), ["10.244.2.0/24 via 192.168.43.112 (fine)"]);
        assert_eq!(
            refused(&d),
            [
                "addr 172.16.0.0/24 local-route local 172.16.0.1 dev dummy0 table local proto kernel scope host",
                "intruder 10.244.1.0/24 local-route 10.244.1.0/24 dev cni0 proto kernel scope link",
                "lan 192.168.43.0/25 local-route 192.168.43.0/24 dev eth0 proto kernel scope link",
            ]
        );
    }

    #[test]
    fn foreign_routes_at_or_inside_a_podcidr_are_left_alone() {
        let kernel = [
            static_route("10.244.2.0/24", "192.168.43.200"),
            static_route("10.244.3.128/25", "192.168.43.201"),
            Foreign {
                dst: net("10.244.5.0/24"),
                local: false,
                text: "blackhole 10.244.5.0/24 proto static metric 50".into(),
            },
            static_route("10.244.4.0/23", "192.168.43.202"),
        ];
        let nodes = [
            node("yuanying", "10.244.2.0/24", "192.168.43.112"),
            node("third", "10.244.3.0/24", "192.168.43.113"),
            node("fourth", "10.244.4.0/24", "192.168.43.114"),
            node("fifth", "10.244.5.0/24", "192.168.43.115"),
        ];
        let d = desired(&nodes, "inajob", None, &kernel);
        // Inside a wider route of someone else's: routed.
        assert_eq!(routes(&d), ["10.244.4.0/24 via 192.168.43.114 (fourth)"]);
        assert_eq!(
            refused(&d),
            [
                "fifth 10.244.5.0/24 foreign-route blackhole 10.244.5.0/24 proto static metric 50",
                "third 10.244.3.0/24 foreign-route 10.244.3.128/25 via 192.168.43.201 dev eth0 proto static",
                "yuanying 10.244.2.0/24 foreign-route 10.244.2.0/24 via 192.168.43.200 dev eth0 proto static",
            ]
        );
    }

    #[test]
    fn ipv6_and_dual_stack() {
        let nodes = [
            node_at(
                "inajob",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["192.168.43.111", "fd00::111"],
            ),
            node_at(
                "yuanying",
                Some("2026-01-01T00:00:00Z"),
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["192.168.43.112", "fd00::112"],
            ),
            node_at(
                "dup6",
                Some("2026-01-02T00:00:00Z"),
                &["fd00:10:244:2::/64"],
                &["fd00::113"],
            ),
            node_at(
                "mine6",
                Some("2026-01-02T00:00:00Z"),
                &["fd00:10:244::/56"],
                &["fd00::114"],
            ),
            node_at(
                "v6-only",
                Some("2026-01-02T00:00:00Z"),
                &["fd00:10:245::/64"],
                &["fd00::115"],
            ),
        ];
        let kernel = [
            connected("fe80::/64", "eth0"),
            static_route("fd00:10:245::/64", "fd00::1"),
        ];
        let d = desired(&nodes, "inajob", None, &kernel);
        assert_eq!(
            routes(&d),
            [
                "10.244.2.0/24 via 192.168.43.112 (yuanying)",
                "fd00:10:244:2::/64 via fd00::112 (yuanying)",
            ]
        );
        assert_eq!(
            refused(&d),
            [
                "dup6 fd00:10:244:2::/64 older-node yuanying",
                "mine6 fd00:10:244::/56 this-node fd00:10:244:1::/64",
                "v6-only fd00:10:245::/64 foreign-route fd00:10:245::/64 via fd00::1 dev eth0 proto static",
            ]
        );
        // The same prefix bits in the other family are no overlap.
        let v4 = [node("v4", "10.244.2.0/24", "192.168.43.2")];
        assert_eq!(
            routes(&desired(
                &v4,
                "me",
                None,
                &[connected("::af4:200/120", "x")]
            )),
            ["10.244.2.0/24 via 192.168.43.2 (v4)"]
        );
    }

    #[test]
    fn a_node_being_deleted_gives_up_its_podcidr() {
        let mut old = node_at(
            "old",
            Some("2026-01-01T00:00:00Z"),
            &["10.244.3.0/24"],
            &["192.168.43.113"],
        );
        old.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        let young = node_at(
            "young",
            Some("2026-01-02T00:00:00Z"),
            &["10.244.3.0/24"],
            &["192.168.43.114"],
        );
        let d = desired([&old, &young], "me", None, &[]);
        assert_eq!(routes(&d), ["10.244.3.0/24 via 192.168.43.114 (young)"]);
        assert!(d.refused.is_empty());
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            Reason::Invalid,
            Reason::ThisNode,
            Reason::OlderNode,
            Reason::LocalRoute,
            Reason::ForeignRoute,
        ] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("nope"), None);
    }

    fn want(pairs: &[(&str, &str)]) -> Routes {
        pairs
            .iter()
            .map(|(d, v)| {
                (
                    net(d),
                    Target {
                        via: ip(v),
                        node: "n".into(),
                    },
                )
            })
            .collect()
    }

    fn ours(dst: &str, via: Option<&str>, metric: u32) -> Ours {
        Ours {
            dst: net(dst),
            via: via.map(ip),
            metric,
        }
    }

    #[test]
    fn plan_adds_changes_and_removes_only_what_differs() {
        let w = want(&[
            ("10.244.2.0/24", "192.168.43.112"),
            ("10.244.3.0/24", "192.168.43.113"),
            ("10.244.4.0/24", "192.168.43.114"),
            ("fd00:10:244:2::/64", "fd00::112"),
        ]);
        let current = vec![
            ours("10.244.2.0/24", Some("192.168.43.112"), 0),
            // Another gateway: deleted, then added.
            ours("10.244.3.0/24", Some("192.168.43.199"), 0),
            // Not wanted any more.
            ours("10.244.9.0/24", Some("192.168.43.119"), 0),
            // Ours by protocol, but at another metric or without a gateway.
            ours("10.244.4.0/24", Some("192.168.43.114"), 100),
            ours("10.244.8.0/24", None, 0),
            // A second copy of a right route.
            ours("10.244.2.0/24", Some("192.168.43.112"), 0),
            // IPv6 routes are at 1024.
            ours("fd00:10:244:2::/64", Some("fd00::112"), 1024),
        ];
        let p = plan(&w, &current);
        assert_eq!(
            p.delete,
            vec![
                ours("10.244.3.0/24", Some("192.168.43.199"), 0),
                ours("10.244.9.0/24", Some("192.168.43.119"), 0),
                ours("10.244.4.0/24", Some("192.168.43.114"), 100),
                ours("10.244.8.0/24", None, 0),
                ours("10.244.2.0/24", Some("192.168.43.112"), 0),
            ]
        );
        assert_eq!(
            p.add,
            vec![
                (net("10.244.3.0/24"), ip("192.168.43.113")),
                (net("10.244.4.0/24"), ip("192.168.43.114")),
            ]
        );
        let done: Vec<Ours> = w
            .iter()
            .map(|(d, t)| Ours {
                dst: *d,
                via: Some(t.via),
                metric: default_metric(d),
            })
            .collect();
        assert!(plan(&w, &done).is_empty());
    }

    #[test]
    fn a_refused_podcidr_loses_the_route_we_had_for_it() {
        // Ours was there first; then someone else's route at the same
        // destination: ours goes, theirs stays (the plan never names it).
        let nodes = [node("yuanying", "10.244.2.0/24", "192.168.43.112")];
        let kernel = [Foreign {
            dst: net("10.244.2.0/24"),
            local: false,
            text: "10.244.2.0/24 via 192.168.43.200 dev eth0 proto static metric 10".into(),
        }];
        let d = desired(&nodes, "inajob", None, &kernel);
        let p = plan(
            &d.routes,
            &[ours("10.244.2.0/24", Some("192.168.43.112"), 0)],
        );
        assert_eq!(
            p.delete,
            vec![ours("10.244.2.0/24", Some("192.168.43.112"), 0)]
        );
        assert!(p.add.is_empty());
    }

    #[test]
    fn the_index_finds_overlaps_both_ways() {
        let mut i: Index<&str> = Index::new();
        i.insert(&net("10.244.0.0/16"), "wide");
        i.insert(&net("10.245.1.128/25"), "narrow");
        i.insert(&net("::/0"), "v6 default");
        assert_eq!(i.holding(&net("10.244.3.0/24")), Some(&"wide"));
        assert_eq!(i.within(&net("10.244.3.0/24")), None);
        assert_eq!(i.within(&net("10.245.0.0/16")), Some(&"narrow"));
        assert_eq!(i.within(&net("10.245.1.0/25")), None);
        assert_eq!(i.overlapping(&net("10.0.0.0/8")), Some(&"wide"));
        assert_eq!(i.overlapping(&net("10.246.0.0/16")), None);
        assert_eq!(i.holding(&net("fd00::/64")), Some(&"v6 default"));
        assert_eq!(i.within(&net("0.0.0.0/0")), Some(&"wide"));
        assert!(overlaps(&net("0.0.0.0/0"), &net("10.0.0.1/32")));
        assert!(!overlaps(&net("10.0.0.0/8"), &net("::/0")));
    }
}
