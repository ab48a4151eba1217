//! The nftables backend for ClusterIP Services: one table, `ip node-sync`,
//! owned by node-sync, written whole once and then changed incrementally,
//! each time in one `nft -f` transaction.
//!
//! ```text
//! table ip node-sync {
//!   set vips { type ipv4_addr }                       # every VIP we serve
//!   map services { type ipv4_addr . inet_proto . inet_service : verdict }
//!                                                     # vip . proto . port -> goto svc_*
//!   chain prerouting  { type nat hook prerouting priority dstnat; ...  vmap @services }
//!   chain output      { type nat hook output priority -100; ...  vmap @services }
//!   chain hairpin     { type filter hook prerouting priority dstnat + 10;
//!                       DNATed to a backend behind the interface it came in on: mark }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       marked: masquerade; to a VIP from outside the cluster CIDR: masquerade }
//!   chain svc_<vip>_<proto>_<port> {              # one rule per endpoint:
//!       numgen inc mod N-i 0 dnat to <endpoint i>   # i < N-1
//!       dnat to <endpoint N-1> }
//!                     # or, with no endpoint: reject (TCP reset / ICMP port unreachable)
//! }
//! ```
//!
//! Why this shape: each rule has its own `numgen` counter, so rule i,
//! seeing the connections the rules before it passed on, takes every
//! (N-i)th of them: connections to a service go 0, 1, ..., N-1, 0, ...
//! One chain per service port and nothing per endpoint: every `nft -f`
//! loads the table's chains, and every commit that adds a DNAT rule makes
//! the kernel walk the whole table, so their number is what a change
//! costs at 10,000 services. Sets and maps per service (anonymous or
//! named) cost the kernel time quadratic in their number to create, and a
//! shared map looked up from every service chain is walked once per chain
//! that binds it.
//!
//! A whole write starts with `add table; delete table`, so it replaces
//! whatever is programmed atomically; established connections keep their
//! conntrack NAT bindings (a restart adopts without a drop). The caller
//! renders only from a complete list: after an API error or a partial
//! list it keeps what is programmed. IPv4 only: IPv6 VIPs and endpoints
//! are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::{Proto, ServicePort};

pub use super::nft_read::{Programmed, programmed_in, read_in, read_within};

pub const TABLE: &str = "ip node-sync";
pub(super) const FAMILY: &str = "ip";
pub(super) const NAME: &str = "node-sync";
/// kube-proxy's masquerade bit, so the two agree on what a mark means.
const MASQ_MARK: &str = "0x4000";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Exec(#[from] netkit::nft::NftError),
    #[error("reading nft's JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl NftError {
    /// `nft` ran past its deadline and was killed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, NftError::Exec(e) if e.is_timeout())
    }
}

pub(super) fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

pub(super) fn svc_chain(vip: Ipv4Addr, proto: Proto, port: u16) -> String {
    format!(
        "svc_{}_{}_{port}",
        vip.to_string().replace('.', "_"),
        proto_name(proto)
    )
}

pub(super) type Key = (Ipv4Addr, Proto, u16);

/// The IPv4 service ports to program, one per (vip, proto, port), sorted,
/// with their IPv4 endpoints in the given order.
fn v4_ports(services: &[ServicePort]) -> BTreeMap<Key, Vec<SocketAddr>> {
    let mut out = BTreeMap::new();
    for s in services {
        let IpAddr::V4(vip) = s.vip else { continue };
        out.entry((vip, s.proto, s.port)).or_insert_with(|| {
            s.endpoints
                .iter()
                .filter(|e| e.is_ipv4())
                .copied()
                .collect()
        });
    }
    out
}

