//! The kernel's routes over rtnetlink: ours (the main table's routes with
//! our protocol number), everyone else's (the main table's other routes and
//! the node's addresses in the local table), and the only two changes
//! node-sync makes: a create-exclusive add and a delete that names our
//! protocol. Neither can touch a route of another protocol: the kernel
//! refuses the add where any route is (same destination, table and
//! metric), and matches the delete on the protocol.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::plan::{Foreign, Ours};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("setting {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("a route to {dst} via {via}: the gateway is of the other family")]
    Family { dst: IpNetwork, via: IpAddr },
}

const MAIN: u32 = 254;
const LOCAL: u32 = 255;

pub struct Kernel {
    handle: Handle,
    protocol: u8,
    pod_cidr: Option<IpNetwork>,
}

/// The main and local tables as the planner reads them.
#[derive(Debug, Default)]
pub struct Table {
    pub ours: Vec<Ours>,
    pub foreign: Vec<Foreign>,
}

/// What an add found.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    Done,
    /// A route was already there (EEXIST), and stays.
    Exists,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A route of ours to `dst` via `via` at `metric` (None: as the kernel
/// defaults it).
fn message(dst: IpNetwork, via: Option<IpAddr>, metric: Option<u32>, protocol: u8) -> RouteMessage {
    let proto = RouteProtocol::from(protocol);
    let mut m = match dst {
        IpNetwork::V4(d) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .protocol(proto);
            if let Some(IpAddr::V4(g)) = via {
                b = b.gateway(g);
            }
            b.build()
        }
        IpNetwork::V6(d) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .protocol(proto);
            if let Some(IpAddr::V6(g)) = via {
                b = b.gateway(g);
            }
            b.build()
        }
    };
    if let Some(p) = metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        16 => "dhcp".into(),
        186 => "bgp".into(),
        187 => "isis".into(),
        188 => "ospf".into(),
        n => n.to_string(),
    }
}

/// The route as `ip route` shows it (without `src`, cache or flags).
fn text(m: &RouteMessage, dst: &IpNetwork, table: u32, names: &HashMap<u32, String>) -> String {
    let mut s = match m.header.kind {
        RouteType::Unicast => String::new(),
        RouteType::Local => "local ".into(),
        RouteType::BlackHole => "blackhole ".into(),
        RouteType::Unreachable => "unreachable ".into(),
        RouteType::Prohibit => "prohibit ".into(),
        RouteType::Throw => "throw ".into(),
        k => format!("type {} ", u8::from(k)),
    };
    // A host route of the local table reads as its address, as ip does.
    if table == LOCAL && dst.prefix() == if dst.is_ipv4() { 32 } else { 128 } {
        s.push_str(&dst.ip().to_string());
    } else if dst.prefix() == 0 {
        s.push_str("default");
    } else {
        s.push_str(&dst.to_string());
    }
    let mut metric = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Gateway(g) => {
                if let Some(g) = ip_of(g) {
                    s.push_str(&format!(" via {g}"));
                }
            }
            RouteAttribute::MultiPath(_) => s.push_str(" multipath"),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if let Some(dev) = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(names.get(i).cloned().unwrap_or_else(|| format!("#{i}"))),
        _ => None,
    }) {
        s.push_str(&format!(" dev {dev}"));
    }
    if table == LOCAL {
        s.push_str(" table local");
    }
    s.push_str(&format!(
        " proto {}",
        protocol_name(u8::from(m.header.protocol))
    ));
    match m.header.scope {
        RouteScope::Universe => {}
        RouteScope::Link => s.push_str(" scope link"),
        RouteScope::Host => s.push_str(" scope host"),
        sc => s.push_str(&format!(" scope {}", u8::from(sc))),
    }
    if let Some(p) = metric.filter(|p| *p != 0) {
        s.push_str(&format!(" metric {p}"));
    }
    s
}

/// A route of a dump as the planner reads it.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Ours(Ours),
    Foreign(Foreign),
}

