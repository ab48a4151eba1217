//! The nftables backend for ClusterIP Services: one table, `ip node-sync`,
//! owned by node-sync and rewritten whole in one `nft -f` transaction.
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
//!   chain postrouting { type nat hook postrouting priority srcnat; marked: masquerade }
//!   chain svc_<vip>_<proto>_<port> { from outside the cluster CIDR: mark;
//!                       numgen inc mod N-i 0 goto svc_..._ep<i> (i < N-1); goto ..._ep<N-1> }
//!                     # or, with no endpoint: reject (TCP reset / ICMP port unreachable)
//!   chain svc_<vip>_<proto>_<port>_ep<i> { from the endpoint itself: mark; dnat to ep }
//! }
//! ```
//!
//! The script starts with `add table; delete table`, so it replaces
//! whatever is programmed atomically: stale services, VIPs and backends go
//! with the old table, and established connections keep their conntrack
//! NAT bindings across a rewrite (a restart adopts without a drop).
//! The caller renders only from a complete list: after an API error or a
//! partial list it keeps what is programmed (see [`programmed`]) rather
//! than rendering the little it has. IPv4 only: IPv6 VIPs and endpoints
//! are skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::{Proto, ServicePort};

pub const TABLE: &str = "ip node-sync";
/// kube-proxy's masquerade bit, so the two agree on what a mark means.
const MASQ_MARK: &str = "0x4000";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Exec(#[from] netkit::nft::NftError),
    #[error("reading nft's JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn svc_chain(vip: Ipv4Addr, proto: Proto, port: u16) -> String {
    format!(
        "svc_{}_{}_{port}",
        vip.to_string().replace('.', "_"),
        proto_name(proto)
    )
}

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
    let mut s = String::new();
    // Creating before deleting makes the delete succeed on a fresh node;
    // both and the new table are one transaction.
    let _ = writeln!(
        s,
        "add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{"
    );

    let mut vips: Vec<Ipv4Addr> = ports.keys().map(|k| k.0).collect();
    vips.dedup();
    let _ = writeln!(s, "\tset vips {{\n\t\ttype ipv4_addr");
    if !vips.is_empty() {
        let list: Vec<String> = vips.iter().map(Ipv4Addr::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n");

    let _ = writeln!(
        s,
        "\tmap services {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict"
    );
    if !ports.is_empty() {
        let elems: Vec<String> = ports.keys().map(|&k| map_element(k)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t"));
    }
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
    // on the same bridge) would answer the client directly, bypassing our
    // conntrack, unless bridged traffic is netfiltered. Masquerading makes
    // it answer us instead, whatever br_netfilter says.
    let _ = writeln!(
        s,
        "\tchain hairpin {{\n\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n\
         \t\tct status dnat ct direction original ct original ip daddr @vips fib daddr . iif oif exists meta mark set meta mark | {MASQ_MARK}\n\t}}"
    );
    // The bit is cleared before masquerading so a later hop (a tunnel,
    // another table) does not act on it again.
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQ_MARK} == 0 return\n\
         \t\tmeta mark set meta mark ^ {MASQ_MARK} masquerade fully-random\n\t}}"
    );

    let outside = outside(cluster_cidr);
    for (&key, eps) in &ports {
        service_chains(&mut s, key, eps, &outside);
    }
    s.push_str("}\n");
    s
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

type Key = (Ipv4Addr, Proto, u16);

/// A service port's chains, in the table block's syntax: the service
/// chain (round robin, or a reject without endpoints) and one chain per
/// endpoint.
fn service_chains(s: &mut String, (vip, proto, port): Key, eps: &[SocketAddr], outside: &str) {
    let chain = svc_chain(vip, proto, port);
    let _ = writeln!(s, "\tchain {chain} {{");
    if eps.is_empty() {
        // As kube-proxy: refuse at once rather than let clients time out.
        let reject = match proto {
            Proto::Tcp => "reject with tcp reset",
            Proto::Udp => "reject with icmp type port-unreachable",
        };
        let _ = writeln!(s, "\t\t{reject}\n\t}}");
        return;
    }
    let _ = writeln!(s, "\t\t{outside}meta mark set meta mark | {MASQ_MARK}");
    // Round robin without a set per service (binding thousands of
    // anonymous verdict maps in one transaction costs the kernel minutes):
    // each rule has its own counter, so rule i, seeing the connections the
    // rules before it passed on, takes every (n-i)th of them, and the last
    // endpoint takes the rest: 0, 1, ..., n-1, 0, 1, ...
    let n = eps.len();
    for i in 0..n - 1 {
        let _ = writeln!(s, "\t\tnumgen inc mod {} 0 goto {chain}_ep{i}", n - i);
    }
    let _ = writeln!(s, "\t\tgoto {chain}_ep{}\n\t}}", n - 1);
    for (i, ep) in eps.iter().enumerate() {
        // A pod reaching itself through the VIP: masquerade, or its
        // reply would come from its own address, not the VIP's.
        let _ = writeln!(
            s,
            "\tchain {chain}_ep{i} {{\n\t\tip saddr {ip} meta mark set meta mark | {MASQ_MARK}\n\
             \t\tmeta l4proto {p} dnat to {ep}\n\t}}",
            ip = ep.ip(),
            p = proto_name(proto),
        );
    }
}

