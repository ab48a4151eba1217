//! The kernel side of the VLAN options: a port's VLANs, the gateway
//! interface of an access VLAN, and what CHECK verifies of both.

use std::os::fd::AsRawFd;

use cni_protocol::{CniError, ErrorCode};
use ipnetwork::IpNetwork;

use crate::nl::{Link, Netlink, NlError, VlanRange};

use super::config::NetConf;
use super::setup::{nl_err, random_hex};

/// The VLAN option of `conf` as `"key" = value`, for error messages.
fn option_text(conf: &NetConf) -> String {
    match &conf.vlan_trunk {
        Some(t) if conf.vlan == 0 => format!(
            "\"vlanTrunk\" = {}",
            serde_json::to_string(t).unwrap_or_default()
        ),
        _ => format!("\"vlan\" = {}", conf.vlan),
    }
}

/// The kernel refused bridge VLAN filtering (EOPNOTSUPP): CNI code 2,
/// "unsupported field", naming the field and its value as the spec asks.
pub fn unsupported(conf: &NetConf, what: &str, e: NlError) -> CniError {
    CniError::new(
        ErrorCode::UnsupportedField,
        format!(
            "{} needs bridge VLAN filtering, which this kernel lacks \
             (CONFIG_BRIDGE_VLAN_FILTERING): {what}: {e}",
            option_text(conf)
        ),
    )
}

fn port_err(conf: &NetConf, what: String, e: NlError) -> CniError {
    if e.is_not_supported() {
        unsupported(conf, &what, e)
    } else {
        nl_err(what, e)
    }
}

/// Gives bridge port `port` the VLANs of `conf` (the reference's order:
/// the bridge's defaults go first unless `preserveDefaultVlan`, then the
/// access VLAN or the trunk). One netlink message each way.
pub fn configure_port(nl: &Netlink, port: &Link, conf: &NetConf) -> Result<(), CniError> {
    let plan = &conf.vlans;
    if !plan.configures_port() {
        return Ok(());
    }
    let name = &port.name;
    if plan.strips_defaults() {
        let what = || format!("failed to remove default vlan on interface {name:?}");
        let have = nl
            .port_vlans(port.index)
            .map_err(|e| port_err(conf, what(), e))?;
        let ranges: Vec<VlanRange> = have
            .iter()
            .map(|v| VlanRange {
                first: v.vid,
                last: v.vid,
                pvid: false,
                untagged: false,
            })
            .collect();
        nl.port_vlans_del(port.index, &ranges)
            .map_err(|e| port_err(conf, what(), e))?;
    }
    nl.port_vlans_add(port.index, &plan.port_ranges())
        .map_err(|e| {
            port_err(
                conf,
                format!("failed to setup vlan tag on interface {name:?}"),
                e,
            )
        })
}

