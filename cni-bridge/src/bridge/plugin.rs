//! ADD, DEL, CHECK, GC and STATUS of the bridge plugin.

use std::path::Path;

use cni_protocol::args::CniArgs;
use cni_protocol::{CniError, CniResult, ErrorCode, Interface, Plugin, Request};
use cni_runtime::ipam;
use ipnetwork::IpNetwork;

use crate::netns;
use crate::nl::{Netlink, format_mac};
use crate::spoofcheck;

use super::config::NetConf;
use super::masquerade::{self, Masquerade};
use super::{gateway, setup, vlan_setup};
use setup::{nl_err, ns_err};

pub struct Bridge;

fn load(req: &Request) -> Result<NetConf, CniError> {
    let conf = NetConf::load(&req.stdin)?;
    cni_args(req)?;
    conf.masq_backend()?;
    // `<bridge>.<vlan>` must be a valid name before anything is made; the
    // reference finds out halfway through its ADD.
    if conf.is_layer3()
        && conf.is_gateway
        && let Some(gw_if) = conf.vlans.gateway_ifname(&conf.bridge)
        && cni_protocol::validate::interface_name(&gw_if).is_err()
    {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!(
                "bridge name {:?} too long for the VLAN gateway interface {gw_if:?}",
                conf.bridge
            ),
        ));
    }
    Ok(conf)
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::internal(e.to_string())
}

/// `CNI_ARGS` as the reference's bridge reads them on every command: `MAC`
/// is its one key, and any other is refused unless `IgnoreUnknown` is set.
fn cni_args(req: &Request) -> Result<CniArgs, CniError> {
    let args = CniArgs::parse(&req.env.args)?;
    args.check_known(&["MAC"])?;
    Ok(args)
}

/// What an ADD made so far, undone in reverse when a later step fails.
#[derive(Default)]
struct Undo {
    host_veth: Option<String>,
    bridge: Option<u32>,
    /// A bridge that existed without VLAN filtering, turned on by this call.
    vlan_filtering: Option<u32>,
    /// The access VLAN's gateway interface, made by this call.
    vlan_gateway: Option<u32>,
    ipam: bool,
    masq: bool,
    spoof: bool,
}

impl Undo {
    fn run(self, nl: &Netlink, conf: &NetConf, req: &Request) {
        if self.spoof {
            let _ = spoofcheck::teardown(&req.env.container_id, &req.env.ifname);
        }
        if self.masq
            && let Ok(Some(m)) = Masquerade::of(conf, &req.env.container_id)
        {
            m.rollback();
        }
        if let Some(host) = &self.host_veth
            && let Ok(Some(l)) = nl.link_by_name(host)
        {
            let _ = nl.del_link(l.index);
        }
        if let Some(gw) = self.vlan_gateway {
            let _ = nl.del_link(gw);
        }
        if self.ipam {
            let _ = ipam::exec_del(&conf.ipam.plugin, req);
        }
        if let Some(br) = self.bridge {
            let _ = nl.del_link(br);
        } else if let Some(br) = self.vlan_filtering {
            let _ = nl.set_vlan_filtering(br, false);
        }
    }
}

fn add(req: &Request) -> Result<CniResult, CniError> {
    let conf = load(req)?;
    let mac = conf.requested_mac(cni_args(req)?.get("MAC"));
    let netns_path = Path::new(&req.env.netns);
    // Fail before touching anything when the netns is missing.
    netns::open(netns_path).map_err(ns_err)?;
    let nl = Netlink::open().map_err(|e| nl_err("netlink", e))?;
    let mut undo = Undo::default();
    match add_steps(req, &conf, mac.as_deref(), netns_path, &nl, &mut undo) {
        Ok(r) => Ok(r),
        Err(e) => {
            undo.run(&nl, &conf, req);
            Err(e)
        }
    }
}

