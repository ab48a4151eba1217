//! Reading node-sync's nftables table back (`nft -j list table`): what
//! it programs, for adopting it after a restart, for the resync and for
//! tests; and whether it is exactly what node-sync writes, so that
//! incremental changes can build on it.
//!
//! The JSON is read into typed structs, keeping only the maps, chains and
//! rules: at 10,000 services the document is megabytes, and a generic
//! JSON tree of it would cost node-sync ten times that in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::nft::{FAMILY, Key, NAME, NftError, svc_chain};
use super::{Proto, ServicePort};

/// The chains every table has besides the service chains, with their
/// rule counts.
const BASE_CHAINS: [(&str, usize); 4] = [
    ("prerouting", 1),
    ("output", 1),
    ("hairpin", 1),
    ("postrouting", 2),
];

/// What a table programs, and whether it is in the shape node-sync
/// writes (every service's chain, rule and endpoints consistent, nothing
/// else in it). An unclean table is rewritten whole, never patched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub ports: Vec<ServicePort>,
    pub clean: bool,
}

/// The service ports the table in `netns` programs (empty without it).
pub fn programmed_in(netns: Option<&Path>) -> Result<Vec<ServicePort>, NftError> {
    Ok(read_in(netns)?.map(|p| p.ports).unwrap_or_default())
}

/// The table in `netns` (None: this one), `None` when it does not exist.
pub fn read_in(netns: Option<&Path>) -> Result<Option<Programmed>, NftError> {
    read_within(netns, netkit::tool::DEFAULT_TIMEOUT)
}

/// [`read_in`] with `nft` killed after `timeout`.
pub fn read_within(
    netns: Option<&Path>,
    timeout: Duration,
) -> Result<Option<Programmed>, NftError> {
    match netkit::nft::list_within(netns, &["-j", "list", "table", FAMILY, NAME], timeout)? {
        Some(out) => Ok(Some(parse(&serde_json::from_slice(&out)?))),
        None => Ok(None),
    }
}

#[derive(Deserialize)]
pub(super) struct Doc {
    #[serde(default)]
    nftables: Vec<Item>,
}

/// One entry of the document; other kinds (table, set, metainfo) are
/// skipped.
#[derive(Deserialize)]
struct Item {
    map: Option<MapObj>,
    chain: Option<ChainObj>,
    rule: Option<RuleObj>,
}

#[derive(Deserialize)]
struct MapObj {
    name: String,
    #[serde(default)]
    elem: Vec<Elem>,
}

#[derive(Deserialize)]
struct ChainObj {
    name: String,
}

#[derive(Deserialize)]
struct RuleObj {
    chain: String,
    #[serde(default)]
    expr: Vec<Value>,
}