/// One route of a dump: ours (the main table, our protocol), someone
/// else's, or None for what the planner does not weigh (other tables; the
/// local table's broadcast, multicast and anycast entries).
fn entry(m: &RouteMessage, protocol: u8, names: &HashMap<u32, String>) -> Option<Entry> {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != MAIN && table != LOCAL {
        return None;
    }
    let (mut dst, mut via, mut metric, mut multipath) = (None, None, 0, false);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => via = ip_of(g),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    // No destination: a default route.
    let v6 = m.header.address_family == netlink_packet_route::AddressFamily::Inet6;
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let dst = IpNetwork::new(dst, m.header.destination_prefix_length).ok()?;
    if table == MAIN && u8::from(m.header.protocol) == protocol {
        return Some(Entry::Ours(Ours { dst, via, metric }));
    }
    let local = if table == LOCAL {
        // The node's addresses; broadcast, multicast and anycast entries
        // are none of its networks.
        if m.header.kind != RouteType::Local {
            return None;
        }
        true
    } else {
        // Connected: straight out of a device, no gateway (IPv6 keeps its
        // connected routes at scope universe, so the scope does not tell).
        // A default route is never the node's own network.
        m.header.kind == RouteType::Unicast && via.is_none() && !multipath && dst.prefix() > 0
    };
    Some(Entry::Foreign(Foreign {
        dst,
        local,
        text: text(m, &dst, table, names),
    }))
}