fn add_steps(
    req: &Request,
    conf: &NetConf,
    mac: Option<&str>,
    netns_path: &Path,
    nl: &Netlink,
    undo: &mut Undo,
) -> Result<CniResult, CniError> {
    let ensured = setup::ensure_bridge(nl, conf)?;
    let br = ensured.link;
    if ensured.created {
        undo.bridge = Some(br.index);
    }
    if ensured.enabled_vlan_filtering {
        undo.vlan_filtering = Some(br.index);
    }
    let mtu = (conf.mtu > 0).then_some(conf.mtu);
    let (host, cont) = setup::create_veth(
        netns_path,
        &req.env.ifname,
        mtu,
        mac,
        !conf.disable_container_interface,
    )?;
    undo.host_veth = Some(host.clone());
    let host_link = setup::attach_host_end(nl, &host, &br, conf)?;
    if conf.mac_spoof_check {
        undo.spoof = true;
        spoofcheck::setup(&req.env.container_id, &req.env.ifname, &host, &cont.mac)
            .map_err(internal)?;
    }

    let mut result = CniResult::default();
    let mut extra_ifs = Vec::new();
    if conf.is_layer3() {
        let ipam_result = ipam::exec_add(&conf.ipam.plugin, req)?;
        undo.ipam = true;
        result.ips = ipam_result.ips;
        result.routes = ipam_result.routes;
        result.dns = ipam_result.dns;
        if result.ips.is_empty() {
            return Err(CniError::internal("IPAM plugin returned missing IP config"));
        }
        let gws = gateway::calc(&mut result, conf)?;
        setup::configure_container(netns_path, &req.env.ifname, &result, conf.enable_dad)?;
        setup::wait_oper_up(nl, host_link.index)?;
        if conf.is_gateway {
            // An access VLAN's gateway lives on `<bridge>.<vlan>`, not on
            // the bridge (the reference's layout), listed last in the result.
            let gw_if = match conf.vlans.gateway_ifname(&conf.bridge) {
                Some(name) if !gws.is_empty() => {
                    let (link, created) = vlan_setup::ensure_gateway_if(nl, &br, conf, &name)?;
                    if created {
                        undo.vlan_gateway = Some(link.index);
                    }
                    Some(link)
                }
                _ => None,
            };
            for gw in &gws {
                setup::ensure_bridge_addr(
                    nl,
                    gw_if.as_ref().unwrap_or(&br),
                    *gw,
                    conf.force_address,
                )?;
            }
            if let Some(l) = &gw_if {
                extra_ifs.push(Interface {
                    name: l.name.clone(),
                    mac: l.mac_string(),
                    ..Interface::default()
                });
            }
            setup::enable_forwarding(
                gws.iter().any(|g| g.is_ipv4()),
                gws.iter().any(|g| g.is_ipv6()),
            )?;
        }
        if let Some(m) = Masquerade::of(conf, &req.env.container_id)? {
            let addrs: Vec<IpNetwork> = result.ips.iter().map(|ip| ip.address).collect();
            // A failed setup has removed its own rules.
            m.setup(&addrs)?;
            undo.masq = true;
        }
    }
    // The bridge MAC may have changed with the first port or the address.
    let br_now = nl
        .link_by_index(br.index)
        .map_err(|e| nl_err("looking up the bridge", e))?
        .ok_or_else(|| CniError::internal("bridge vanished"))?;
    result.interfaces = vec![
        Interface {
            name: br_now.name.clone(),
            mac: br_now.mac_string(),
            ..Interface::default()
        },
        Interface {
            name: host_link.name.clone(),
            mac: format_mac(&host_link.mac),
            ..Interface::default()
        },
        Interface {
            name: cont.name,
            mac: cont.mac,
            sandbox: req.env.netns.clone(),
            ..Interface::default()
        },
    ];
    result.interfaces.extend(extra_ifs);
    Ok(result)
}

fn del(req: &Request) -> Result<(), CniError> {
    let conf = NetConf::load(&req.stdin)?;
    cni_args(req)?;
    let id = &req.env.container_id;
    // Every path below calls this once: the address and the spoof-check
    // rules do not need the netns to be released.
    let ipam_del = || {
        if conf.mac_spoof_check {
            spoofcheck::teardown(id, &req.env.ifname).map_err(internal)?;
        }
        if conf.is_layer3() {
            ipam::exec_del(&conf.ipam.plugin, req)
        } else {
            Ok(())
        }
    };
    // The backend is read only here, after the address is released: a
    // DEL with an unknown ipMasqBackend still gives the address back.
    let masq_del = |addrs: Option<&[IpNetwork]>| match Masquerade::of(&conf, id)? {
        Some(m) => m.teardown(addrs),
        None => Ok(()),
    };
    // Without a netns (or with one already gone) the interface went with
    // it; the address and the masquerade rules are still ours to release.
    if req.env.netns.is_empty() {
        ipam_del()?;
        return masq_del(None);
    }
    let netns_path = Path::new(&req.env.netns);
    match setup::container_if(netns_path, &req.env.ifname) {
        Err(e) if e.is_gone() => {
            ipam_del()?;
            masq_del(None)
        }
        Err(e) => Err(ns_err(e)),
        Ok(Err(e)) => Err(nl_err(format!("failed to look up {:?}", req.env.ifname), e)),
        Ok(Ok(None)) => {
            ipam_del()?;
            // A vanished interface leaves its addresses unknown: release
            // the chain only if no other interface still jumps to it.
            masq_del(Some(&[]))
        }
        Ok(Ok(Some((index, addrs)))) => {
            // Deleting a veth waits out an RCU grace period in the kernel;
            // the masquerade teardown runs meanwhile. The address goes back
            // to IPAM only once the interface holding it is gone.
            let (deleted, masq) = std::thread::scope(|s| {
                let deleting = s.spawn(|| setup::delete_link(netns_path, index));
                let masq = masq_del(Some(&addrs));
                (deleting.join(), masq)
            });
            match deleted {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    return Err(nl_err(format!("failed to delete {:?}", req.env.ifname), e));
                }
                Ok(Err(e)) => return Err(ns_err(e)),
                Err(_) => return Err(CniError::internal("link deletion thread panicked")),
            }
            ipam_del()?;
            masq
        }
    }
}

