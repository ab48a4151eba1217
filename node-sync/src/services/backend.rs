//! The backend that programs Services, picked by `--proxy-mode`: one
//! interface for the agent over nftables and IPVS.

use ipnetwork::IpNetwork;

use super::ServicePort;
use super::ipvs::{IpvsBackend, IpvsBackendError};
use super::nft::{self, NftError};
use super::nft_gen::generation;
use crate::config::ProxyMode;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("ipvs: {0}")]
    Ipvs(#[from] IpvsBackendError),
}

pub enum Backend {
    Nftables {
        cluster_cidr: IpNetwork,
        /// The ruleset generation at which the table was last known to
        /// hold what node-sync last applied or read.
        known: Option<u32>,
    },
    Ipvs(Box<IpvsBackend>),
}

impl Backend {
    /// The backend for `mode`; `None` leaves Services alone. `auto` takes
    /// IPVS when the kernel has it, else nftables.
    pub fn choose(
        mode: ProxyMode,
        cluster_cidr: IpNetwork,
        scheduler: &str,
    ) -> Result<Option<Backend>, BackendError> {
        let ipvs = || -> Result<Backend, BackendError> {
            Ok(Backend::Ipvs(Box::new(IpvsBackend::open(
                cluster_cidr,
                scheduler,
            )?)))
        };
        Ok(match mode {
            ProxyMode::None => None,
            ProxyMode::Nftables => Some(Backend::nftables(cluster_cidr)),
            ProxyMode::Ipvs => Some(ipvs()?),
            ProxyMode::Auto => Some(ipvs().unwrap_or(Backend::nftables(cluster_cidr))),
        })
    }

    fn nftables(cluster_cidr: IpNetwork) -> Backend {
        Backend::Nftables {
            cluster_cidr,
            known: None,
        }
    }

    /// Removes what the other backend left (the proxy mode was switched,
    /// or `auto` chose differently on a new kernel), so that two backends
    /// never both DNAT the VIPs. `true` when something was removed.
    pub async fn take_over(&self) -> Result<bool, BackendError> {
        match self {
            Backend::Nftables { .. } => {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(IpvsBackendError::from)?;
                let conn = tokio::spawn(conn);
                let removed = super::ipvs::remove(&handle).await;
                conn.abort();
                Ok(removed?)
            }
            Backend::Ipvs(_) => Ok(tokio::task::block_in_place(nft::remove)?),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Nftables { .. } => "nftables",
            Backend::Ipvs(_) => "ipvs",
        }
    }

    /// What is programmed now, in the model's terms; `None` when nothing
    /// of ours is there (no table, no `kube-ipvs0`).
    pub async fn programmed(&mut self) -> Result<Option<Vec<ServicePort>>, BackendError> {
        match self {
            Backend::Nftables { .. } => {
                let read = tokio::task::block_in_place(|| nft::read_in(None))?;
                Ok(read.map(|p| p.ports))
            }
            Backend::Ipvs(b) => Ok(b.programmed().await?),
        }
    }

    /// What the next apply may build on, given `last`, what node-sync
    /// applied: the periodic check for changes made by others. nftables
    /// reads the table back only when some transaction was committed
    /// since (the ruleset generation moved), and builds only on a table in
    /// exactly its own shape (`None`: the next apply rewrites it whole);
    /// `None` for IPVS, whose next sync then reads the kernel in full.
    pub async fn recheck(&mut self, last: Option<Vec<ServicePort>>) -> Option<Vec<ServicePort>> {
        let Backend::Nftables { known, .. } = self else {
            return None;
        };
        let now = generation().ok();
        if last.is_some() && known.is_some() && now == *known {
            return last;
        }
        // `now` was read before the table: a change made while it is
        // read shows at the next check.
        match tokio::task::block_in_place(|| nft::read_in(None)) {
            Ok(Some(p)) if p.clean => {
                *known = now;
                Some(p.ports)
            }
            Ok(_) => {
                *known = None;
                None
            }
            Err(e) => {
                *known = None;
                tracing::warn!("services: reading the table back: {e}");
                None
            }
        }
    }

    /// Programs `want`. `prev`, what is known to be programmed, lets both
    /// backends plan only what differs (nftables falls back to a whole
    /// rewrite, IPVS to a sync read from the kernel, when the kernel is
    /// not what `prev` says).
    pub async fn apply(
        &mut self,
        want: &[ServicePort],
        prev: Option<&[ServicePort]>,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Nftables {
                cluster_cidr,
                known,
            } => {
                let cidr = *cluster_cidr;
                let script = match prev {
                    Some(prev) => match nft::render_changes(prev, want, cidr) {
                        Some(s) => Some(s),
                        // Nothing differs: the table and `known` stand.
                        None => return Ok(()),
                    },
                    None => None,
                };
                let before = generation().ok();
                *known = None;
                tokio::task::block_in_place(|| {
                    if let Some(script) = script {
                        match nft::apply(&script) {
                            Ok(()) => return Ok(()),
                            Err(e) => tracing::warn!(
                                "services: incremental update failed ({e}); rewriting the table"
                            ),
                        }
                    }
                    nft::apply(&nft::render(want, cidr))
                })?;
                // Ours was the only transaction since `before`: the table
                // is what we wrote.
                let after = generation().ok();
                *known = before
                    .zip(after)
                    .and_then(|(b, a)| (a == b.wrapping_add(1)).then_some(a));
                Ok(())
            }
            Backend::Ipvs(b) => {
                let done = b.apply(want, prev).await?;
                tracing::debug!(?done, "ipvs: applied");
                Ok(())
            }
        }
    }
}
