//! The `loopback` plugin: `lo` up on ADD, down on DEL, checked on CHECK,
//! with the reference's results. It never acts on its own network
//! namespace: a `CNI_NETNS` like `/proc/<pid>/ns/net` whose PID was
//! recycled can name the host's, and DEL would then take the host's `lo`
//! down (kubernetes#100648).

use std::path::Path;

use cni_protocol::{
    CniError, CniResult, ErrorCode, Interface, IpConfig, Plugin, Request, SpecVersion,
};
use ipnetwork::IpNetwork;

use crate::netns::{self, NetnsError};
use crate::nl::{Netlink, NlError};

pub struct Loopback;

#[derive(Debug, thiserror::Error)]
enum LoError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Netlink(#[from] NlError),
    #[error("loopback interface found with non-loopback address {0:?}")]
    NotLoopback(String),
    #[error("loopback interface is down")]
    Down,
    #[error("no loopback interface in the netns")]
    Missing,
    #[error("loopback interface lacks address {0} of the previous result")]
    AddrMissing(String),
}

impl From<LoError> for CniError {
    fn from(e: LoError) -> Self {
        CniError::internal(e.to_string())
    }
}

/// Refuses our own netns (code 4: CNI_NETNS is the problem).
fn not_own(path: &Path) -> Result<(), CniError> {
    if netns::is_own(path).map_err(LoError::from)? {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_NETNS {} is the plugin's own network namespace; refusing to touch its lo",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `lo`'s first IPv4 and IPv6 address, after checking all are loopback.
fn set_lo(path: &Path, up: bool) -> Result<(Option<IpNetwork>, Option<IpNetwork>), LoError> {
    netns::run_in(path, || -> Result<_, LoError> {
        let nl = Netlink::open()?;
        let lo = nl.link_by_name("lo")?.ok_or(LoError::Missing)?;
        if up {
            nl.set_up(lo.index)?;
        } else {
            nl.set_down(lo.index)?;
            return Ok((None, None));
        }
        let addrs = nl.addrs(lo.index)?;
        for (a, _) in &addrs {
            if !a.ip().is_loopback() {
                return Err(LoError::NotLoopback(a.ip().to_string()));
            }
        }
        let v4 = addrs.iter().map(|(a, _)| *a).find(|a| a.is_ipv4());
        let v6 = addrs.iter().map(|(a, _)| *a).find(|a| a.is_ipv6());
        Ok((v4, v6))
    })?
}

fn add(req: &Request) -> Result<CniResult, CniError> {
    let path = Path::new(&req.env.netns);
    not_own(path)?;
    let (v4, v6) = set_lo(path, true)?;
    // A chained loopback passes the previous result through.
    if let Some(prev) = &req.header.prev_result {
        return CniResult::from_value(prev.clone(), req.version);
    }
    let mut r = CniResult {
        interfaces: vec![Interface {
            name: "lo".into(),
            mac: "00:00:00:00:00:00".into(),
            sandbox: req.env.netns.clone(),
            ..Interface::default()
        }],
        ..CniResult::default()
    };
    for a in [v4, v6].into_iter().flatten() {
        r.ips.push(IpConfig {
            interface: Some(0),
            address: a,
            gateway: None,
        });
    }
    Ok(r)
}

fn del(req: &Request) -> Result<(), CniError> {
    if req.env.netns.is_empty() {
        return Ok(());
    }
    let path = Path::new(&req.env.netns);
    match netns::is_own(path) {
        // Gone already: nothing to bring down.
        Err(e) if e.is_gone() => return Ok(()),
        Err(e) => return Err(LoError::from(e).into()),
        // Succeed without acting: an error would only make the runtime
        // retry a teardown that must never happen.
        Ok(true) => {
            eprintln!(
                "loopback: CNI_NETNS {} is this process's own netns; leaving its lo alone",
                path.display()
            );
            return Ok(());
        }
        Ok(false) => {}
    }
    match set_lo(path, false) {
        Err(LoError::Netns(e)) if e.is_gone() => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// The addresses a prevResult puts on this sandbox's `lo`. The reference
/// ignores prevResult here, so one we cannot read is ignored too rather
/// than turned into a new failure.
fn expected_lo_addrs(req: &Request) -> Vec<IpNetwork> {
    let Some(prev) = &req.header.prev_result else {
        return Vec::new();
    };
    let Ok(prev) = CniResult::from_value(prev.clone(), req.version) else {
        return Vec::new();
    };
    let is_ours = |i: usize| {
        prev.interfaces.get(i).is_some_and(|itf| {
            itf.name == "lo" && (itf.sandbox.is_empty() || itf.sandbox == req.env.netns)
        })
    };
    prev.ips
        .iter()
        .filter(|ip| ip.interface.is_some_and(is_ours))
        .map(|ip| ip.address)
        .collect()
}

/// `lo` must be up and, beyond the reference (which checks only the flag),
/// carry every address the previous result reported for it.
fn check(req: &Request) -> Result<(), CniError> {
    let path = Path::new(&req.env.netns);
    not_own(path)?;
    let want = expected_lo_addrs(req);
    netns::run_in(path, || -> Result<(), LoError> {
        let nl = Netlink::open()?;
        let lo = nl.link_by_name("lo")?.ok_or(LoError::Missing)?;
        if !lo.up {
            return Err(LoError::Down);
        }
        let have: Vec<IpNetwork> = nl.addrs(lo.index)?.into_iter().map(|(a, _)| a).collect();
        if let Some(gone) = want.iter().find(|a| !have.contains(a)) {
            return Err(LoError::AddrMissing(gone.to_string()));
        }
        Ok(())
    })
    .map_err(LoError::from)??;
    Ok(())
}

impl Plugin for Loopback {
    fn about(&self) -> String {
        format!("CNI loopback plugin v{}", env!("CARGO_PKG_VERSION"))
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        add(req)
    }

    /// The reference prints its own result in the current layout for every
    /// version it is given, and converts as usual a passed-through
    /// prevResult, or its result when the config names no version (which
    /// the spec reads as 0.1.0: `ip4`/`ip6`).
    fn print_result(&self, req: &Request, result: &CniResult, version: SpecVersion) -> Vec<u8> {
        if req.header.prev_result.is_some() || req.header.cni_version.is_empty() {
            result.to_json(version)
        } else {
            result.to_json_current_layout(version)
        }
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        check(req)
    }
}