/// The access VLAN's gateway interface, as the reference makes it: a veth
/// pair in the host netns, `<bridge>.<vlan>` holding the gateway addresses
/// and a random `vethXXXXXXXX` peer on the bridge with the VLAN as its
/// PVID. Shared by every attachment of that VLAN and never deleted, like
/// the bridge. Returns it and whether this call created it.
pub fn ensure_gateway_if(
    nl: &Netlink,
    br: &Link,
    conf: &NetConf,
    name: &str,
) -> Result<(Link, bool), CniError> {
    let lookup = |n: &str| {
        nl.link_by_name(n)
            .map_err(|e| nl_err(format!("failed to find interface {n:?}"), e))
    };
    if let Some(l) = lookup(name)? {
        return Ok((l, false));
    }
    // Both ends are born here: the peer's netns is this thread's own.
    let here = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| CniError::internal(format!("failed to open the host netns: {e}")))?;
    let peer = loop {
        let peer = format!("veth{}", random_hex(4)?);
        match nl.add_veth(name, None, &peer, here.as_raw_fd(), Some(br.mtu)) {
            Ok(()) => break peer,
            Err(e) if e.is_exists() => {
                // A parallel ADD of the same VLAN made it first: share it.
                if let Some(l) = lookup(name)? {
                    return Ok((l, false));
                }
            }
            Err(e) => {
                return Err(nl_err(format!("faild to create vlan gateway {name:?}"), e));
            }
        }
    };
    let finish = || -> Result<Link, CniError> {
        let p = lookup(&peer)?
            .ok_or_else(|| CniError::internal(format!("failed to lookup {peer:?}")))?;
        nl.set_controller(p.index, br.index).map_err(|e| {
            nl_err(
                format!("failed to connect {peer:?} to bridge {}", br.name),
                e,
            )
        })?;
        configure_port(nl, &p, conf)?;
        nl.set_up(p.index)
            .map_err(|e| nl_err(format!("failed to set {peer:?} up"), e))?;
        let gw = lookup(name)?
            .ok_or_else(|| CniError::internal(format!("failed to lookup {name:?}")))?;
        nl.set_up(gw.index)
            .map_err(|e| nl_err(format!("failed to up {name:?}"), e))?;
        Ok(gw)
    };
    match finish() {
        Ok(gw) => Ok((gw, true)),
        Err(e) => {
            // Deleting one end removes the pair.
            if let Ok(Some(l)) = nl.link_by_name(name) {
                let _ = nl.del_link(l.index);
            }
            Err(e)
        }
    }
}

/// CHECK: the bridge filters VLANs when the config asks for them.
pub fn verify_bridge(br: &Link, conf: &NetConf) -> Result<(), CniError> {
    if conf.vlans.filtering && br.vlan_filtering != Some(true) {
        return Err(CniError::internal(format!(
            "bridge {} does not filter VLANs (vlan_filtering is off)",
            br.name
        )));
    }
    Ok(())
}

/// CHECK: port `port` has the config's VLANs with the right flags, and,
/// without `preserveDefaultVlan`, no others.
pub fn verify_port(nl: &Netlink, port: &Link, conf: &NetConf) -> Result<(), CniError> {
    let plan = &conf.vlans;
    if !plan.configures_port() {
        return Ok(());
    }
    let name = &port.name;
    let have = nl
        .port_vlans(port.index)
        .map_err(|e| nl_err(format!("listing the VLANs of {name}"), e))?;
    let find = |vid: u16| have.iter().find(|v| v.vid == vid);
    if plan.access != 0 && !find(plan.access).is_some_and(|v| v.pvid && v.untagged) {
        return Err(CniError::internal(format!(
            "interface {name} lacks VLAN {} as its PVID, egress untagged",
            plan.access
        )));
    }
    for &t in &plan.trunk {
        if !find(t).is_some_and(|v| !v.pvid && !v.untagged) {
            return Err(CniError::internal(format!(
                "interface {name} lacks tagged VLAN {t}"
            )));
        }
    }
    if plan.strips_defaults()
        && let Some(extra) = have
            .iter()
            .find(|v| v.vid != plan.access && plan.trunk.binary_search(&v.vid).is_err())
    {
        return Err(CniError::internal(format!(
            "interface {name} has VLAN {} although preserveDefaultVlan is false",
            extra.vid
        )));
    }
    Ok(())
}

/// CHECK: the access VLAN's gateway interface exists and holds `gateways`.
pub fn verify_gateway_if(nl: &Netlink, name: &str, gateways: &[IpNetwork]) -> Result<(), CniError> {
    let link = nl
        .link_by_name(name)
        .map_err(|e| nl_err(format!("looking up {name}"), e))?
        .ok_or_else(|| CniError::internal(format!("VLAN gateway interface {name} not found")))?;
    let addrs = nl
        .addrs(link.index)
        .map_err(|e| nl_err(format!("listing the addresses of {name}"), e))?;
    for gw in gateways {
        if !addrs.iter().any(|(a, _)| a == gw) {
            return Err(CniError::internal(format!(
                "VLAN gateway interface {name} lacks its address {gw}"
            )));
        }
    }
    Ok(())
}