fn map_element((vip, proto, port): Key) -> String {
    format!(
        "{vip} . {} . {port} : goto {}",
        proto_name(proto),
        svc_chain(vip, proto, port)
    )
}

/// One `nft -f` transaction that turns the table programming `prev` into
/// one programming `want`, touching only the service ports that differ:
/// an endpoint change rewrites that service's chains, nothing else. The
/// caller falls back to [`render`] when it fails (the table is not what
/// `prev` says). `None` when nothing differs.
pub fn render_changes(
    prev: &[ServicePort],
    want: &[ServicePort],
    cluster_cidr: IpNetwork,
) -> Option<String> {
    let (p, w) = (v4_ports(prev), v4_ports(want));
    if p == w {
        return None;
    }
    let vips = |m: &BTreeMap<Key, Vec<SocketAddr>>| -> std::collections::BTreeSet<Ipv4Addr> {
        m.keys().map(|k| k.0).collect()
    };
    let mut s = String::new();
    let t = TABLE;
    // Gone: unmapped first, then the chains, which nothing references.
    for (&key, eps) in p.iter().filter(|(k, _)| !w.contains_key(k)) {
        let (vip, proto, port) = key;
        let chain = svc_chain(vip, proto, port);
        let _ = writeln!(
            s,
            "delete element {t} services {{ {vip} . {} . {port} }}",
            proto_name(proto)
        );
        let _ = writeln!(s, "flush chain {t} {chain}");
        for i in 0..eps.len() {
            let _ = writeln!(s, "delete chain {t} {chain}_ep{i}");
        }
        let _ = writeln!(s, "delete chain {t} {chain}");
    }
    // Changed: emptied, surplus endpoint chains deleted, refilled below.
    let mut fill: Vec<(Key, &Vec<SocketAddr>)> = Vec::new();
    for (&key, eps) in &w {
        match p.get(&key) {
            Some(old) if old == eps => {}
            Some(old) => {
                let chain = svc_chain(key.0, key.1, key.2);
                let _ = writeln!(s, "flush chain {t} {chain}");
                for i in 0..old.len() {
                    let _ = writeln!(s, "flush chain {t} {chain}_ep{i}");
                }
                for i in eps.len()..old.len() {
                    let _ = writeln!(s, "delete chain {t} {chain}_ep{i}");
                }
                fill.push((key, eps));
            }
            None => fill.push((key, eps)),
        }
    }
    let (pv, wv) = (vips(&p), vips(&w));
    for vip in pv.difference(&wv) {
        let _ = writeln!(s, "delete element {t} vips {{ {vip} }}");
    }
    if !fill.is_empty() {
        let outside = outside(cluster_cidr);
        let _ = writeln!(s, "table {t} {{");
        for (key, eps) in &fill {
            service_chains(&mut s, *key, eps, &outside);
        }
        s.push_str("}\n");
    }
    let added: Vec<String> = w
        .keys()
        .filter(|k| !p.contains_key(k))
        .map(|&k| map_element(k))
        .collect();
    if !added.is_empty() {
        let _ = writeln!(s, "add element {t} services {{ {} }}", added.join(", "));
    }
    let new_vips: Vec<String> = wv.difference(&pv).map(Ipv4Addr::to_string).collect();
    if !new_vips.is_empty() {
        let _ = writeln!(s, "add element {t} vips {{ {} }}", new_vips.join(", "));
    }
    Some(s)
}