/// A map element: `[key, data]` as nft prints them for our maps; any
/// other shape makes the table unclean.
#[derive(Deserialize)]
#[serde(untagged)]
enum Elem {
    Pair(Concat, Data),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct Concat {
    concat: Vec<Scalar>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Num(u64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Data {
    Goto { goto: Target },
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct Target {
    target: String,
}

fn service_key(c: &[Scalar]) -> Option<Key> {
    let (Some(Scalar::Str(vip)), Some(Scalar::Str(proto)), Some(Scalar::Num(port))) =
        (c.first(), c.get(1), c.get(2))
    else {
        return None;
    };
    let vip: Ipv4Addr = vip.parse().ok()?;
    let proto = match proto.as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some((vip, proto, u16::try_from(*port).ok()?))
}

/// What one service chain rule does: round-robin step `Some(m)` (a
/// `numgen inc mod m 0` match) or the last (`None`), and where it DNATs.
fn dnat_rule(expr: &[Value]) -> Option<(Option<u64>, SocketAddr)> {
    let mut step = None;
    for e in expr {
        if let Some(m) = e.get("match") {
            if let Some(n) = m.pointer("/left/numgen") {
                if m.get("right").and_then(Value::as_u64) != Some(0)
                    || n.get("mode").and_then(Value::as_str) != Some("inc")
                {
                    return None;
                }
                step = Some(n.get("mod")?.as_u64()?);
            }
        } else if let Some(d) = e.get("dnat") {
            let ip: IpAddr = d.get("addr")?.as_str()?.parse().ok()?;
            let port = u16::try_from(d.get("port")?.as_u64()?).ok()?;
            return Some((step, SocketAddr::new(ip, port)));
        }
    }
    None
}

/// The endpoints a service chain's rules round-robin over, in order
/// (empty for a reject); `None` for anything node-sync does not write.
fn chain_endpoints(rules: &[&[Value]]) -> Option<Vec<SocketAddr>> {
    if let [rule] = rules
        && rule.iter().any(|e| e.get("reject").is_some())
    {
        return Some(Vec::new());
    }
    let n = rules.len();
    let mut out = Vec::with_capacity(n);
    for (i, rule) in rules.iter().enumerate() {
        let (step, ep) = dnat_rule(rule)?;
        let want = (i + 1 < n).then_some((n - i) as u64);
        if step != want {
            return None;
        }
        out.push(ep);
    }
    (!out.is_empty()).then_some(out)
}

/// The service ports in an `nft -j list table` document, and whether the
/// table is exactly in node-sync's shape.
pub(super) fn parse(doc: &Doc) -> Programmed {
    let mut clean = true;
    let mut services: Vec<(Key, &str)> = Vec::new();
    let mut rules: BTreeMap<&str, Vec<&[Value]>> = BTreeMap::new();
    let mut chains: BTreeSet<&str> = BTreeSet::new();
    for it in &doc.nftables {
        if let Some(m) = &it.map {
            for e in &m.elem {
                match (m.name.as_str(), e) {
                    ("services", Elem::Pair(k, Data::Goto { goto })) => {
                        match service_key(&k.concat) {
                            Some(key) => services.push((key, goto.target.as_str())),
                            None => clean = false,
                        }
                    }
                    _ => clean = false,
                }
            }
        }
        if let Some(c) = &it.chain {
            chains.insert(c.name.as_str());
        }
        if let Some(r) = &it.rule {
            rules.entry(r.chain.as_str()).or_default().push(&r.expr);
        }
    }
    let mut ports = Vec::with_capacity(services.len());
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for (key, chain) in services {
        known.insert(chain);
        let eps = rules
            .get(chain)
            .filter(|_| chain == svc_chain(key.0, key.1, key.2))
            .and_then(|r| chain_endpoints(r));
        let Some(endpoints) = eps else {
            clean = false;
            continue;
        };
        ports.push(ServicePort {
            vip: IpAddr::V4(key.0),
            port: key.2,
            proto: key.1,
            endpoints,
        });
    }
    for (name, count) in BASE_CHAINS {
        known.insert(name);
        clean &= rules.get(name).map_or(0, Vec::len) == count;
    }
    clean &= chains.iter().all(|c| known.contains(c));
    ports.sort();
    Programmed { ports, clean }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::test_support::{sp, tutorial};

    fn doc(text: &str) -> Doc {
        serde_json::from_str(text).expect("json")
    }

    const BASE: &str = r#"
        {"chain": {"name": "prerouting"}}, {"chain": {"name": "output"}},
        {"chain": {"name": "hairpin"}}, {"chain": {"name": "postrouting"}},
        {"rule": {"chain": "prerouting", "expr": [{"vmap": {}}]}},
        {"rule": {"chain": "output", "expr": [{"vmap": {}}]}},
        {"rule": {"chain": "hairpin", "expr": [{"mangle": {}}]}},
        {"rule": {"chain": "postrouting", "expr": [{"masquerade": null}]}},
        {"rule": {"chain": "postrouting", "expr": [{"masquerade": null}]}}"#;

    /// Trimmed from `nft -j list table ip node-sync` (nft 1.0.6).
    fn listed(extra: &str) -> Doc {
        doc(&format!(
            r#"{{"nftables": [
            {{"metainfo": {{"version": "1.0.6"}}}},
            {{"table": {{"family": "ip", "name": "node-sync"}}}},
            {{"set": {{"name": "vips", "elem": ["10.254.10.128"]}}}},
            {{"map": {{"family": "ip", "name": "services", "table": "node-sync",
              "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
              "elem": [[{{"concat": ["10.254.10.128", "tcp", 80]}}, {{"goto": {{"target": "svc_10_254_10_128_tcp_80"}}}}],
                       [{{"concat": ["10.254.10.129", "udp", 53]}}, {{"goto": {{"target": "svc_10_254_10_129_udp_53"}}}}]]}}}},
            {BASE},
            {{"chain": {{"name": "svc_10_254_10_128_tcp_80"}}}},
            {{"chain": {{"name": "svc_10_254_10_129_udp_53"}}}},
            {{"rule": {{"chain": "svc_10_254_10_128_tcp_80", "expr": [
              {{"match": {{"op": "==", "left": {{"numgen": {{"mode": "inc", "mod": 2, "offset": 0}}}}, "right": 0}}}},
              {{"match": {{"op": "==", "left": {{"meta": {{"key": "l4proto"}}}}, "right": "tcp"}}}},
              {{"dnat": {{"addr": "10.244.1.2", "port": 8080}}}}]}}}},
            {{"rule": {{"chain": "svc_10_254_10_128_tcp_80", "expr": [
              {{"match": {{"op": "==", "left": {{"meta": {{"key": "l4proto"}}}}, "right": "tcp"}}}},
              {{"dnat": {{"addr": "10.244.2.2", "port": 8080}}}}]}}}},
            {{"rule": {{"chain": "svc_10_254_10_129_udp_53", "expr": [{{"reject": {{"type": "icmp", "expr": "port-unreachable"}}}}]}}}}
            {extra}]}}"#
        ))
    }

    fn expected() -> Vec<ServicePort> {
        vec![tutorial(), sp("10.254.10.129", 53, Proto::Udp, &[])]
    }

    #[test]
    fn parses_what_nft_lists() {
        let p = parse(&listed(""));
        assert_eq!(p.ports, expected());
        assert!(p.clean);
    }

    #[test]
    fn anything_else_in_the_table_makes_it_unclean() {
        // A chain of someone else's.
        let p = parse(&listed(r#", {"chain": {"name": "mine"}}"#));
        assert_eq!(p.ports, expected());
        assert!(!p.clean);
        // A rule added to a service chain: that service is not ours.
        let p = parse(&listed(
            r#", {"rule": {"chain": "svc_10_254_10_129_udp_53", "expr": [{"accept": null}]}}"#,
        ));
        assert_eq!(p.ports, expected()[..1].to_vec());
        assert!(!p.clean);
        // A round robin whose steps do not add up.
        let p = parse(&listed(
            r#", {"rule": {"chain": "svc_10_254_10_128_tcp_80", "expr": [{"dnat": {"addr": "10.244.3.2", "port": 8080}}]}}"#,
        ));
        assert_eq!(p.ports, expected()[1..].to_vec());
        assert!(!p.clean);
        // A base chain emptied.
        let doc = listed("");
        let mut doc = doc;
        doc.nftables
            .retain(|i| i.rule.as_ref().is_none_or(|r| r.chain != "prerouting"));
        assert!(!parse(&doc).clean);
    }
}