/// One `nft -f` script that (re)defines the whole table for `services`.
/// `cluster_cidr` is the pod network: traffic to a VIP from outside it is
/// masqueraded so replies come back through this node. An IPv6 cluster
/// CIDR masquerades every VIP's traffic (no IPv4 source is inside it).
pub fn render(services: &[ServicePort], cluster_cidr: IpNetwork) -> String {
    let ports = v4_ports(services);
    let mut s = String::with_capacity(ports.len() * 300 + 2048);
    // Creating before deleting makes the delete succeed on a fresh node;
    // both and the new table are one transaction.
    let _ = writeln!(
        s,
        "add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{"
    );

    let mut vips: Vec<Ipv4Addr> = ports.keys().map(|k| k.0).collect();
    vips.dedup();
    s.push_str("\tset vips {\n\t\ttype ipv4_addr\n");
    elements(&mut s, vips.iter().map(|v| v.to_string()));
    s.push_str("\t}\n");

    s.push_str("\tmap services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    elements(&mut s, ports.keys().map(|&k| service_element(k)));
    s.push_str("\t}\n");

    // Pods' traffic arrives through prerouting; the node's own through output.
    let lookup = "ip daddr . meta l4proto . th dport vmap @services";
    let _ = writeln!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\t{lookup}\n\t}}"
    );
    let _ = writeln!(
        s,
        "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\t{lookup}\n\t}}"
    );
    // After DNAT (priority dstnat + 10 sees the rewritten address): a
    // backend reached through the interface the packet came in on (a pod
    // on the same bridge, or the client itself) would answer the client
    // directly, bypassing our conntrack, unless bridged traffic is
    // netfiltered. Masquerading makes it answer us instead, whatever
    // br_netfilter says.
    let _ = writeln!(
        s,
        "\tchain hairpin {{\n\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n\
         \t\tct status dnat ct direction original ct original ip daddr @vips fib daddr . iif oif exists meta mark set meta mark | {MASQ_MARK}\n\t}}"
    );
    // The bit is cleared before masquerading so a later hop (a tunnel,
    // another table) does not act on it again. Nat chains see only a
    // connection's first packet, whose source is still the client's.
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQ_MARK} == {MASQ_MARK} meta mark set meta mark ^ {MASQ_MARK} masquerade fully-random\n\
         \t\tct status dnat ct original ip daddr @vips {}masquerade fully-random\n\t}}",
        outside(cluster_cidr)
    );

    for (&key, eps) in &ports {
        service_chain(&mut s, key, eps);
    }
    s.push_str("}\n");
    s
}

/// An `elements = { ... }` line, or nothing for none (nft rejects `{ }`).
fn elements(s: &mut String, items: impl Iterator<Item = String>) {
    let mut first = true;
    for it in items {
        s.push_str(if first {
            "\t\telements = { "
        } else {
            ",\n\t\t\t"
        });
        s.push_str(&it);
        first = false;
    }
    if !first {
        s.push_str(" }\n");
    }
}

/// The match for traffic from outside the pod network (empty for an IPv6
/// cluster CIDR: no IPv4 source is inside it).
fn outside(cluster_cidr: IpNetwork) -> String {
    match cluster_cidr {
        // The network, whatever host bits the configuration carries.
        IpNetwork::V4(n) => format!("ip saddr != {}/{} ", n.network(), n.prefix()),
        IpNetwork::V6(_) => String::new(),
    }
}

/// A service port's chain, in the table block's syntax: DNAT to each of
/// its endpoints in turn, or a reject without endpoints.
fn service_chain(s: &mut String, (vip, proto, port): Key, eps: &[SocketAddr]) {
    let chain = svc_chain(vip, proto, port);
    let _ = writeln!(s, "\tchain {chain} {{");
    for rule in chain_rules(proto, eps) {
        let _ = writeln!(s, "\t\t{rule}");
    }
    s.push_str("\t}\n");
}

fn chain_rules(proto: Proto, eps: &[SocketAddr]) -> Vec<String> {
    let p = proto_name(proto);
    let n = eps.len();
    if n == 0 {
        // As kube-proxy: refuse at once rather than let clients time out.
        return vec![
            match proto {
                Proto::Tcp => "reject with tcp reset",
                Proto::Udp => "reject with icmp type port-unreachable",
            }
            .to_string(),
        ];
    }
    eps.iter()
        .enumerate()
        .map(|(i, ep)| {
            if i + 1 < n {
                format!("numgen inc mod {} 0 meta l4proto {p} dnat to {ep}", n - i)
            } else {
                format!("meta l4proto {p} dnat to {ep}")
            }
        })
        .collect()
}

fn service_key((vip, proto, port): Key) -> String {
    format!("{vip} . {} . {port}", proto_name(proto))
}

fn service_element(k: Key) -> String {
    format!("{} : goto {}", service_key(k), svc_chain(k.0, k.1, k.2))
}