/// `nft` itself, or `nsenter --net=<netns> nft` to program another netns.
/// Applies `script` in this netns, all or nothing.
pub fn apply(script: &str) -> Result<(), NftError> {
    apply_in(None, script)
}

/// Applies `script` with one `nft -f -` in `netns` (None: this one).
pub fn apply_in(netns: Option<&Path>, script: &str) -> Result<(), NftError> {
    Ok(netkit::nft::apply_in(netns, script)?)
}

/// What this netns's table programs; `None` without the table.
pub fn programmed() -> Result<Option<Vec<ServicePort>>, NftError> {
    table_in(None)
}

/// What the table in `netns` programs (empty without the table), read
/// back from `nft -j`.
pub fn programmed_in(netns: Option<&Path>) -> Result<Vec<ServicePort>, NftError> {
    Ok(table_in(netns)?.unwrap_or_default())
}

/// What the table in `netns` programs, `None` without the table: for
/// adopting it after a restart and for metrics.
fn table_in(netns: Option<&Path>) -> Result<Option<Vec<ServicePort>>, NftError> {
    let mut args = vec!["-j", "list", "table"];
    args.extend(TABLE.split(' '));
    match netkit::nft::list_in(netns, &args)? {
        Some(out) => Ok(Some(parse(&serde_json::from_slice(&out)?))),
        None => Ok(None),
    }
}

/// The service ports in an `nft -j list table` document.
fn parse(doc: &Value) -> Vec<ServicePort> {
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // chain -> its rules' expressions
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut elems = Vec::new();
    for it in &items {
        if let Some(r) = it.get("rule") {
            if let (Some(c), Some(e)) = (r.get("chain").and_then(Value::as_str), r.get("expr")) {
                rules.entry(c.to_string()).or_default().push(e.clone());
            }
        } else if let Some(m) = it.get("map")
            && m.get("name").and_then(Value::as_str) == Some("services")
        {
            elems = m
                .get("elem")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
        }
    }
    let mut out: Vec<ServicePort> = elems.iter().filter_map(|e| element(e, &rules)).collect();
    out.sort();
    out
}

/// One `services` map element: `[{"concat": [vip, proto, port]}, {"goto": ...}]`.
fn element(e: &Value, rules: &BTreeMap<String, Vec<Value>>) -> Option<ServicePort> {
    let key = e.get(0)?.get("concat")?.as_array()?;
    let vip: IpAddr = key.first()?.as_str()?.parse().ok()?;
    let proto = match key.get(1)?.as_str()? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let port = u16::try_from(key.get(2)?.as_u64()?).ok()?;
    let chain = target(e.get(1)?)?;
    let mut endpoints = Vec::new();
    dnats(chain, rules, 0, &mut endpoints);
    Some(ServicePort {
        vip,
        port,
        proto,
        endpoints,
    })
}

fn target(verdict: &Value) -> Option<&str> {
    verdict
        .get("goto")
        .or_else(|| verdict.get("jump"))?
        .get("target")?
        .as_str()
}

