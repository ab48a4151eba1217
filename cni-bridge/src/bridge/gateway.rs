//! Gateway addresses for the bridge and default routes, from an IPAM result
//! (the reference's calcGateways).

use std::net::IpAddr;

use cni_protocol::{CniError, CniResult, Route};
use ipnetwork::IpNetwork;

use super::config::NetConf;

/// Fills in each IP's gateway and interface index, adds default routes for
/// `isDefaultGateway`, and returns the addresses the bridge needs.
pub fn calc(result: &mut CniResult, conf: &NetConf) -> Result<Vec<IpNetwork>, CniError> {
    let mut gws = Vec::new();
    let mut routes = Vec::new();
    for ip in result.ips.iter_mut() {
        // Every address belongs to the container interface, index 2.
        ip.interface = Some(2);
        if conf.is_gateway && ip.gateway.is_none() {
            ip.gateway = Some(next_ip(ip.address.network()));
        }
        if !conf.is_gateway {
            continue;
        }
        let Some(gw) = ip.gateway else { continue };
        if let Ok(net) = IpNetwork::new(gw, ip.address.prefix())
            && !gws.contains(&net)
        {
            gws.push(net);
        }
        if conf.is_default_gateway {
            let default = match gw {
                IpAddr::V4(_) => "0.0.0.0/0",
                IpAddr::V6(_) => "::/0",
            };
            let default: IpNetwork = default
                .parse()
                .map_err(|e| CniError::internal(format!("{e}")))?;
            let mut present = false;
            for r in result.routes.iter().chain(routes.iter()) {
                if r.dst == default {
                    match r.gw {
                        Some(g) if g != gw => {
                            return Err(CniError::internal(format!(
                                "isDefaultGateway ineffective because IPAM sets default route via {g:?}"
                            )));
                        }
                        _ => present = true,
                    }
                }
            }
            if !present {
                routes.push(Route::new(default, Some(gw)));
            }
        }
    }
    result.routes.extend(routes);
    Ok(gws)
}

fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
    }
}
