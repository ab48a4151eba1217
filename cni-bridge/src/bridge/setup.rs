//! The kernel side of the bridge plugin: the bridge, the veth pair, the
//! container interface's addresses and routes.

use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use cni_protocol::{CniError, CniResult, ErrorCode};
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressScope;

use crate::netns::{self, NetnsError};
use crate::nl::{Link, Netlink, NlError, parse_mac};
use crate::sysctl;

use super::config::NetConf;
use super::vlan_setup;

pub fn nl_err(what: impl std::fmt::Display, e: NlError) -> CniError {
    CniError::internal(format!("{what}: {e}"))
}

pub fn ns_err(e: NetnsError) -> CniError {
    CniError::internal(e.to_string())
}

/// The bridge after [`ensure_bridge`], and what this call changed on it.
pub struct EnsuredBridge {
    pub link: Link,
    /// This call created it.
    pub created: bool,
    /// This call turned VLAN filtering on (the bridge existed without it).
    pub enabled_vlan_filtering: bool,
}

/// Ensures the bridge exists, is a bridge, and is up; with VLAN options,
/// that it filters VLANs.
pub fn ensure_bridge(nl: &Netlink, conf: &NetConf) -> Result<EnsuredBridge, CniError> {
    let name = &conf.bridge;
    let filtering = conf.vlans.filtering;
    let mut created = false;
    let existing = nl
        .link_by_name(name)
        .map_err(|e| nl_err(format!("looking up {name:?}"), e))?;
    if existing.is_none() {
        match nl.add_bridge(name, (conf.mtu > 0).then_some(conf.mtu), filtering) {
            Ok(()) => created = true,
            Err(e) if e.is_exists() => {}
            Err(e) if filtering && e.is_not_supported() => {
                return Err(vlan_setup::unsupported(
                    conf,
                    &format!("creating {name:?} with vlan_filtering 1"),
                    e,
                ));
            }
            Err(e) => return Err(nl_err(format!("could not add {name:?}"), e)),
        }
    }
    let br = nl
        .link_by_name(name)
        .map_err(|e| nl_err(format!("looking up {name:?}"), e))?
        .ok_or_else(|| CniError::internal(format!("could not lookup {name:?}")))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(CniError::internal(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    // A bridge made without filtering would carry the port VLANs but not
    // enforce them; the reference leaves it so, which isolates nothing.
    let mut enabled_vlan_filtering = false;
    if filtering && br.vlan_filtering != Some(true) {
        nl.set_vlan_filtering(br.index, true).map_err(|e| {
            let what = format!("setting vlan_filtering 1 on {name:?}");
            if e.is_not_supported() {
                vlan_setup::unsupported(conf, &what, e)
            } else {
                nl_err(what, e)
            }
        })?;
        enabled_vlan_filtering = true;
    }
    // A failure below leaves the bridge as this call found it.
    let restore = |e: CniError| {
        if created {
            let _ = nl.del_link(br.index);
        } else if enabled_vlan_filtering {
            let _ = nl.set_vlan_filtering(br.index, false);
        }
        e
    };
    if conf.promisc_mode && !br.promisc {
        nl.set_promisc(br.index, true)
            .map_err(|e| nl_err(format!("could not set promiscuous mode on {name:?}"), e))
            .map_err(restore)?;
    }
    // Pin the MAC: left alone, a bridge takes the lowest MAC of its ports
    // and changes it as pods come and go, breaking neighbours' ARP caches.
    nl.set_mac(br.index, br.mac.clone())
        .map_err(|e| nl_err("could not set bridge's mac", e))
        .map_err(restore)?;
    // We own the routes on this bridge; router advertisements must not add any.
    let _ = sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    if !br.up {
        nl.set_up(br.index)
            .map_err(|e| nl_err(format!("could not set {name:?} up"), e))
            .map_err(restore)?;
    }
    Ok(EnsuredBridge {
        link: br,
        created,
        enabled_vlan_filtering,
    })
}

/// `len` random bytes as hex, for interface names.
pub(super) fn random_hex(len: usize) -> Result<String, CniError> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| CniError::internal(format!("reading /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The container end once configured.
pub struct ContainerIf {
    pub name: String,
    pub mac: String,
}

/// Creates the veth pair from inside the container netns: the container
/// end is born there as `ifname`, the host end is born in the host netns
/// under a random `vethXXXXXXXX` name. Returns the host end's name.
pub fn create_veth(
    netns_path: &Path,
    ifname: &str,
    mtu: Option<u32>,
    mac: Option<&str>,
    bring_up: bool,
) -> Result<(String, ContainerIf), CniError> {
    let mac = match mac {
        Some(m) => Some(parse_mac(m).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("invalid MAC address {m:?}"),
            )
        })?),
        None => None,
    };
    // This thread is in the host netns; the container thread names it by fd.
    let host_ns = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::internal(format!("failed to open the host netns: {e}")))?;
    let host_fd = host_ns.as_raw_fd();
    netns::run_in(netns_path, || -> Result<(String, ContainerIf), CniError> {
        let cnl = Netlink::open().map_err(|e| nl_err("netlink", e))?;
        let taken = cnl
            .link_by_name(ifname)
            .map_err(|e| nl_err("looking up the container interface", e))?;
        if taken.is_some() {
            return Err(CniError::internal(format!(
                "container veth name provided ({ifname}) already exists"
            )));
        }
        let host = loop {
            let host = format!("veth{}", random_hex(4)?);
            match cnl.add_veth(ifname, mac.clone(), &host, host_fd, mtu) {
                Ok(()) => break host,
                // The random host name is taken on the host: draw again.
                Err(e) if e.is_exists() => continue,
                Err(e) => return Err(nl_err("failed to make veth pair", e)),
            }
        };
        let finish = || -> Result<ContainerIf, CniError> {
            let link = cnl
                .link_by_name(ifname)
                .map_err(|e| nl_err("looking up the new veth", e))?
                .ok_or_else(|| CniError::internal("new veth vanished"))?;
            if bring_up {
                cnl.set_up(link.index)
                    .map_err(|e| nl_err(format!("failed to set {ifname:?} up"), e))?;
            }
            Ok(ContainerIf {
                name: link.name.clone(),
                mac: link.mac_string(),
            })
        };
        match finish() {
            Ok(c) => Ok((host, c)),
            Err(e) => {
                // Deleting one end removes the pair.
                if let Ok(Some(l)) = cnl.link_by_name(ifname) {
                    let _ = cnl.del_link(l.index);
                }
                Err(e)
            }
        }
    })
    .map_err(ns_err)?
}