/// One `nft -f` transaction that turns the table programming `prev` into
/// one programming `want`, touching only the service ports that differ:
/// a changed service has its one chain refilled, nothing else. The caller
/// falls back to [`render`] when it fails (the table is not what `prev`
/// says). `None` when nothing differs.
pub fn render_changes(
    prev: &[ServicePort],
    want: &[ServicePort],
    _cluster_cidr: IpNetwork,
) -> Option<String> {
    let (p, w) = (v4_ports(prev), v4_ports(want));
    if p == w {
        return None;
    }
    let t = TABLE;
    let mut s = String::new();
    let line = |s: &mut String, verb: &str, set: &str, items: &[String]| {
        if !items.is_empty() {
            let _ = writeln!(s, "{verb} element {t} {set} {{ {} }}", items.join(", "));
        }
    };
    // Unmapped first, then the chains nothing references any more.
    let gone: Vec<Key> = p.keys().filter(|k| !w.contains_key(k)).copied().collect();
    let keys: Vec<String> = gone.iter().map(|&k| service_key(k)).collect();
    line(&mut s, "delete", "services", &keys);
    for &(vip, proto, port) in &gone {
        let chain = svc_chain(vip, proto, port);
        let _ = writeln!(s, "flush chain {t} {chain}\ndelete chain {t} {chain}");
    }
    let vips = |m: &BTreeMap<Key, Vec<SocketAddr>>| -> BTreeSet<Ipv4Addr> {
        m.keys().map(|k| k.0).collect()
    };
    let (pv, wv) = (vips(&p), vips(&w));
    let old_vips: Vec<String> = pv.difference(&wv).map(Ipv4Addr::to_string).collect();
    line(&mut s, "delete", "vips", &old_vips);
    // Changed and new chains, filled before the map elements that go to
    // them. `add chain` is a no-op for one that exists.
    let mut added = Vec::new();
    for (&key, eps) in &w {
        match p.get(&key) {
            Some(old) if old == eps => continue,
            Some(_) => {}
            None => added.push(service_element(key)),
        }
        let chain = svc_chain(key.0, key.1, key.2);
        let _ = writeln!(s, "add chain {t} {chain}\nflush chain {t} {chain}");
        for rule in chain_rules(key.1, eps) {
            let _ = writeln!(s, "add rule {t} {chain} {rule}");
        }
    }
    line(&mut s, "add", "services", &added);
    let new_vips: Vec<String> = wv.difference(&pv).map(Ipv4Addr::to_string).collect();
    line(&mut s, "add", "vips", &new_vips);
    Some(s)
}

/// Deletes the table (another proxy mode took over); `true` when it was
/// there.
pub fn remove(timeout: Duration) -> Result<bool, NftError> {
    // The table names only: listing the table itself would print every
    // service's chain.
    let tables =
        netkit::nft::list_within(None, &["list", "tables", FAMILY], timeout)?.unwrap_or_default();
    let line = format!("table {TABLE}");
    if !String::from_utf8_lossy(&tables)
        .lines()
        .any(|l| l.trim() == line)
    {
        return Ok(false);
    }
    apply(&format!("delete table {TABLE}\n"), timeout)?;
    Ok(true)
}

/// Applies `script` in this netns with one `nft -f -`, all or nothing;
/// `nft` is killed after `timeout` (the transaction then never commits).
pub fn apply(script: &str, timeout: Duration) -> Result<(), NftError> {
    Ok(netkit::nft::apply_within(None, script, timeout)?)
}

