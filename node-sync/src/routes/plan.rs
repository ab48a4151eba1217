//! Routes to other nodes' pods, host-gw style: the desired set from the
//! Nodes, and what to change in the kernel to get there. Pure functions.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

/// `dst via gateway` (one route per podCIDR).
pub type Routes = BTreeMap<IpNetwork, IpAddr>;

/// The routes this node should have, and a line for each Node skipped.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> (Routes, Vec<String>) {
    let mut out = Routes::new();
    let mut skipped = Vec::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or("");
        if name == me || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let spec = n.spec.as_ref();
        let cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(l) if !l.is_empty() => l.iter().collect(),
            _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        };
        if cidrs.is_empty() {
            continue;
        }
        let Some(ip) = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
        else {
            // Not reported yet (a node that is starting): nothing to route.
            continue;
        };
        let Ok(via) = ip.parse::<IpAddr>() else {
            skipped.push(format!(
                "node {name}: InternalIP {ip:?} is not an IP address"
            ));
            continue;
        };
        for c in cidrs {
            match c.parse::<IpNetwork>() {
                Ok(net) if net.network() == net.ip() && net.is_ipv4() == via.is_ipv4() => {
                    out.insert(net, via);
                }
                Ok(_) => skipped.push(format!(
                    "node {name}: podCIDR {c} has host bits set or another family than {via}"
                )),
                Err(e) => skipped.push(format!("node {name}: podCIDR {c:?}: {e}")),
            }
        }
    }
    (out, skipped)
}

/// What to do to the kernel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Added, or replaced when the gateway changed.
    pub put: Vec<(IpNetwork, IpAddr)>,
    pub delete: Vec<(IpNetwork, IpAddr)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// From `current` (our routes in the kernel) to `want`.
pub fn plan(want: &Routes, current: &[(IpNetwork, IpAddr)]) -> Plan {
    let mut p = Plan::default();
    for (dst, via) in current {
        if want.get(dst) != Some(via) {
            p.delete.push((*dst, *via));
        }
    }
    for (dst, via) in want {
        if !current.contains(&(*dst, *via)) {
            p.put.push((*dst, *via));
        }
    }
    // A replaced route is put, not deleted after (the put replaces it).
    p.delete.retain(|(d, _)| !want.contains_key(d));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        )
        .expect("node")
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("net")
    }

    #[test]
    fn other_nodes_only_and_bad_ones_skipped() {
        let nodes = [
            node("inajob", "10.244.1.0/24", "192.168.43.111"),
            node("yuanying", "10.244.2.0/24", "192.168.43.112"),
            node("bad-cidr", "10.244.3.1/24", "192.168.43.113"),
            node("bad-ip", "10.244.4.0/24", "nope"),
            node("garbage", "x", "192.168.43.115"),
        ];
        let (want, skipped) = desired(&nodes, "inajob");
        assert_eq!(want.len(), 1);
        assert_eq!(want[&net("10.244.2.0/24")].to_string(), "192.168.43.112");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
    }

    #[test]
    fn plan_adds_replaces_and_removes_only_what_differs() {
        let via = |s: &str| s.parse::<IpAddr>().expect("ip");
        let want: Routes = [
            (net("10.244.2.0/24"), via("192.168.43.112")),
            (net("10.244.3.0/24"), via("192.168.43.113")),
        ]
        .into();
        let current = vec![
            (net("10.244.2.0/24"), via("192.168.43.112")),
            (net("10.244.3.0/24"), via("192.168.43.199")),
            (net("10.244.9.0/24"), via("192.168.43.119")),
        ];
        let p = plan(&want, &current);
        assert_eq!(p.put, vec![(net("10.244.3.0/24"), via("192.168.43.113"))]);
        assert_eq!(
            p.delete,
            vec![(net("10.244.9.0/24"), via("192.168.43.119"))]
        );
        let done: Vec<_> = want.iter().map(|(d, v)| (*d, *v)).collect();
        assert!(plan(&want, &done).is_empty());
    }
}
