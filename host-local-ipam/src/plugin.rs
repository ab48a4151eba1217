//! The host-local commands on top of the config, the allocator and the store.

use std::collections::HashSet;

use cni_protocol::{CniError, CniResult, IpConfig, Plugin, Request};
use ipnetwork::IpNetwork;

use crate::allocator::{self, Allocation};
use crate::config::IpamConfig;
use crate::dns::parse_resolv_conf;
use crate::error::IpamError;
use crate::store::Store;

pub struct HostLocal;

fn load(req: &Request) -> Result<IpamConfig, IpamError> {
    IpamConfig::load(&req.stdin, &req.env.args, req.version)
}

fn add(req: &Request) -> Result<CniResult, IpamError> {
    let conf = load(req)?;
    let mut result = CniResult::default();
    if let Some(path) = &conf.resolv_conf {
        let text = std::fs::read_to_string(path).map_err(|source| IpamError::ResolvConf {
            path: path.clone(),
            source,
        })?;
        result.dns = parse_resolv_conf(&text);
    }
    let (id, ifname) = (req.env.container_id.as_str(), req.env.ifname.as_str());
    let mut store = Store::open(&conf.data_dir, &conf.network)?;
    let mut done: Vec<Allocation> = Vec::new();
    for (idx, set) in conf.range_sets.iter().enumerate() {
        let requested = conf.requested[idx].map(|r| r.ip);
        match allocator::allocate(&mut store, set, idx, id, ifname, requested) {
            Ok(a) => done.push(a),
            Err(e) => {
                // Give back only what this call took; the index is then
                // committed so it matches the directory.
                for a in &done {
                    store.release_ip(id, ifname, a.ip)?;
                }
                store.commit()?;
                return Err(IpamError::Allocation(format!(
                    "failed to allocate for range {idx}: {e}"
                )));
            }
        }
    }
    store.commit()?;
    for a in done {
        let address = IpNetwork::new(a.ip, a.prefix)
            .map_err(|e| IpamError::Allocation(format!("bad prefix for {}: {e}", a.ip)))?;
        result.ips.push(IpConfig {
            interface: None,
            address,
            gateway: Some(a.gateway),
        });
    }
    result.routes = conf.routes.unwrap_or_default();
    Ok(result)
}

fn del(req: &Request) -> Result<(), IpamError> {
    let conf = load(req)?;
    let mut store = Store::open(&conf.data_dir, &conf.network)?;
    store.release_by_id(&req.env.container_id, &req.env.ifname)?;
    store.commit()?;
    Ok(())
}

fn check(req: &Request) -> Result<(), IpamError> {
    let conf = load(req)?;
    let mut store = Store::open(&conf.data_dir, &conf.network)?;
    let found = !store
        .get_by_id(&req.env.container_id, &req.env.ifname)?
        .is_empty();
    store.commit()?;
    if found {
        Ok(())
    } else {
        Err(IpamError::NotFound(req.env.container_id.clone()))
    }
}

/// Releases every lease whose attachment the runtime no longer lists.
fn gc(req: &Request) -> Result<(), IpamError> {
    let conf = load(req)?;
    let valid: HashSet<(String, String)> = req
        .header
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let valid_ids: HashSet<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    let mut store = Store::open(&conf.data_dir, &conf.network)?;
    for lease in store.all_leases()? {
        let keep = match &lease.ifname {
            Some(ifname) => valid.contains(&(lease.id.clone(), ifname.clone())),
            None => valid_ids.contains(lease.id.as_str()),
        };
        if !keep {
            store.release_lease(&lease)?;
        }
    }
    store.commit()?;
    Ok(())
}

/// Ready while every range set still has a free address (code 50 otherwise).
fn status(req: &Request) -> Result<(), CniError> {
    let conf = load(req)?;
    let mut store = Store::open(&conf.data_dir, &conf.network).map_err(IpamError::from)?;
    let leases = store.all_leases().map_err(IpamError::from)?;
    store.commit().map_err(IpamError::from)?;
    for (idx, set) in conf.range_sets.iter().enumerate() {
        let used = leases.iter().filter(|l| set.contains(l.ip)).count() as u128;
        if used >= set.capacity() {
            return Err(CniError::new(
                cni_protocol::ErrorCode::PluginNotAvailable,
                format!("no free address in range set {idx} ({})", set.describe()),
            ));
        }
    }
    Ok(())
}

impl Plugin for HostLocal {
    fn about(&self) -> String {
        format!("CNI host-local plugin v{}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add(req).map_err(CniError::from)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(req).map_err(CniError::from)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check(req).map_err(CniError::from)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        gc(req).map_err(CniError::from)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        status(req)
    }
}