/// Applies `script` with one `nft -f -` in `netns` (None: this one).
pub fn apply_in(netns: Option<&Path>, script: &str) -> Result<(), NftError> {
    Ok(netkit::nft::apply_in(netns, script)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::test_support::{sp, tutorial};

    fn cidr() -> IpNetwork {
        "10.244.0.0/16".parse().expect("cidr")
    }

    #[test]
    fn replaces_the_whole_table_in_one_script() {
        let s = render(&[tutorial()], cidr());
        assert!(s.starts_with(
            "add table ip node-sync\ndelete table ip node-sync\ntable ip node-sync {\n"
        ));
        assert!(s.ends_with("}\n"));
        assert!(s.contains("type nat hook prerouting priority dstnat;"));
        assert!(s.contains("type nat hook output priority -100;"));
        assert!(s.contains("type nat hook postrouting priority srcnat;"));
    }

    #[test]
    fn the_tutorial_service_round_robins_to_its_endpoints() {
        let s = render(&[tutorial()], cidr());
        assert!(
            s.contains("elements = { 10.254.10.128 . tcp . 80 : goto svc_10_254_10_128_tcp_80 }")
        );
        assert!(s.contains("elements = { 10.254.10.128 }"));
        assert!(s.contains(
            "\tchain svc_10_254_10_128_tcp_80 {\n\
             \t\tnumgen inc mod 2 0 meta l4proto tcp dnat to 10.244.1.2:8080\n\
             \t\tmeta l4proto tcp dnat to 10.244.2.2:8080\n\t}"
        ));
    }

    #[test]
    fn masquerades_from_outside_the_cluster_and_hairpins() {
        let s = render(&[tutorial()], "10.244.7.9/16".parse().expect("cidr"));
        // The network, not the host address given.
        assert!(s.contains(
            "ct status dnat ct original ip daddr @vips ip saddr != 10.244.0.0/16 masquerade fully-random\n"
        ));
        assert!(s.contains("fib daddr . iif oif exists meta mark set meta mark | 0x4000"));
        assert!(s.contains(
            "meta mark & 0x4000 == 0x4000 meta mark set meta mark ^ 0x4000 masquerade fully-random"
        ));
    }

    #[test]
    fn no_endpoints_reject() {
        let s = render(
            &[
                sp("10.254.0.10", 53, Proto::Udp, &[]),
                sp("10.254.0.10", 53, Proto::Tcp, &[]),
            ],
            cidr(),
        );
        assert!(s.contains("chain svc_10_254_0_10_tcp_53 {\n\t\treject with tcp reset\n\t}"));
        assert!(s.contains(
            "chain svc_10_254_0_10_udp_53 {\n\t\treject with icmp type port-unreachable\n\t}"
        ));
        assert!(!s.contains("numgen"));
        // One VIP in the set for both ports.
        assert!(s.contains("elements = { 10.254.0.10 }"));
    }

    #[test]
    fn ipv6_and_duplicates_are_skipped() {
        let s = render(
            &[
                sp("fd00::10", 80, Proto::Tcp, &["[fd00::2]:80"]),
                sp(
                    "10.254.0.1",
                    443,
                    Proto::Tcp,
                    &["[fd00::2]:80", "10.244.1.5:6443"],
                ),
                sp("10.254.0.1", 443, Proto::Tcp, &["10.244.1.6:6443"]),
            ],
            cidr(),
        );
        assert!(!s.contains("fd00"));
        assert!(!s.contains("10.244.1.6"));
        assert!(s.contains("\t\tmeta l4proto tcp dnat to 10.244.1.5:6443\n\t}"));
        assert!(!s.contains("numgen"));
    }

    #[test]
    fn nothing_to_program_is_an_empty_table() {
        let s = render(&[], cidr());
        assert!(!s.contains("elements"));
        assert!(s.contains("map services"));
    }

    #[test]
    fn a_changed_service_is_its_chain_refilled() {
        let mut next = tutorial();
        next.endpoints[1] = "10.244.2.9:8080".parse().expect("ep");
        let s =
            render_changes(&[tutorial()], std::slice::from_ref(&next), cidr()).expect("a change");
        assert_eq!(
            s,
            "add chain ip node-sync svc_10_254_10_128_tcp_80\n\
             flush chain ip node-sync svc_10_254_10_128_tcp_80\n\
             add rule ip node-sync svc_10_254_10_128_tcp_80 numgen inc mod 2 0 meta l4proto tcp dnat to 10.244.1.2:8080\n\
             add rule ip node-sync svc_10_254_10_128_tcp_80 meta l4proto tcp dnat to 10.244.2.9:8080\n"
        );
        assert_eq!(render_changes(&[tutorial()], &[tutorial()], cidr()), None);
    }

    #[test]
    fn a_service_added_and_one_removed() {
        let other = sp("10.254.0.10", 53, Proto::Udp, &[]);
        let s =
            render_changes(&[tutorial()], std::slice::from_ref(&other), cidr()).expect("a change");
        assert_eq!(
            s,
            "delete element ip node-sync services { 10.254.10.128 . tcp . 80 }\n\
             flush chain ip node-sync svc_10_254_10_128_tcp_80\n\
             delete chain ip node-sync svc_10_254_10_128_tcp_80\n\
             delete element ip node-sync vips { 10.254.10.128 }\n\
             add chain ip node-sync svc_10_254_0_10_udp_53\n\
             flush chain ip node-sync svc_10_254_0_10_udp_53\n\
             add rule ip node-sync svc_10_254_0_10_udp_53 reject with icmp type port-unreachable\n\
             add element ip node-sync services { 10.254.0.10 . udp . 53 : goto svc_10_254_0_10_udp_53 }\n\
             add element ip node-sync vips { 10.254.0.10 }\n"
        );
    }
}