fn check(req: &Request) -> Result<(), CniError> {
    let conf = load(req)?;
    let prev = req
        .header
        .prev_result
        .clone()
        .ok_or_else(|| CniError::internal("Required prevResult missing"))?;
    let prev = CniResult::from_value(prev, req.version)?;
    if conf.is_layer3() {
        ipam::exec_check(&conf.ipam.plugin, req)?;
    }
    let nl = Netlink::open().map_err(|e| nl_err("netlink", e))?;
    let br = nl
        .link_by_name(&conf.bridge)
        .map_err(|e| nl_err("looking up the bridge", e))?
        .ok_or_else(|| CniError::internal(format!("failed to lookup bridge {:?}", conf.bridge)))?;
    vlan_setup::verify_bridge(&br, &conf)?;
    let gw_if = conf.vlans.gateway_ifname(&conf.bridge);
    let ifname = &req.env.ifname;
    let cont_idx = prev
        .interfaces
        .iter()
        .position(|i| &i.name == ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            CniError::internal(format!("Sandbox interface {ifname} not in prevResult"))
        })?;
    let cont = &prev.interfaces[cont_idx];
    // The access VLAN's gateway interface, when the result names it.
    if let Some(name) = gw_if.as_deref()
        && prev
            .interfaces
            .iter()
            .any(|i| i.name == name && i.sandbox.is_empty())
    {
        let gateways: Vec<IpNetwork> = prev
            .ips
            .iter()
            .filter_map(|ip| {
                ip.gateway
                    .and_then(|g| IpNetwork::new(g, ip.address.prefix()).ok())
            })
            .collect();
        vlan_setup::verify_gateway_if(&nl, name, &gateways)?;
    }
    // The host end: a port of our bridge named in prevResult, with its VLANs.
    for i in prev.interfaces.iter().filter(|i| {
        i.sandbox.is_empty() && i.name != conf.bridge && Some(i.name.as_str()) != gw_if.as_deref()
    }) {
        let link = nl
            .link_by_name(&i.name)
            .map_err(|e| nl_err("looking up the host veth", e))?
            .ok_or_else(|| CniError::internal(format!("host veth {} not found", i.name)))?;
        if link.controller != Some(br.index) {
            return Err(CniError::internal(format!(
                "interface {} not attached to bridge {}",
                i.name, conf.bridge
            )));
        }
        vlan_setup::verify_port(&nl, &link, &conf)?;
    }
    let want_ips: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|n| n == cont_idx))
        .map(|ip| ip.address)
        .collect();
    let (mac, addrs, routes) = netns::run_in(Path::new(&req.env.netns), || {
        let nl = Netlink::open()?;
        let link = nl.link_by_name(ifname)?;
        match link {
            Some(l) => Ok((
                Some(l.mac_string()),
                nl.addrs(l.index)?,
                nl.routes(l.index)?,
            )),
            None => Ok((None, Vec::new(), Vec::new())),
        }
    })
    .map_err(ns_err)?
    .map_err(|e: crate::nl::NlError| nl_err("netlink", e))?;
    let mac =
        mac.ok_or_else(|| CniError::internal(format!("Container interface {ifname} not found")))?;
    if !cont.mac.is_empty() && !mac.eq_ignore_ascii_case(&cont.mac) {
        return Err(CniError::internal(format!(
            "Interface {ifname} Mac doesn't match: {} not found",
            cont.mac
        )));
    }
    for ip in &want_ips {
        if !addrs.iter().any(|(a, _)| a == ip) {
            return Err(CniError::internal(format!(
                "Failed to match addr {ip} on interface {ifname}"
            )));
        }
    }
    for r in &prev.routes {
        if !routes.iter().any(|(dst, _)| *dst == r.dst) {
            return Err(CniError::internal(format!(
                "Failed to match route {} on interface {ifname}",
                r.dst
            )));
        }
    }
    if let Some(m) = Masquerade::of(&conf, &req.env.container_id)? {
        m.verify(&want_ips)?;
    }
    Ok(())
}

fn gc(req: &Request) -> Result<(), CniError> {
    let conf = NetConf::load(&req.stdin)?;
    if conf.ip_masq {
        let valid: Vec<String> = req
            .header
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| a.container_id.clone())
            .collect();
        masquerade::collect_garbage(&conf, &valid)?;
    }
    if conf.is_layer3() {
        ipam::exec_gc(&conf.ipam.plugin, req)?;
    }
    Ok(())
}

fn status(req: &Request) -> Result<(), CniError> {
    let conf = NetConf::load(&req.stdin)?;
    if conf.is_layer3() {
        ipam::exec_status(&conf.ipam.plugin, req)?;
    }
    Ok(())
}

impl Plugin for Bridge {
    fn about(&self) -> String {
        format!("CNI bridge plugin v{}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(req)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        status(req)
    }
}
