//! A small synchronous face on rtnetlink for the calls the plugins make.
//!
//! A netlink socket acts in the network namespace it was created in, so a
//! [`Netlink`] is opened on the thread (and in the netns) where it is used,
//! with its own current-thread runtime; it is never sent to another thread.

use std::net::IpAddr;
use std::os::fd::RawFd;

use futures_util::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind,
    InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{0}")]
    Netlink(#[from] rtnetlink::Error),
}

impl NlError {
    /// The errno of a kernel NACK (positive), if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Netlink(rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
            NlError::Socket(e) => e.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }

    /// EOPNOTSUPP: e.g. bridge VLAN filtering on a kernel built without it.
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(libc_errno::EOPNOTSUPP)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENODEV)
                | Some(libc_errno::ESRCH)
                | Some(libc_errno::EADDRNOTAVAIL)
                | Some(libc_errno::ENOENT)
        )
    }
}

mod libc_errno {
    pub const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
    pub const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
    pub const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;
    pub const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
    pub const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
    pub const EOPNOTSUPP: i32 = nix::errno::Errno::EOPNOTSUPP as i32;
}

/// What the plugins need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub oper_up: bool,
    pub promisc: bool,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    /// A bridge's IFLA_BR_VLAN_FILTERING; `None` when the kernel does not
    /// report it (built without bridge VLAN filtering) or not a bridge.
    pub vlan_filtering: Option<bool>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            controller: None,
            kind: None,
            vlan_filtering: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(v) => link.mtu = *v,
                LinkAttribute::OperState(s) => link.oper_up = *s == State::Up,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => link.kind = Some(kind_name(k)),
                            LinkInfo::Data(InfoData::Bridge(opts)) => {
                                link.vlan_filtering = opts.iter().find_map(|o| match o {
                                    InfoBridge::VlanFiltering(on) => Some(*on),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC as the reference prints it: lower-case, colon-separated.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

/// VLANs `first..=last` of a bridge port with the same flags (one VLAN when
/// `first == last`). `pvid` is only valid on a single VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanRange {
    pub first: u16,
    pub last: u16,
    pub pvid: bool,
    pub untagged: bool,
}

/// One VLAN of a bridge port as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortVlan {
    pub vid: u16,
    pub pvid: bool,
    pub untagged: bool,
}

/// The IFLA_BRIDGE_VLAN_INFO entries of `ranges`, a range as a
/// RANGE_BEGIN/RANGE_END pair, so one message carries any number of VLANs.
fn vlan_infos(ranges: &[VlanRange]) -> Vec<BridgeVlanInfo> {
    let mut out = Vec::new();
    for r in ranges {
        let mut flags = BridgeVlanInfoFlags::empty();
        if r.pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if r.untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        if r.first == r.last {
            out.push(BridgeVlanInfo {
                flags,
                vid: r.first,
            });
        } else {
            out.push(BridgeVlanInfo {
                flags: flags | BridgeVlanInfoFlags::RangeBegin,
                vid: r.first,
            });
            out.push(BridgeVlanInfo {
                flags: flags | BridgeVlanInfoFlags::RangeEnd,
                vid: r.last,
            });
        }
    }
    out
}

/// The port's VLANs from a bridge dump's IFLA_AF_SPEC (ranges expanded).
fn port_vlans_of(specs: &[AfSpecBridge]) -> Vec<PortVlan> {
    let mut out = Vec::new();
    let mut begin: Option<u16> = None;
    for s in specs {
        let AfSpecBridge::VlanInfo(info) = s else {
            continue;
        };
        let entry = |vid| PortVlan {
            vid,
            pvid: info.flags.contains(BridgeVlanInfoFlags::Pvid),
            untagged: info.flags.contains(BridgeVlanInfoFlags::Untagged),
        };
        if info.flags.contains(BridgeVlanInfoFlags::RangeBegin) {
            begin = Some(info.vid);
        } else if info.flags.contains(BridgeVlanInfoFlags::RangeEnd) {
            let first = begin.take().unwrap_or(info.vid);
            out.extend((first..=info.vid).map(entry));
        } else {
            out.push(entry(info.vid));
        }
    }
    out
}

/// AF_BRIDGE RTM_SETLINK/RTM_DELLINK body for a port's VLANs; the MASTER
/// flag names the bridge's VLAN table, not the port device's own.
fn port_vlan_message(port: u32, ranges: &[VlanRange]) -> LinkMessage {
    let mut b =
        LinkBridgeVlan::new(port).append_af_spec(AfSpecBridge::Flags(BridgeFlag::Controller));
    for info in vlan_infos(ranges) {
        b = b.append_af_spec(AfSpecBridge::VlanInfo(info));
    }
    b.build()
}

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

/// The kernel's default bridge priority (IFLA_BR_PRIORITY).
const BRIDGE_DEFAULT_PRIORITY: u16 = 0x8000;

impl Netlink {
    /// Opens a netlink connection in the calling thread's network namespace.
    pub fn open() -> Result<Self, NlError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
    ) -> Result<T, NlError> {
        self.rt.block_on(f).map_err(NlError::from)
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, NlError> {
        let h = self.handle.clone();
        let res = self.run(async move {
            let mut s = h.link().get().match_name(name.to_string()).execute();
            s.try_next().await
        });
        match res {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, NlError> {
        let h = self.handle.clone();
        let res = self.run(async move {
            let mut s = h.link().get().match_index(index).execute();
            s.try_next().await
        });
        match res {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A bridge, up, with no carrier until a port forwards. IFLA_BR_VLAN_FILTERING is sent only when asked for:
    /// a kernel without bridge VLAN filtering refuses the attribute (even
    /// as 0) and then creates nothing.
    pub fn add_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(), NlError> {
        // The bridge's priority, at its default: setting it runs the
        // port state selection, which turns the carrier off while no port
        // forwards. Without that run a new bridge keeps the carrier it is
        // born with and its operstate stays UNKNOWN with ports (the
        // kernel runs it when the first port changes the bridge's MAC,
        // which our pinned MAC never lets happen).
        let mut b = LinkBridge::new(name).priority(BRIDGE_DEFAULT_PRIORITY);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if vlan_filtering {
            b = b.vlan_filtering(true);
        }
        let msg = b.build();
        let h = self.handle.clone();
        self.run(async move { h.link().add(msg).execute().await })
    }

    /// A veth pair, both ends with txqlen 0 as the reference makes them:
    /// `name` here (with `mac` if given), `peer` in the
    /// namespace of `peer_netns`. Created where they belong, so neither end
    /// is renamed or moved (each costs the kernel an RCU grace period).
    pub fn add_veth(
        &self,
        name: &str,
        mac: Option<Vec<u8>>,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> Result<(), NlError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .txqueuelen(0)
            .setns_by_fd(peer_netns);
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .txqueuelen(0);
        if let Some(m) = mtu {
            peer_msg = peer_msg.mtu(m);
            b = b.mtu(m);
        }
        if let Some(mac) = mac {
            b = b.address(mac);
        }
        let msg = b
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        let h = self.handle.clone();
        self.run(async move { h.link().add(msg).execute().await })
    }

    fn set(&self, msg: LinkMessage) -> Result<(), NlError> {
        let h = self.handle.clone();
        self.run(async move { h.link().set(msg).execute().await })
    }

    pub fn set_up(&self, index: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(index).up().build())
    }

    pub fn set_down(&self, index: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(index).down().build())
    }

    pub fn set_controller(&self, index: u32, controller: u32) -> Result<(), NlError> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(controller)
                .build(),
        )
    }

    pub fn set_mac(&self, index: u32, mac: Vec<u8>) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(index).address(mac).build())
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(index).mtu(mtu).build())
    }

    pub fn set_promisc(&self, index: u32, on: bool) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(index).promiscuous(on).build())
    }

    pub fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NlError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        let h = self.handle.clone();
        self.run(async move { h.link().set_port(msg).execute().await })
    }

    pub fn set_isolated(&self, index: u32, on: bool) -> Result<(), NlError> {
        let msg = LinkBridgePort::new(index).isolated(on).build();
        let h = self.handle.clone();
        self.run(async move { h.link().set_port(msg).execute().await })
    }

    /// `ip link set <bridge> type bridge vlan_filtering <on>`.
    pub fn set_vlan_filtering(&self, index: u32, on: bool) -> Result<(), NlError> {
        let msg = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(index)
            .vlan_filtering(on)
            .build();
        let h = self.handle.clone();
        self.run(async move { h.link().change(msg).execute().await })
    }

    /// `bridge vlan add dev <port> vid ... master` for all of `ranges` in
    /// one RTM_SETLINK.
    pub fn port_vlans_add(&self, port: u32, ranges: &[VlanRange]) -> Result<(), NlError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let msg = port_vlan_message(port, ranges);
        let h = self.handle.clone();
        self.run(async move { h.link().set(msg).execute().await })
    }

    /// `bridge vlan del dev <port> vid ... master` in one RTM_DELLINK.
    pub fn port_vlans_del(&self, port: u32, ranges: &[VlanRange]) -> Result<(), NlError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let msg = port_vlan_message(port, ranges);
        let h = self.handle.clone();
        self.run(async move { h.link().del_with_message(msg).execute().await })
    }

    /// The VLANs of bridge port `port` (`bridge vlan show dev <port>`).
    /// AF_BRIDGE links can only be dumped, so this dumps and picks.
    pub fn port_vlans(&self, port: u32) -> Result<Vec<PortVlan>, NlError> {
        let h = self.handle.clone();
        let msgs: Vec<LinkMessage> = self.run(async move {
            h.link()
                .get()
                .set_filter_mask(
                    AddressFamily::Bridge,
                    vec![LinkExtentMask::BrvlanCompressed],
                )
                .execute()
                .try_collect()
                .await
        })?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == port) {
            for a in &m.attributes {
                if let LinkAttribute::AfSpecBridge(specs) = a {
                    out.extend(port_vlans_of(specs));
                }
            }
        }
        Ok(out)
    }

    pub fn del_link(&self, index: u32) -> Result<(), NlError> {
        let h = self.handle.clone();
        self.run(async move { h.link().del(index).execute().await })
    }

    /// Addresses on a link (all families), with their scope.
    pub fn addrs(&self, index: u32) -> Result<Vec<(IpNetwork, AddressScope)>, NlError> {
        let h = self.handle.clone();
        let msgs: Vec<AddressMessage> = self.run(async move {
            h.address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
        })?;
        let mut out = Vec::new();
        for m in msgs {
            // The kernel may ignore the filter on old versions.
            if m.header.index != index {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a
                    && let Ok(net) = IpNetwork::new(*ip, m.header.prefix_len)
                {
                    out.push((net, m.header.scope));
                }
            }
        }
        Ok(out)
    }

    pub fn addr_add(&self, index: u32, net: IpNetwork) -> Result<(), NlError> {
        let h = self.handle.clone();
        self.run(async move {
            h.address()
                .add(index, net.ip(), net.prefix())
                .execute()
                .await
        })
    }

    pub fn addr_del(&self, index: u32, net: IpNetwork) -> Result<(), NlError> {
        let h = self.handle.clone();
        let ip = net.ip();
        let prefix = net.prefix();
        self.run(async move {
            let msgs: Vec<AddressMessage> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(ip)
                .set_prefix_length_filter(prefix)
                .execute()
                .try_collect()
                .await?;
            for m in msgs {
                h.address().del(m).execute().await?;
            }
            Ok(())
        })
    }

    /// `ip route add dst [via gw] dev index`.
    pub fn route_add(&self, dst: IpNetwork, gw: Option<IpAddr>, index: u32) -> Result<(), NlError> {
        let msg = match (dst, gw) {
            (IpNetwork::V4(d), gw) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(d.ip(), d.prefix())
                    .output_interface(index)
                    .protocol(RouteProtocol::Boot);
                if let Some(IpAddr::V4(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
            (IpNetwork::V6(d), gw) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(d.ip(), d.prefix())
                    .output_interface(index)
                    .protocol(RouteProtocol::Boot);
                if let Some(IpAddr::V6(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        let mut h = self.handle.clone();
        // NLM_F_APPEND like the reference's RouteAddEcmp: a second
        // interface may add the same destination through another device.
        self.run(async move {
            let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(msg));
            req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
            let mut resp = h.request(req)?;
            while let Some(m) = resp.next().await {
                if let NetlinkPayload::Error(e) = m.payload
                    && e.code.is_some()
                {
                    return Err(rtnetlink::Error::NetlinkError(e));
                }
            }
            Ok(())
        })
    }

    /// Main-table routes through link `index`: destination and gateway.
    pub fn routes(&self, index: u32) -> Result<Vec<(IpNetwork, Option<IpAddr>)>, NlError> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let filter = if v6 {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            };
            let h = self.handle.clone();
            let msgs: Vec<RouteMessage> =
                self.run(async move { h.route().get(filter).execute().try_collect().await })?;
            for m in msgs {
                let mut dev = None;
                let (mut dst, mut gw) = (None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(i) => dev = Some(*i),
                        RouteAttribute::Destination(d) => dst = route_ip(d),
                        RouteAttribute::Gateway(g) => gw = route_ip(g),
                        _ => {}
                    }
                }
                if dev != Some(index) {
                    continue;
                }
                let dst = dst.unwrap_or(if v6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                });
                if let Ok(net) = IpNetwork::new(dst, m.header.destination_prefix_length) {
                    out.push((net, gw));
                }
            }
        }
        Ok(out)
    }

    /// The family of a network as netlink numbers it.
    pub fn family(net: &IpNetwork) -> AddressFamily {
        if net.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16, pvid: bool, untagged: bool) -> VlanRange {
        VlanRange {
            first,
            last,
            pvid,
            untagged,
        }
    }

    #[test]
    fn vlan_ranges_become_begin_end_pairs_and_back() {
        let ranges = [range(100, 100, true, true), range(200, 202, false, false)];
        let infos = vlan_infos(&ranges);
        let f = |v: &BridgeVlanInfo| (v.vid, v.flags.bits());
        assert_eq!(
            infos.iter().map(f).collect::<Vec<_>>(),
            vec![(100, 0b110), (200, 0b1000), (202, 0b10000)]
        );
        let specs: Vec<AfSpecBridge> = infos.into_iter().map(AfSpecBridge::VlanInfo).collect();
        let back = port_vlans_of(&specs);
        let vid = |vid, pvid, untagged| PortVlan {
            vid,
            pvid,
            untagged,
        };
        assert_eq!(
            back,
            vec![
                vid(100, true, true),
                vid(200, false, false),
                vid(201, false, false),
                vid(202, false, false)
            ]
        );
    }

    #[test]
    fn a_port_vlan_message_is_af_bridge_with_the_master_flag() {
        let msg = port_vlan_message(7, &[range(5, 5, false, false)]);
        assert_eq!(msg.header.index, 7);
        assert_eq!(msg.header.interface_family, AddressFamily::Bridge);
        let Some(LinkAttribute::AfSpecBridge(specs)) = msg.attributes.first() else {
            panic!("no IFLA_AF_SPEC: {msg:?}");
        };
        assert_eq!(specs[0], AfSpecBridge::Flags(BridgeFlag::Controller));
        assert_eq!(specs.len(), 2);
    }
}
