//! IPVS over generic netlink (family "IPVS", `include/uapi/linux/ip_vs.h`),
//! with our own message type on `netlink-packet-generic`: the virtual
//! servers and their real servers, listed, added and deleted, as ipvsadm
//! does it, without exec'ing ipvsadm.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use crate::services::Proto;

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS (no `ip_vs` module): family not found.
    #[error("this kernel has no IPVS (generic netlink family \"IPVS\" not found)")]
    Unavailable,
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("IPVS {op}: {source}")]
    Kernel {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("IPVS reply: {0}")]
    Decode(String),
}

// Commands.
const CMD_NEW_SERVICE: u8 = 1;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
// IPVS_CMD_ATTR_*.
const ATTR_SERVICE: u16 = 1;
const ATTR_DEST: u16 = 2;
// IPVS_SVC_ATTR_*.
const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;
// IPVS_DEST_ATTR_*.
const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ADDR_FAMILY: u16 = 11;
/// IP_VS_CONN_F_MASQ, the masquerading forwarder (ipvsadm `-m`).
const FWD_MASQ: u32 = 0;
const FWD_MASK: u32 = 7;
const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// One attribute: raw bytes, or attributes nested inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    kind: u16,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

impl Attr {
    fn bytes(kind: u16, b: impl Into<Vec<u8>>) -> Attr {
        Attr {
            kind,
            value: Value::Bytes(b.into()),
        }
    }
    fn u16(kind: u16, v: u16) -> Attr {
        Attr::bytes(kind, v.to_ne_bytes())
    }
    fn u32(kind: u16, v: u32) -> Attr {
        Attr::bytes(kind, v.to_ne_bytes())
    }
    /// Ports go on the wire in network order (`__be16`).
    fn port(kind: u16, p: u16) -> Attr {
        Attr::bytes(kind, p.to_be_bytes())
    }
    /// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
    fn addr(kind: u16, ip: IpAddr) -> Attr {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b = v6.octets(),
        }
        Attr::bytes(kind, b)
    }
    fn nested(kind: u16, inner: Vec<Attr>) -> Attr {
        Attr {
            kind,
            value: Value::Nested(inner),
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.value {
            Value::Bytes(b) => b.len(),
            Value::Nested(n) => n.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self.value {
            Value::Bytes(_) => self.kind,
            Value::Nested(_) => self.kind | netlink_packet_core::NLA_F_NESTED,
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.value {
            Value::Bytes(b) => buffer[..b.len()].copy_from_slice(b),
            Value::Nested(n) => n.as_slice().emit(buffer),
        }
    }
}

/// Attributes as they came: kind (flags stripped) and raw value.
fn parse_attrs(buf: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla: Result<NlaBuffer<&[u8]>, DecodeError>| {
            nla.map(|n| {
                (
                    n.kind() & netlink_packet_core::NLA_TYPE_MASK,
                    n.value().to_vec(),
                )
            })
        })
        .collect()
}

/// An IPVS request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMsg {
    cmd: u8,
    attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMsg {
    fn family_name() -> &'static str {
        "IPVS"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for IpvsMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMsg {
            cmd: header.cmd,
            attrs: parse_attrs(buf)?
                .into_iter()
                .map(|(k, v)| Attr::bytes(k, v))
                .collect(),
        })
    }
}

/// A virtual server: VIP, protocol, port and scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualServer {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub scheduler: String,
}

/// A real server behind a virtual server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Forwarded by masquerading (NAT), as kube-proxy's are.
    pub masq: bool,
}

fn af(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn proto_num(p: Proto) -> u16 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u16,
        Proto::Udp => libc::IPPROTO_UDP as u16,
    }
}