/// Attaches the host end to the bridge with the port options and VLANs,
/// and brings it up (after the VLANs: no frame passes in the wrong one).
pub fn attach_host_end(
    nl: &Netlink,
    host: &str,
    br: &Link,
    conf: &NetConf,
) -> Result<Link, CniError> {
    let link = nl
        .link_by_name(host)
        .map_err(|e| nl_err(format!("failed to lookup {host:?}"), e))?
        .ok_or_else(|| CniError::internal(format!("failed to lookup {host:?}")))?;
    nl.set_controller(link.index, br.index).map_err(|e| {
        nl_err(
            format!("failed to connect {host:?} to bridge {}", br.name),
            e,
        )
    })?;
    nl.set_hairpin(link.index, conf.hairpin_mode)
        .map_err(|e| nl_err(format!("failed to setup hairpin mode for {host}"), e))?;
    if conf.port_isolation {
        nl.set_isolated(link.index, true)
            .map_err(|e| nl_err(format!("failed to set port isolation on {host}"), e))?;
    }
    vlan_setup::configure_port(nl, &link, conf)?;
    // A router advertisement on the bridge must not configure the host
    // end (the reference's setting). Without IPv6 there is nothing to set.
    let _ = sysctl::set(&format!("net/ipv6/conf/{host}/accept_ra"), "0");
    nl.set_up(link.index)
        .map_err(|e| nl_err(format!("failed to set {host:?} up"), e))?;
    nl.link_by_index(link.index)
        .map_err(|e| nl_err(format!("failed to lookup {host:?}"), e))?
        .ok_or_else(|| CniError::internal(format!("failed to lookup {host:?}")))
}

