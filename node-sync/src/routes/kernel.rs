//! Our routes in the kernel's main table, over rtnetlink: listed, put
//! (create or replace) and deleted by the protocol number that marks them
//! ours. Routes with another protocol are never touched.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("setting {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
}

pub struct Kernel {
    handle: Handle,
    protocol: u8,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn message(dst: IpNetwork, via: IpAddr, protocol: u8) -> Option<RouteMessage> {
    let proto = RouteProtocol::from(protocol);
    match (dst, via) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => Some(
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(d.ip(), d.prefix())
                .gateway(g)
                .protocol(proto)
                .build(),
        ),
        (IpNetwork::V6(d), IpAddr::V6(g)) => Some(
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d.ip(), d.prefix())
                .gateway(g)
                .protocol(proto)
                .build(),
        ),
        _ => None,
    }
}

impl Kernel {
    /// A netlink connection in this process's netns, driven by the
    /// current tokio runtime.
    pub fn open(protocol: u8) -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Kernel { handle, protocol })
    }

    /// Main-table routes with our protocol: (destination, gateway).
    pub async fn ours(&self) -> Result<Vec<(IpNetwork, IpAddr)>, KernelError> {
        let mut out = Vec::new();
        for filter in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await?;
            for m in msgs {
                if u8::from(m.header.protocol) != self.protocol
                    || m.header.table != 254 && !m.attributes.contains(&RouteAttribute::Table(254))
                {
                    continue;
                }
                let (mut dst, mut gw) = (None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = ip_of(d),
                        RouteAttribute::Gateway(g) => gw = ip_of(g),
                        _ => {}
                    }
                }
                if let (Some(d), Some(g)) = (dst, gw)
                    && let Ok(net) = IpNetwork::new(d, m.header.destination_prefix_length)
                {
                    out.push((net, g));
                }
            }
        }
        Ok(out)
    }

    /// Creates the route, or replaces one to the same destination.
    pub async fn put(&self, dst: IpNetwork, via: IpAddr) -> Result<(), KernelError> {
        let Some(msg) = message(dst, via, self.protocol) else {
            return Ok(());
        };
        self.handle.route().add(msg).replace().execute().await?;
        Ok(())
    }

    pub async fn delete(&self, dst: IpNetwork, via: IpAddr) -> Result<(), KernelError> {
        let Some(msg) = message(dst, via, self.protocol) else {
            return Ok(());
        };
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            // Gone already (ESRCH).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_esrch() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}

/// Forwarding on, so routed pod traffic passes through this node.
pub fn ip_forward(v6: bool) -> Result<(), KernelError> {
    let mut paths = vec!["/proc/sys/net/ipv4/ip_forward"];
    if v6 {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for p in paths {
        if std::fs::read_to_string(p)
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        std::fs::write(p, "1").map_err(|source| KernelError::Sysctl {
            path: p.to_string(),
            source,
        })?;
    }
    Ok(())
}
