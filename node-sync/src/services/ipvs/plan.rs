//! What to change, from the service ports the API asks for and what the
//! kernel holds: a pure function. Ours is what sits on `kube-ipvs0`: a
//! virtual server whose VIP is not on it belongs to someone else and is
//! never touched. IPv4 only, as the nftables backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::genl::{RealServer, VirtualServer};
use super::rules::Sets;
use crate::services::{Proto, ServicePort};

pub type Key = (IpAddr, Proto, u16);

/// The kernel's side, as read before a sync.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Addresses on `kube-ipvs0`.
    pub vips: BTreeSet<IpAddr>,
    /// Our virtual servers (VIP on `kube-ipvs0`): scheduler and real servers.
    pub services: BTreeMap<Key, (String, Vec<RealServer>)>,
    pub sets: Sets,
    pub sets_exist: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add_vips: Vec<IpAddr>,
    pub del_vips: Vec<IpAddr>,
    pub add_services: Vec<VirtualServer>,
    pub del_services: Vec<VirtualServer>,
    pub add_dests: Vec<(VirtualServer, RealServer)>,
    pub del_dests: Vec<(VirtualServer, RealServer)>,
    /// `ipset restore` input, when the sets change.
    pub ipset: Option<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn real(ep: SocketAddr) -> RealServer {
    RealServer {
        addr: ep.ip(),
        port: ep.port(),
        weight: 1,
        masq: true,
    }
}

/// The IPv4 ports to program, first of each (vip, proto, port) winning.
fn desired(want: &[ServicePort]) -> BTreeMap<Key, Vec<SocketAddr>> {
    let mut out = BTreeMap::new();
    for s in want.iter().filter(|s| s.vip.is_ipv4()) {
        out.entry((s.vip, s.proto, s.port)).or_insert_with(|| {
            let mut eps: Vec<SocketAddr> = s
                .endpoints
                .iter()
                .filter(|e| e.is_ipv4())
                .copied()
                .collect();
            eps.sort();
            eps.dedup();
            eps
        });
    }
    out
}

/// The members of KUBE-CLUSTER-IP and KUBE-LOOP-BACK for `want`.
pub fn sets(want: &[ServicePort]) -> Sets {
    let mut s = Sets::default();
    for ((vip, proto, port), eps) in desired(want) {
        let p = proto_name(proto);
        s.cluster_ip.insert(format!("{vip},{p}:{port}"));
        for ep in eps {
            s.loop_back
                .insert(format!("{},{p}:{},{}", ep.ip(), ep.port(), ep.ip()));
        }
    }
    s
}

pub fn plan(want: &[ServicePort], scheduler: &str, obs: &Observed) -> Plan {
    let want = desired_with(want);
    let mut p = Plan::default();
    let vs = |&(addr, proto, port): &Key| VirtualServer {
        addr,
        proto,
        port,
        scheduler: scheduler.to_string(),
    };
    for (key, eps) in &want.ports {
        let v = vs(key);
        let wanted: Vec<RealServer> = eps.iter().copied().map(real).collect();
        match obs.services.get(key) {
            Some((sched, have)) if sched == scheduler => {
                // A real server with the wrong weight or forwarder is
                // replaced: deleted, then added (deletions go first).
                for h in have.iter().filter(|h| !wanted.contains(h)) {
                    p.del_dests.push((v.clone(), h.clone()));
                }
                for w in wanted.iter().filter(|w| !have.contains(w)) {
                    p.add_dests.push((v.clone(), w.clone()));
                }
            }
            Some((sched, _)) => {
                // Another scheduler: the kernel cannot switch in place.
                p.del_services.push(VirtualServer {
                    scheduler: sched.clone(),
                    ..v.clone()
                });
                p.add_services.push(v.clone());
                p.add_dests
                    .extend(wanted.into_iter().map(|w| (v.clone(), w)));
            }
            None => {
                p.add_services.push(v.clone());
                p.add_dests
                    .extend(wanted.into_iter().map(|w| (v.clone(), w)));
            }
        }
    }
    for (key, (sched, _)) in &obs.services {
        if !want.ports.contains_key(key) {
            p.del_services.push(VirtualServer {
                scheduler: sched.clone(),
                ..vs(key)
            });
        }
    }
    p.add_vips = want.vips.difference(&obs.vips).copied().collect();
    p.del_vips = obs.vips.difference(&want.vips).copied().collect();
    p.ipset = super::rules::ipset_script(&obs.sets, obs.sets_exist, &want.sets);
    p
}