impl Kernel {
    /// A netlink connection in this process's netns, driven by the
    /// current tokio runtime.
    pub fn open(protocol: u8) -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Kernel {
            handle,
            protocol,
            pod_cidr: None,
        })
    }

    /// This node's podCIDR from its settings: never routed to another
    /// Node, even before this node's Node is registered with it.
    pub fn with_pod_cidr(mut self, cidr: Option<IpNetwork>) -> Self {
        self.pod_cidr = cidr;
        self
    }

    pub fn pod_cidr(&self) -> Option<IpNetwork> {
        self.pod_cidr
    }

    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    async fn link_names(&self) -> Result<HashMap<u32, String>, KernelError> {
        let links: Vec<_> = self.handle.link().get().execute().try_collect().await?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect())
    }

    /// The main table (ours and others') and the local table's addresses,
    /// IPv4 and IPv6.
    pub async fn read(&self) -> Result<Table, KernelError> {
        let names = self.link_names().await?;
        let mut out = Table::default();
        for filter in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await?;
            for m in &msgs {
                match entry(m, self.protocol, &names) {
                    Some(Entry::Ours(o)) => out.ours.push(o),
                    Some(Entry::Foreign(f)) => out.foreign.push(f),
                    None => {}
                }
            }
        }
        Ok(out)
    }

    /// Adds our route to `dst` via `via` at the kernel's default metric,
    /// create-exclusive: where any route is (same destination, table and
    /// metric, whoever made it), nothing changes and the answer is
    /// [`Added::Exists`].
    pub async fn add(&self, dst: IpNetwork, via: IpAddr) -> Result<Added, KernelError> {
        // The planner gives each podCIDR a gateway of its family; a
        // mismatch would make the builder drop the gateway.
        if dst.is_ipv4() != via.is_ipv4() {
            return Err(KernelError::Family { dst, via });
        }
        let msg = message(dst, Some(via), None, self.protocol);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(Added::Done),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) =>
            {
                Ok(Added::Exists)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a route of ours. The request names our protocol, gateway
    /// and metric, and the kernel deletes only a route that has them.
    pub async fn delete(&self, r: &Ours) -> Result<(), KernelError> {
        let mut msg = message(r.dst, r.via, Some(r.metric), self.protocol);
        // Any scope and type: one of ours without a gateway is scope link,
        // and one made by hand with our number may be a blackhole.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            // Gone already (ESRCH).
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -(nix::errno::Errno::ESRCH as i32) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Forwarding on, so routed pod traffic passes through this node. Written
/// only when off: each write is a change event to whoever watches.
pub fn ip_forward(v6: bool) -> Result<(), KernelError> {
    let mut keys = vec!["net/ipv4/ip_forward"];
    if v6 {
        keys.push("net/ipv6/conf/all/forwarding");
    }
    for key in keys {
        if netkit::sysctl::get(key).is_ok_and(|v| v == "1") {
            continue;
        }
        netkit::sysctl::set(key, "1").map_err(|source| KernelError::Sysctl {
            key: key.to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: u8 = 200;

    fn names() -> HashMap<u32, String> {
        [(2, "eth0".to_string()), (3, "cni0".to_string())].into()
    }

    /// A route as a dump has it: `dst` (IPv4 or IPv6), and what is set.
    struct R {
        dst: &'static str,
        via: Option<&'static str>,
        proto: u8,
        table: u32,
        kind: RouteType,
        scope: RouteScope,
        dev: Option<u32>,
        metric: Option<u32>,
    }

    fn r(dst: &'static str) -> R {
        R {
            dst,
            via: None,
            proto: 2,
            table: MAIN,
            kind: RouteType::Unicast,
            scope: RouteScope::Universe,
            dev: Some(2),
            metric: None,
        }
    }

    fn build(r: R) -> RouteMessage {
        let dst: IpNetwork = r.dst.parse().expect("dst");
        let mut m = message(
            dst,
            r.via.map(|v| v.parse().expect("via")),
            r.metric,
            r.proto,
        );
        m.header.kind = r.kind;
        m.header.scope = r.scope;
        m.header.table = r.table as u8;
        if let Some(i) = r.dev {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        m
    }

    fn read(r: R) -> Option<Entry> {
        entry(&build(r), OURS, &names())
    }

    fn foreign(local: bool, text: &str, dst: &str) -> Option<Entry> {
        Some(Entry::Foreign(Foreign {
            dst: dst.parse().expect("dst"),
            local,
            text: text.into(),
        }))
    }

    #[test]
    fn ours_are_the_main_tables_routes_with_our_protocol() {
        let got = read(R {
            via: Some("192.168.43.112"),
            proto: OURS,
            ..r("10.244.2.0/24")
        });
        assert_eq!(
            got,
            Some(Entry::Ours(Ours {
                dst: "10.244.2.0/24".parse().expect("dst"),
                via: Some("192.168.43.112".parse().expect("via")),
                metric: 0,
            }))
        );
        // Our number in another table is not ours to manage, nor weighed.
        let got = read(R {
            via: Some("192.168.43.112"),
            proto: OURS,
            table: 100,
            ..r("10.244.2.0/24")
        });
        assert_eq!(got, None);
    }

    #[test]
    fn connected_routes_and_addresses_are_the_nodes_own() {
        assert_eq!(
            read(R {
                scope: RouteScope::Link,
                dev: Some(3),
                ..r("10.244.1.0/24")
            }),
            foreign(
                true,
                "10.244.1.0/24 dev cni0 proto kernel scope link",
                "10.244.1.0/24"
            )
        );
        // IPv6 keeps its connected routes at scope universe.
        assert_eq!(
            read(R {
                metric: Some(256),
                ..r("fd00:10:244:1::/64")
            }),
            foreign(
                true,
                "fd00:10:244:1::/64 dev eth0 proto kernel metric 256",
                "fd00:10:244:1::/64"
            )
        );
        assert_eq!(
            read(R {
                table: LOCAL,
                kind: RouteType::Local,
                scope: RouteScope::Host,
                ..r("192.168.43.111/32")
            }),
            foreign(
                true,
                "local 192.168.43.111 dev eth0 table local proto kernel scope host",
                "192.168.43.111/32"
            )
        );
        // The local table's broadcast entries are no network of the node.
        assert_eq!(
            read(R {
                table: LOCAL,
                kind: RouteType::Broadcast,
                scope: RouteScope::Link,
                ..r("192.168.43.255/32")
            }),
            None
        );
    }

    #[test]
    fn routes_with_a_gateway_and_defaults_are_someone_elses() {
        assert_eq!(
            read(R {
                via: Some("192.168.43.200"),
                proto: 4,
                metric: Some(10),
                ..r("10.244.2.0/24")
            }),
            foreign(
                false,
                "10.244.2.0/24 via 192.168.43.200 dev eth0 proto static metric 10",
                "10.244.2.0/24"
            )
        );
        assert_eq!(
            read(R {
                via: Some("192.168.43.1"),
                proto: 16,
                ..r("0.0.0.0/0")
            }),
            foreign(
                false,
                "default via 192.168.43.1 dev eth0 proto dhcp",
                "0.0.0.0/0"
            )
        );
        assert_eq!(
            read(R {
                kind: RouteType::BlackHole,
                proto: 4,
                dev: None,
                ..r("10.244.5.0/24")
            }),
            foreign(
                false,
                "blackhole 10.244.5.0/24 proto static",
                "10.244.5.0/24"
            )
        );
    }

    #[test]
    fn our_messages_name_our_protocol_and_the_metric_asked_for() {
        let m = message(
            "10.244.2.0/24".parse().expect("dst"),
            Some("192.168.43.112".parse().expect("via")),
            None,
            OURS,
        );
        assert_eq!(u8::from(m.header.protocol), OURS);
        assert_eq!(m.header.table, MAIN as u8);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Priority(_)))
        );
        let m = message(
            "fd00:10:244:2::/64".parse().expect("dst"),
            Some("fd00::112".parse().expect("via")),
            Some(1024),
            OURS,
        );
        assert!(m.attributes.contains(&RouteAttribute::Priority(1024)));
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                    "fd00::112".parse().expect("via")
                )))
        );
    }
}