/// The DNAT targets reachable from `chain`, in numgen order.
fn dnats(chain: &str, rules: &BTreeMap<String, Vec<Value>>, depth: u8, out: &mut Vec<SocketAddr>) {
    // Our layout is two levels deep; the bound guards against loops.
    if depth > 4 {
        return;
    }
    for rule in rules.get(chain).into_iter().flatten() {
        for ex in rule.as_array().into_iter().flatten() {
            if let Some(d) = ex.get("dnat") {
                let ip = d
                    .get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse().ok());
                let port = d
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                if let (Some(ip), Some(port)) = (ip, port) {
                    out.push(SocketAddr::new(ip, port));
                }
            } else if let Some(set) = ex
                .get("vmap")
                .and_then(|v| v.get("data"))
                .and_then(|d| d.get("set"))
                .and_then(Value::as_array)
            {
                let mut arms: Vec<(u64, &str)> = set
                    .iter()
                    .filter_map(|a| Some((a.get(0)?.as_u64()?, target(a.get(1)?)?)))
                    .collect();
                arms.sort();
                for (_, t) in arms {
                    dnats(t, rules, depth + 1, out);
                }
            } else if let Some(t) = target(ex) {
                dnats(t, rules, depth + 1, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(vip: &str, port: u16, proto: Proto, eps: &[&str]) -> ServicePort {
        ServicePort {
            vip: vip.parse().expect("vip"),
            port,
            proto,
            endpoints: eps.iter().map(|e| e.parse().expect("ep")).collect(),
        }
    }

    fn cidr() -> IpNetwork {
        "10.244.0.0/16".parse().expect("cidr")
    }

    fn tutorial() -> ServicePort {
        sp(
            "10.254.10.128",
            80,
            Proto::Tcp,
            &["10.244.1.2:8080", "10.244.2.2:8080"],
        )
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
            "\t\tnumgen inc mod 2 0 goto svc_10_254_10_128_tcp_80_ep0\n\
             \t\tgoto svc_10_254_10_128_tcp_80_ep1\n"
        ));
        assert!(s.contains(
            "chain svc_10_254_10_128_tcp_80_ep0 {\n\t\tip saddr 10.244.1.2 meta mark set meta mark | 0x4000\n\
             \t\tmeta l4proto tcp dnat to 10.244.1.2:8080\n"
        ));
        assert!(s.contains("meta l4proto tcp dnat to 10.244.2.2:8080"));
    }

    #[test]
    fn masquerades_from_outside_the_cluster_and_hairpins() {
        let s = render(&[tutorial()], "10.244.7.9/16".parse().expect("cidr"));
        // The network, not the host address given.
        assert!(s.contains("ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000\n"));
        assert!(s.contains("fib daddr . iif oif exists meta mark set meta mark | 0x4000"));
        assert!(s.contains("meta mark & 0x4000 == 0 return"));
        assert!(s.contains("meta mark set meta mark ^ 0x4000 masquerade fully-random"));
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
        assert!(s.contains("\t\tgoto svc_10_254_0_1_tcp_443_ep0\n"));
        assert!(!s.contains("numgen"));
    }

    #[test]
    fn nothing_to_program_is_an_empty_table() {
        let s = render(&[], cidr());
        assert!(!s.contains("elements"));
        assert!(s.contains("map services"));
    }

    #[test]
    fn parses_what_nft_lists() {
        // Trimmed from `nft -j list table ip node-sync` (nft 1.0.6).
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [
            {"map": {"family": "ip", "name": "services", "table": "node-sync",
              "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
              "elem": [[{"concat": ["10.254.10.128", "tcp", 80]}, {"goto": {"target": "a"}}],
                       [{"concat": ["10.254.10.129", "udp", 53]}, {"goto": {"target": "b"}}]]}},
            {"rule": {"chain": "a", "expr": [{"vmap": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
              "data": {"set": [[1, {"goto": {"target": "a1"}}], [0, {"goto": {"target": "a0"}}]]}}}]}},
            {"rule": {"chain": "a0", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
              {"dnat": {"addr": "10.244.1.2", "port": 8080}}]}},
            {"rule": {"chain": "a1", "expr": [{"dnat": {"addr": "10.244.1.3", "port": 8080}}]}},
            {"rule": {"chain": "b", "expr": [{"reject": {"type": "icmp", "expr": "port-unreachable"}}]}}
            ]}"#,
        )
        .expect("json");
        assert_eq!(
            parse(&doc),
            vec![
                sp(
                    "10.254.10.128",
                    80,
                    Proto::Tcp,
                    &["10.244.1.2:8080", "10.244.1.3:8080"]
                ),
                sp("10.254.10.129", 53, Proto::Udp, &[]),
            ]
        );
    }

    #[test]
    fn parses_the_chained_round_robin() {
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [
            {"map": {"family": "ip", "name": "services", "table": "node-sync",
              "elem": [[{"concat": ["10.254.10.128", "tcp", 80]}, {"goto": {"target": "a"}}]]}},
            {"rule": {"chain": "a", "expr": [{"match": {"op": "==", "left": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}, "right": 0}},
              {"goto": {"target": "a0"}}]}},
            {"rule": {"chain": "a", "expr": [{"goto": {"target": "a1"}}]}},
            {"rule": {"chain": "a0", "expr": [{"dnat": {"addr": "10.244.1.2", "port": 8080}}]}},
            {"rule": {"chain": "a1", "expr": [{"dnat": {"addr": "10.244.2.2", "port": 8080}}]}}
            ]}"#,
        )
        .expect("json");
        assert_eq!(
            parse(&doc),
            vec![sp(
                "10.254.10.128",
                80,
                Proto::Tcp,
                &["10.244.1.2:8080", "10.244.2.2:8080"]
            )]
        );
    }
}