/// The attributes that name a virtual server; `full` adds what creating
/// one needs (the kernel refuses a NEW_SERVICE without them).
fn service_attrs(vs: &VirtualServer, full: bool) -> Attr {
    let mut a = vec![
        Attr::u16(SVC_AF, af(vs.addr)),
        Attr::u16(SVC_PROTOCOL, proto_num(vs.proto)),
        Attr::addr(SVC_ADDR, vs.addr),
        Attr::port(SVC_PORT, vs.port),
    ];
    if full {
        let mut sched = vs.scheduler.clone().into_bytes();
        sched.push(0);
        let mut flags = Vec::with_capacity(8);
        flags.extend_from_slice(&0u32.to_ne_bytes());
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        a.push(Attr::bytes(SVC_SCHED_NAME, sched));
        a.push(Attr::bytes(SVC_FLAGS, flags));
        a.push(Attr::u32(SVC_TIMEOUT, 0));
        // A mask for IPv4, a prefix length for IPv6 (persistence only).
        a.push(Attr::u32(
            SVC_NETMASK,
            if vs.addr.is_ipv4() { u32::MAX } else { 128 },
        ));
    }
    Attr::nested(ATTR_SERVICE, a)
}

fn dest_attrs(rs: &RealServer, full: bool) -> Attr {
    let mut a = vec![
        Attr::addr(DEST_ADDR, rs.addr),
        Attr::port(DEST_PORT, rs.port),
        Attr::u16(DEST_ADDR_FAMILY, af(rs.addr)),
    ];
    if full {
        a.push(Attr::u32(
            DEST_FWD_METHOD,
            if rs.masq { FWD_MASQ } else { 2 },
        ));
        a.push(Attr::u32(DEST_WEIGHT, rs.weight));
        a.push(Attr::u32(DEST_U_THRESH, 0));
        a.push(Attr::u32(DEST_L_THRESH, 0));
    }
    Attr::nested(ATTR_DEST, a)
}

fn get(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

fn ne_u16(b: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_ne_bytes(b?.get(..2)?.try_into().ok()?))
}

fn ne_u32(b: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_ne_bytes(b?.get(..4)?.try_into().ok()?))
}

fn be_u16(b: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(b?.get(..2)?.try_into().ok()?))
}

