//! The IPVS backend for ClusterIP Services, kube-proxy's IPVS mode as the
//! tutorial sets it up by hand: `net/ipv4/vs/conntrack=1`, the dummy
//! `kube-ipvs0` holding every VIP, the ipsets KUBE-CLUSTER-IP and
//! KUBE-LOOP-BACK, the fixed iptables chains, and one virtual server per
//! service port (scheduler `rr` unless configured) with masquerading real
//! servers.
//!
//! A full sync reads the kernel (IPVS over generic netlink, the link's
//! addresses over rtnetlink, `ipset save`, `iptables-save`), plans the
//! difference ([`plan::plan`]) and applies only that: IPVS and addresses
//! message by message, the sets in one `ipset restore`, the chains in at
//! most one `iptables-restore --noflush`. Nothing is flushed, so a
//! restart adopts what is there and live connections keep their
//! real servers. Between full syncs (the start, the 30-s resync, any
//! failure), a change is planned from what the last sync applied, so it
//! costs what it changes rather than a read of every virtual server.

pub mod genl;
pub mod link;
pub mod plan;
pub mod rules;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;
use netkit::tool::{self, ToolError};
use rtnetlink::Handle;

use self::genl::{Ipvs, IpvsError};
use self::link::LinkError;
use self::plan::{Observed, Plan};
use super::ServicePort;
use crate::blocking::{self, BlockingError};