/// Inside the container netns: sysctls, addresses, routes (the reference's
/// ConfigureIface: a route without a gateway uses its family's first one).
pub fn configure_container(
    netns_path: &Path,
    ifname: &str,
    result: &CniResult,
    enable_dad: bool,
) -> Result<(), CniError> {
    netns::run_in(netns_path, || -> Result<(), CniError> {
        if enable_dad {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
        } else {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        }
        let _ = sysctl::set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        if result.ips.iter().any(|ip| ip.address.is_ipv6()) {
            for dev in ["lo", ifname] {
                let key = format!("net/ipv6/conf/{dev}/disable_ipv6");
                if sysctl::get(&key).map(|v| v != "0").unwrap_or(false) {
                    let _ = sysctl::set(&key, "0");
                }
            }
        }
        let nl = Netlink::open().map_err(|e| nl_err("netlink", e))?;
        let link = nl
            .link_by_name(ifname)
            .map_err(|e| nl_err(format!("failed to lookup {ifname:?}"), e))?
            .ok_or_else(|| CniError::internal(format!("failed to lookup {ifname:?}")))?;
        let (mut v4gw, mut v6gw) = (None, None);
        for ip in &result.ips {
            nl.addr_add(link.index, ip.address).map_err(|e| {
                nl_err(
                    format!("failed to add IP addr {} to {ifname:?}", ip.address),
                    e,
                )
            })?;
            match ip.gateway {
                Some(g @ IpAddr::V4(_)) if v4gw.is_none() => v4gw = Some(g),
                Some(g @ IpAddr::V6(_)) if v6gw.is_none() => v6gw = Some(g),
                _ => {}
            }
        }
        nl.set_up(link.index)
            .map_err(|e| nl_err(format!("failed to set {ifname:?} UP"), e))?;
        for r in &result.routes {
            let gw = r.gw.or(if r.dst.is_ipv4() { v4gw } else { v6gw });
            nl.route_add(r.dst, gw, link.index).map_err(|e| {
                nl_err(
                    format!("failed to add route '{} via {gw:?} dev {ifname}'", r.dst),
                    e,
                )
            })?;
        }
        Ok(())
    })
    .map_err(ns_err)?
}

/// Waits until the host end of the veth is operationally up, as the
/// reference does, but polling every millisecond (within the reference's
/// 2.55 s budget) instead of sleeping 50 ms and more at a time.
pub fn wait_oper_up(nl: &Netlink, index: u32) -> Result<(), CniError> {
    let deadline = std::time::Instant::now() + Duration::from_millis(2550);
    loop {
        if let Ok(Some(l)) = nl.link_by_index(index)
            && l.oper_up
        {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CniError::internal("bridge port in error state"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Puts a gateway address on the bridge (the reference's ensureAddr).
pub fn ensure_bridge_addr(
    nl: &Netlink,
    br: &Link,
    gw: IpNetwork,
    force: bool,
) -> Result<(), CniError> {
    let addrs = nl.addrs(br.index).map_err(|e| {
        nl_err(
            format!("could not get list of IP addresses for {}", br.name),
            e,
        )
    })?;
    for (a, scope) in addrs {
        if a.is_ipv4() != gw.is_ipv4() || scope == AddressScope::Link {
            continue;
        }
        if a == gw {
            return Ok(());
        }
        let overlaps = a.contains(gw.ip()) || gw.contains(a.ip());
        if gw.is_ipv4() || overlaps {
            if force {
                nl.addr_del(br.index, a).map_err(|e| {
                    nl_err(format!("could not remove IP address from {:?}", br.name), e)
                })?;
            } else {
                return Err(CniError::internal(format!(
                    "{:?} already has an IP address different from {gw}",
                    br.name
                )));
            }
        }
    }
    match nl.addr_add(br.index, gw) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => {
            let what = format!("could not add IP address to {:?}", br.name);
            Err(nl_err(what, e))
        }
    }
}

pub fn enable_forwarding(v4: bool, v6: bool) -> Result<(), CniError> {
    if v4 {
        sysctl::set("net/ipv4/ip_forward", "1")
            .map_err(|e| CniError::internal(format!("failed to enable forwarding: {e}")))?;
    }
    if v6 {
        sysctl::set("net/ipv6/conf/all/forwarding", "1")
            .map_err(|e| CniError::internal(format!("failed to enable forwarding: {e}")))?;
    }
    Ok(())
}

/// A container interface's index and global addresses.
pub type ContainerAddrs = (u32, Vec<IpNetwork>);

/// In the container netns: the index and global addresses of `ifname`
/// (the addresses tell the masquerade teardown which jumps are its own).
/// `None` when it is not there.
pub fn container_if(
    netns_path: &Path,
    ifname: &str,
) -> Result<Result<Option<ContainerAddrs>, NlError>, NetnsError> {
    netns::run_in(netns_path, || {
        let nl = Netlink::open()?;
        let Some(link) = nl.link_by_name(ifname)? else {
            return Ok(None);
        };
        let addrs = nl
            .addrs(link.index)?
            .into_iter()
            .filter(|(_, scope)| *scope == AddressScope::Universe)
            .map(|(a, _)| a)
            .collect();
        Ok(Some((link.index, addrs)))
    })
}

/// In the container netns: deletes link `index` (gone already is fine).
pub fn delete_link(netns_path: &Path, index: u32) -> Result<Result<(), NlError>, NetnsError> {
    netns::run_in(netns_path, || match Netlink::open()?.del_link(index) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    })
}