fn ip(family: u16, b: Option<&[u8]>) -> Option<IpAddr> {
    let b = b?;
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

/// A virtual server from a dump; `None` for what we do not program
/// (firewall-mark services, other protocols).
fn parse_service(nested: &[u8]) -> Result<Option<VirtualServer>, DecodeError> {
    let a = parse_attrs(nested)?;
    let Some(family) = ne_u16(get(&a, SVC_AF)) else {
        return Ok(None);
    };
    let proto = match ne_u16(get(&a, SVC_PROTOCOL)).map(i32::from) {
        Some(libc::IPPROTO_TCP) => Proto::Tcp,
        Some(libc::IPPROTO_UDP) => Proto::Udp,
        _ => return Ok(None),
    };
    let (Some(addr), Some(port)) = (ip(family, get(&a, SVC_ADDR)), be_u16(get(&a, SVC_PORT)))
    else {
        return Ok(None);
    };
    let scheduler = get(&a, SVC_SCHED_NAME)
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default();
    Ok(Some(VirtualServer {
        addr,
        proto,
        port,
        scheduler,
    }))
}

fn parse_dest(nested: &[u8], svc_family: u16) -> Result<Option<RealServer>, DecodeError> {
    let a = parse_attrs(nested)?;
    let family = ne_u16(get(&a, DEST_ADDR_FAMILY)).unwrap_or(svc_family);
    let (Some(addr), Some(port)) = (ip(family, get(&a, DEST_ADDR)), be_u16(get(&a, DEST_PORT)))
    else {
        return Ok(None);
    };
    Ok(Some(RealServer {
        addr,
        port,
        weight: ne_u32(get(&a, DEST_WEIGHT)).unwrap_or(0),
        masq: ne_u32(get(&a, DEST_FWD_METHOD)).map(|f| f & FWD_MASK) == Some(FWD_MASQ),
    }))
}

/// A generic netlink socket talking to the kernel's IPVS.
pub struct Ipvs {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl Ipvs {
    /// Opens a socket and resolves the IPVS family (which loads `ip_vs`
    /// where modules can be loaded). [`IpvsError::Unavailable`] when the
    /// kernel has none.
    pub fn open() -> Result<Ipvs, IpvsError> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let mut ipvs = Ipvs {
            sock,
            family: 0,
            seq: 0,
        };
        let mut ask = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IpvsMsg::family_name().into())],
        });
        ask.finalize();
        let replies = match ipvs.transact(ask, NLM_F_REQUEST, "family lookup") {
            Ok(r) => r,
            Err(IpvsError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Err(IpvsError::Unavailable);
            }
            Err(e) => return Err(e),
        };
        ipvs.family = replies
            .iter()
            .flat_map(|m: &GenlMessage<GenlCtrl>| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsError::Unavailable)?;
        Ok(ipvs)
    }

    /// Sends one request and collects the replies until the ACK or the
    /// end of the dump.
    fn transact<F>(
        &mut self,
        msg: GenlMessage<F>,
        flags: u16,
        op: &'static str,
    ) -> Result<Vec<GenlMessage<F>>, IpvsError>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let len = NetlinkBuffer::new_checked(&data[at..])
                    .map_err(|e| IpvsError::Decode(e.to_string()))?
                    .length() as usize;
                if len == 0 || at + len > data.len() {
                    return Err(IpvsError::Decode("truncated netlink message".into()));
                }
                let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[at..at + len])
                    .map_err(|e| IpvsError::Decode(e.to_string()))?;
                at += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(IpvsError::Kernel {
                                op,
                                source: e.to_io(),
                            }),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    fn request(
        &mut self,
        cmd: u8,
        attrs: Vec<Attr>,
        flags: u16,
        op: &'static str,
    ) -> Result<Vec<IpvsMsg>, IpvsError> {
        let mut m = GenlMessage::from_payload(IpvsMsg { cmd, attrs });
        m.set_resolved_family_id(self.family);
        let r = self.transact(m, NLM_F_REQUEST | flags, op)?;
        Ok(r.into_iter().map(|m| m.payload).collect())
    }

    /// Every TCP/UDP virtual server in this netns.
    pub fn services(&mut self) -> Result<Vec<VirtualServer>, IpvsError> {
        let mut out = Vec::new();
        for m in self.request(CMD_GET_SERVICE, vec![], NLM_F_DUMP, "listing services")? {
            for a in &m.attrs {
                if let (ATTR_SERVICE, Value::Bytes(b)) = (a.kind, &a.value)
                    && let Some(vs) =
                        parse_service(b).map_err(|e| IpvsError::Decode(e.to_string()))?
                {
                    out.push(vs);
                }
            }
        }
        Ok(out)
    }

    /// The real servers of `vs`.
    pub fn dests(&mut self, vs: &VirtualServer) -> Result<Vec<RealServer>, IpvsError> {
        let mut out = Vec::new();
        let msgs = self.request(
            CMD_GET_DEST,
            vec![service_attrs(vs, false)],
            NLM_F_DUMP,
            "listing real servers",
        )?;
        for m in msgs {
            for a in &m.attrs {
                if let (ATTR_DEST, Value::Bytes(b)) = (a.kind, &a.value)
                    && let Some(rs) =
                        parse_dest(b, af(vs.addr)).map_err(|e| IpvsError::Decode(e.to_string()))?
                {
                    out.push(rs);
                }
            }
        }
        Ok(out)
    }

    pub fn add_service(&mut self, vs: &VirtualServer) -> Result<(), IpvsError> {
        self.request(
            CMD_NEW_SERVICE,
            vec![service_attrs(vs, true)],
            0,
            "adding a service",
        )
        .map(drop)
    }

    pub fn del_service(&mut self, vs: &VirtualServer) -> Result<(), IpvsError> {
        self.request(
            CMD_DEL_SERVICE,
            vec![service_attrs(vs, false)],
            0,
            "deleting a service",
        )
        .map(drop)
    }

    pub fn add_dest(&mut self, vs: &VirtualServer, rs: &RealServer) -> Result<(), IpvsError> {
        self.request(
            CMD_NEW_DEST,
            vec![service_attrs(vs, false), dest_attrs(rs, true)],
            0,
            "adding a real server",
        )
        .map(drop)
    }

    pub fn del_dest(&mut self, vs: &VirtualServer, rs: &RealServer) -> Result<(), IpvsError> {
        self.request(
            CMD_DEL_DEST,
            vec![service_attrs(vs, false), dest_attrs(rs, false)],
            0,
            "deleting a real server",
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs() -> VirtualServer {
        VirtualServer {
            addr: "10.254.10.128".parse().expect("ip"),
            proto: Proto::Tcp,
            port: 80,
            scheduler: "rr".into(),
        }
    }

    fn emitted(a: &Attr) -> Vec<u8> {
        let mut b = vec![0u8; a.buffer_len()];
        a.emit(&mut b);
        b
    }

    #[test]
    fn a_service_goes_on_the_wire_as_ipvsadm_sends_it() {
        let b = emitted(&service_attrs(&vs(), true));
        // Nested SERVICE attribute.
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), ATTR_SERVICE | 0x8000);
        let inner = parse_attrs(&b[4..]).expect("parse");
        assert_eq!(ne_u16(get(&inner, SVC_AF)), Some(2));
        assert_eq!(ne_u16(get(&inner, SVC_PROTOCOL)), Some(6));
        // Network order port, a 16-byte address.
        assert_eq!(get(&inner, SVC_PORT), Some(&[0u8, 80][..]));
        assert_eq!(
            get(&inner, SVC_ADDR),
            Some(&[10u8, 254, 10, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..])
        );
        assert_eq!(get(&inner, SVC_SCHED_NAME), Some(&b"rr\0"[..]));
        assert_eq!(ne_u32(get(&inner, SVC_NETMASK)), Some(u32::MAX));
        assert_eq!(get(&inner, SVC_FLAGS).map(<[u8]>::len), Some(8));
        // What a dump returns parses back to the same server.
        assert_eq!(parse_service(&b[4..]).expect("parse"), Some(vs()));
    }

    #[test]
    fn a_masq_real_server_round_trips() {
        let rs = RealServer {
            addr: "10.244.1.2".parse().expect("ip"),
            port: 8080,
            weight: 1,
            masq: true,
        };
        let b = emitted(&dest_attrs(&rs, true));
        let inner = parse_attrs(&b[4..]).expect("parse");
        assert_eq!(ne_u32(get(&inner, DEST_FWD_METHOD)), Some(FWD_MASQ));
        assert_eq!(get(&inner, DEST_PORT), Some(&[0x1fu8, 0x90][..]));
        assert_eq!(parse_dest(&b[4..], AF_INET).expect("parse"), Some(rs));
    }

    #[test]
    fn the_message_carries_the_command_and_version() {
        let mut m = GenlMessage::from_payload(IpvsMsg {
            cmd: CMD_NEW_DEST,
            attrs: vec![service_attrs(&vs(), false)],
        });
        m.set_resolved_family_id(42);
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        assert_eq!((b[0], b[1]), (CMD_NEW_DEST, 1));
        let back =
            GenlMessage::<IpvsMsg>::parse_with_param(&b[..], 42).expect("parse generic message");
        assert_eq!(back.payload.cmd, CMD_NEW_DEST);
    }

    #[test]
    fn fwmark_and_unknown_protocols_are_not_ours() {
        let a = Attr::nested(
            ATTR_SERVICE,
            vec![
                Attr::u16(SVC_AF, AF_INET),
                Attr::u16(SVC_PROTOCOL, 132),
                Attr::addr(SVC_ADDR, "10.0.0.1".parse().expect("ip")),
                Attr::port(SVC_PORT, 80),
            ],
        );
        assert_eq!(parse_service(&emitted(&a)[4..]).expect("parse"), None);
    }
}