#[derive(Debug, thiserror::Error)]
pub enum IpvsBackendError {
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("setting {key}: {source}")]
    Sysctl {
        key: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Blocking(#[from] BlockingError),
}

impl IpvsBackendError {
    /// A tool killed at its deadline, or a call abandoned at its limit.
    pub fn is_timeout(&self) -> bool {
        match self {
            IpvsBackendError::Tool(e) => e.is_timeout(),
            IpvsBackendError::Blocking(e) => e.is_timeout(),
            _ => false,
        }
    }
}

/// IPVS connections are tracked, so the nat POSTROUTING masquerade (the
/// mark and KUBE-LOOP-BACK) applies to them.
const CONNTRACK: &str = "net/ipv4/vs/conntrack";

/// How long `ipset`, `iptables-save` and `iptables-restore` may run
/// before they are killed; [`STEP_LIMIT`] bounds a whole blocking batch
/// (several tools, or the virtual servers one message at a time).
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const STEP_LIMIT: Duration = Duration::from_secs(40);

fn tool_run(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<String, ToolError> {
    tool::run_within(tool, args, input, TOOL_TIMEOUT)
}

/// The generic-netlink socket, shared with the blocking pool.
type Shared = Arc<Mutex<Ipvs>>;

fn lock(ipvs: &Shared) -> std::sync::MutexGuard<'_, Ipvs> {
    // A panic on the blocking pool leaves the socket usable: every
    // request is a whole message exchange.
    ipvs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How much one sync changed, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub services: usize,
    pub real_servers: usize,
    pub vips: usize,
    pub ipset: bool,
    pub iptables: bool,
}

pub struct IpvsBackend {
    ipvs: Shared,
    handle: Handle,
    cluster_cidr: IpNetwork,
    scheduler: String,
}

impl IpvsBackend {
    /// Fails with [`IpvsError::Unavailable`] on a kernel without IPVS.
    /// Needs a tokio runtime (the rtnetlink connection runs on it).
    pub fn open(cluster_cidr: IpNetwork, scheduler: &str) -> Result<Self, IpvsBackendError> {
        let ipvs = Ipvs::open()?;
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(IpvsBackend {
            ipvs: Arc::new(Mutex::new(ipvs)),
            handle,
            cluster_cidr,
            scheduler: scheduler.to_string(),
        })
    }

    /// The kernel's side: our VIPs, our virtual servers, the sets. With
    /// no `kube-ipvs0` nothing is ours.
    async fn observe(&mut self) -> Result<(Option<u32>, link::Addrs, Observed), IpvsBackendError> {
        let (index, addrs) = link::state(&self.handle).await?;
        let vips: BTreeSet<_> = addrs.keys().copied().collect();
        let mut obs = Observed {
            vips,
            ..Observed::default()
        };
        let ipvs = Arc::clone(&self.ipvs);
        let obs = blocking::run("reading IPVS and ipsets", STEP_LIMIT, move || {
            let mut ipvs = lock(&ipvs);
            for vs in ipvs.services()? {
                if !obs.vips.contains(&vs.addr) {
                    continue;
                }
                let dests = ipvs.dests(&vs)?;
                obs.services
                    .insert((vs.addr, vs.proto, vs.port), (vs.scheduler, dests));
            }
            let save = tool_run("ipset", &["save"], None)?;
            (obs.sets, obs.sets_exist) = rules::parse_sets(&save);
            Ok::<_, IpvsBackendError>(obs)
        })
        .await??;
        Ok((index, addrs, obs))
    }

    /// What is programmed, in the model's terms; `None` without
    /// `kube-ipvs0`.
    pub async fn programmed(&mut self) -> Result<Option<Vec<ServicePort>>, IpvsBackendError> {
        let (index, _, obs) = self.observe().await?;
        Ok(index.map(|_| plan::programmed(&obs)))
    }

    /// Makes the kernel program `want`, changing only what differs:
    /// from `prev`, what the last sync applied, when given (falling back
    /// to a full sync if that fails), else from what the kernel holds.
    pub async fn apply(
        &mut self,
        want: &[ServicePort],
        prev: Option<&[ServicePort]>,
    ) -> Result<Applied, IpvsBackendError> {
        if let Some(prev) = prev {
            match self.apply_from(want, Some(prev)).await {
                Ok(done) => return Ok(done),
                Err(e) => tracing::warn!("ipvs: incremental sync failed ({e}); syncing in full"),
            }
        }
        self.apply_from(want, None).await
    }

    async fn apply_from(
        &mut self,
        want: &[ServicePort],
        prev: Option<&[ServicePort]>,
    ) -> Result<Applied, IpvsBackendError> {
        blocking::run("sysctl", STEP_LIMIT, || sysctl_on(CONNTRACK)).await??;
        let (index, mut addrs, obs) = match prev {
            Some(prev) => {
                let (index, addrs) = link::state(&self.handle).await?;
                let vips = addrs.keys().copied().collect();
                (index, addrs, plan::assumed(prev, &self.scheduler, vips))
            }
            None => self.observe().await?,
        };
        let full = prev.is_none();
        let index = match index {
            Some(i) => i,
            None => link::ensure(&self.handle).await?,
        };
        let p: Plan = plan::plan(want, &self.scheduler, &obs);
        let mut done = Applied::default();
        let cidr = self.cluster_cidr;
        // Sets first: the iptables rules name them.
        let ipset = p.ipset.clone();
        (done.ipset, done.iptables) = blocking::run("ipset and iptables", STEP_LIMIT, move || {
            let mut did = (false, false);
            if let Some(script) = &ipset {
                tool_run("ipset", &["restore"], Some(script))?;
                did.0 = true;
            }
            // The fixed chains change only when someone else changed
            // them: checked on full syncs.
            if full {
                let save = tool_run("iptables-save", &[], None)?;
                if let Some(script) = rules::iptables_script(&save, cidr) {
                    tool_run("iptables-restore", &["--noflush"], Some(&script))?;
                    did.1 = true;
                }
            }
            Ok::<_, IpvsBackendError>(did)
        })
        .await??;
        // The VIP is local before its virtual server takes traffic.
        for ip in &p.add_vips {
            link::add(&self.handle, index, *ip).await?;
        }
        let ipvs = Arc::clone(&self.ipvs);
        let (del_services, add_services) = (p.del_services.clone(), p.add_services.clone());
        let (del_dests, add_dests) = (p.del_dests.clone(), p.add_dests.clone());
        blocking::run("programming IPVS", STEP_LIMIT, move || {
            let mut ipvs = lock(&ipvs);
            for v in &del_services {
                ipvs.del_service(v).or_else(gone)?;
            }
            for v in &add_services {
                ipvs.add_service(v).or_else(exists)?;
            }
            for (v, r) in &del_dests {
                ipvs.del_dest(v, r).or_else(gone)?;
            }
            for (v, r) in &add_dests {
                ipvs.add_dest(v, r).or_else(exists)?;
            }
            Ok::<_, IpvsBackendError>(())
        })
        .await??;
        for ip in &p.del_vips {
            if let Some(m) = addrs.remove(ip) {
                link::del(&self.handle, m).await?;
            }
        }
        done.services = p.add_services.len() + p.del_services.len();
        done.real_servers = p.add_dests.len() + p.del_dests.len();
        done.vips = p.add_vips.len() + p.del_vips.len();
        Ok(done)
    }
}

/// Removes what IPVS mode programmed, when another proxy mode takes over:
/// our virtual servers (those whose VIP is on `kube-ipvs0`), the fixed
/// chains and their jumps, the two sets, and `kube-ipvs0` itself. Without
/// `kube-ipvs0` nothing here is ours and nothing is touched. `true` when
/// something was removed.
pub async fn remove(handle: &Handle) -> Result<bool, IpvsBackendError> {
    let (Some(index), addrs) = link::state(handle).await? else {
        return Ok(false);
    };
    let vips: BTreeSet<_> = addrs.into_keys().collect();
    blocking::run("removing IPVS mode", STEP_LIMIT, move || {
        // A kernel without IPVS has no virtual servers to remove.
        if let Ok(mut ipvs) = Ipvs::open() {
            for vs in ipvs.services()? {
                if vips.contains(&vs.addr) {
                    ipvs.del_service(&vs).or_else(gone)?;
                }
            }
        }
        // The chains name the sets: they go first.
        let save = tool_run("iptables-save", &[], None)?;
        if let Some(script) = rules::removal_script(&save) {
            tool_run("iptables-restore", &["--noflush"], Some(&script))?;
        }
        let names = tool_run("ipset", &["list", "-n"], None)?;
        let destroy: String = [rules::CLUSTER_IP_SET, rules::LOOP_BACK_SET]
            .iter()
            .filter(|s| names.lines().any(|l| l.trim() == **s))
            .map(|s| format!("destroy {s}\n"))
            .collect();
        if !destroy.is_empty() {
            tool_run("ipset", &["restore"], Some(&destroy))?;
        }
        Ok::<_, IpvsBackendError>(())
    })
    .await??;
    link::delete(handle, index).await?;
    Ok(true)
}

fn errno(e: &IpvsError) -> Option<i32> {
    match e {
        IpvsError::Kernel { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Deleting what is already gone is done.
fn gone(e: IpvsError) -> Result<(), IpvsError> {
    match errno(&e) {
        Some(libc::ESRCH | libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

/// Adding what is already there is done.
fn exists(e: IpvsError) -> Result<(), IpvsError> {
    match errno(&e) {
        Some(libc::EEXIST) => Ok(()),
        _ => Err(e),
    }
}

fn sysctl_on(key: &'static str) -> Result<(), IpvsBackendError> {
    if netkit::sysctl::get(key).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    netkit::sysctl::set(key, "1").map_err(|source| IpvsBackendError::Sysctl { key, source })
}

/// Whether this kernel has IPVS (resolving the family loads `ip_vs`
/// where modules can be loaded).
pub fn available() -> bool {
    Ipvs::open().is_ok()
}