struct Desired {
    ports: BTreeMap<Key, Vec<SocketAddr>>,
    vips: BTreeSet<IpAddr>,
    sets: Sets,
}

fn desired_with(want: &[ServicePort]) -> Desired {
    let ports = desired(want);
    Desired {
        vips: ports.keys().map(|k| k.0).collect(),
        sets: sets(want),
        ports,
    }
}

/// The kernel's side as the last sync left it: `prev` programmed with
/// `scheduler`, the sets exactly its members, `vips` on `kube-ipvs0`.
/// Lets a sync plan a change without reading every virtual server's real
/// servers and the sets back; the periodic full sync repairs what others
/// change.
pub fn assumed(prev: &[ServicePort], scheduler: &str, vips: BTreeSet<IpAddr>) -> Observed {
    Observed {
        vips,
        services: desired(prev)
            .into_iter()
            .map(|(k, eps)| {
                (
                    k,
                    (scheduler.to_string(), eps.into_iter().map(real).collect()),
                )
            })
            .collect(),
        sets: sets(prev),
        sets_exist: true,
    }
}

/// What the kernel programs, in the model's terms (endpoints sorted).
pub fn programmed(obs: &Observed) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = obs
        .services
        .iter()
        .map(|(&(vip, proto, port), (_, rs))| {
            let mut endpoints: Vec<SocketAddr> =
                rs.iter().map(|r| SocketAddr::new(r.addr, r.port)).collect();
            endpoints.sort();
            ServicePort {
                vip,
                port,
                proto,
                endpoints,
            }
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::test_support::{sp, tutorial};

    fn rs(s: &str) -> RealServer {
        real(s.parse().expect("ep"))
    }

    /// The kernel after applying `p` to an empty node.
    fn after(p: &Plan, want: &[ServicePort]) -> Observed {
        let mut o = Observed {
            vips: p.add_vips.iter().copied().collect(),
            sets: sets(want),
            sets_exist: true,
            ..Observed::default()
        };
        for v in &p.add_services {
            o.services
                .insert((v.addr, v.proto, v.port), (v.scheduler.clone(), vec![]));
        }
        for (v, r) in &p.add_dests {
            if let Some(e) = o.services.get_mut(&(v.addr, v.proto, v.port)) {
                e.1.push(r.clone());
            }
        }
        o
    }

    #[test]
    fn the_tutorial_service_on_a_fresh_node() {
        let want = [tutorial()];
        let p = plan(&want, "rr", &Observed::default());
        assert_eq!(
            p.add_vips,
            vec!["10.254.10.128".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(p.add_services.len(), 1);
        assert_eq!(p.add_services[0].scheduler, "rr");
        assert_eq!(
            p.add_dests.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
            vec![rs("10.244.1.2:8080"), rs("10.244.2.2:8080")]
        );
        assert!(p.add_dests.iter().all(|d| d.1.masq && d.1.weight == 1));
        let ipset = p.ipset.clone().expect("sets");
        assert!(ipset.contains("add KUBE-CLUSTER-IP 10.254.10.128,tcp:80 -exist"));
        assert!(ipset.contains("add KUBE-LOOP-BACK 10.244.2.2,tcp:8080,10.244.2.2 -exist"));
        // Applied, the same input plans nothing, and reads back as asked.
        let o = after(&p, &want);
        assert!(plan(&want, "rr", &o).is_empty());
        assert_eq!(programmed(&o), vec![tutorial()]);
    }

    #[test]
    fn endpoint_changes_touch_only_real_servers() {
        let want = [tutorial()];
        let o = after(&plan(&want, "rr", &Observed::default()), &want);
        let less = [sp(
            "10.254.10.128",
            80,
            Proto::Tcp,
            &["10.244.2.2:8080", "10.244.3.4:8080"],
        )];
        let p = plan(&less, "rr", &o);
        assert!(p.add_services.is_empty() && p.del_services.is_empty());
        assert!(p.add_vips.is_empty() && p.del_vips.is_empty());
        assert_eq!(p.del_dests.len(), 1);
        assert_eq!(p.del_dests[0].1, rs("10.244.1.2:8080"));
        assert_eq!(p.add_dests.len(), 1);
        assert_eq!(p.add_dests[0].1, rs("10.244.3.4:8080"));
        let ipset = p.ipset.expect("loop-back changes");
        assert!(ipset.contains("del KUBE-LOOP-BACK 10.244.1.2,tcp:8080,10.244.1.2"));
    }

    #[test]
    fn a_change_planned_from_the_last_sync_is_the_change_alone() {
        let before = tutorial();
        let mut after = tutorial();
        after.endpoints[1] = "10.244.2.9:8080".parse().expect("ep");
        let vips = [before.vip].into_iter().collect();
        let p = plan(&[after], "rr", &assumed(&[before], "rr", vips));
        assert!(p.add_services.is_empty() && p.del_services.is_empty());
        assert!(p.add_vips.is_empty() && p.del_vips.is_empty());
        assert_eq!(p.del_dests.len(), 1);
        assert_eq!(p.del_dests[0].1.addr.to_string(), "10.244.2.2");
        assert_eq!(p.add_dests.len(), 1);
        assert_eq!(p.add_dests[0].1.addr.to_string(), "10.244.2.9");
        let script = p.ipset.expect("the loop-back set changes");
        assert!(
            script.contains("del KUBE-LOOP-BACK 10.244.2.2,tcp:8080,10.244.2.2"),
            "{script}"
        );
        assert!(
            script.contains("add KUBE-LOOP-BACK 10.244.2.9,tcp:8080,10.244.2.9"),
            "{script}"
        );
        assert!(!script.contains("KUBE-CLUSTER-IP 10.254"), "{script}");
    }

    #[test]
    fn stale_services_and_vips_go_and_wrong_ones_are_replaced() {
        let want = [tutorial(), sp("10.254.0.10", 53, Proto::Udp, &[])];
        let mut o = after(&plan(&want, "rr", &Observed::default()), &want);
        // A real server someone set to weight 0, a scheduler changed.
        if let Some(e) = o
            .services
            .get_mut(&("10.254.10.128".parse().expect("ip"), Proto::Tcp, 80))
        {
            e.1[0].weight = 0;
        }
        let p = plan(&[tutorial()], "wrr", &o);
        let dels: Vec<(IpAddr, u16)> = p.del_services.iter().map(|v| (v.addr, v.port)).collect();
        assert!(dels.contains(&("10.254.0.10".parse().expect("ip"), 53)));
        assert!(dels.contains(&("10.254.10.128".parse().expect("ip"), 80)));
        assert_eq!(p.add_services.len(), 1);
        assert_eq!(p.add_services[0].scheduler, "wrr");
        assert_eq!(p.add_dests.len(), 2);
        assert_eq!(
            p.del_vips,
            vec!["10.254.0.10".parse::<IpAddr>().expect("ip")]
        );
        // Same scheduler: only the bad real server is swapped.
        let p = plan(&[tutorial()], "rr", &o);
        assert_eq!(p.del_dests.len(), 1);
        assert_eq!(p.del_dests[0].1.weight, 0);
        assert_eq!(p.add_dests.len(), 1);
        assert_eq!(p.add_dests[0].1, rs("10.244.1.2:8080"));
    }

    #[test]
    fn no_endpoints_is_a_virtual_server_without_real_servers() {
        // IPVS answers a service without real servers with ICMP port
        // unreachable: the client's connect is refused.
        let want = [sp("10.254.0.10", 53, Proto::Tcp, &[])];
        let p = plan(&want, "rr", &Observed::default());
        assert_eq!(p.add_services.len(), 1);
        assert!(p.add_dests.is_empty());
    }

    #[test]
    fn ipv6_is_skipped() {
        let want = [sp("fd00::1", 80, Proto::Tcp, &["[fd00::2]:80"])];
        let p = plan(&want, "rr", &Observed::default());
        assert!(p.add_services.is_empty() && p.add_vips.is_empty());
    }
}
