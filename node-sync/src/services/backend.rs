//! The backend that programs Services, picked by `--proxy-mode`: one
//! interface for the agent over nftables and IPVS.

use ipnetwork::IpNetwork;

use super::ServicePort;
use super::ipvs::{IpvsBackend, IpvsBackendError};
use super::nft::{self, NftError};
use crate::config::ProxyMode;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("ipvs: {0}")]
    Ipvs(#[from] IpvsBackendError),
}

pub enum Backend {
    Nftables { cluster_cidr: IpNetwork },
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
            ProxyMode::Nftables => Some(Backend::Nftables { cluster_cidr }),
            ProxyMode::Ipvs => Some(ipvs()?),
            ProxyMode::Auto => Some(ipvs().unwrap_or(Backend::Nftables { cluster_cidr })),
        })
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
            Backend::Nftables { .. } => Ok(tokio::task::block_in_place(nft::programmed)?),
            Backend::Ipvs(b) => Ok(b.programmed().await?),
        }
    }

    /// Programs `want`. `prev`, what is known to be programmed, lets
    /// nftables change only the services that differ (falling back to a
    /// whole rewrite when the table is not what `prev` says); IPVS always
    /// compares with the kernel itself.
    pub async fn apply(
        &mut self,
        want: &[ServicePort],
        prev: Option<&[ServicePort]>,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Nftables { cluster_cidr } => {
                let cidr = *cluster_cidr;
                tokio::task::block_in_place(|| {
                    if let Some(prev) = prev {
                        let Some(script) = nft::render_changes(prev, want, cidr) else {
                            return Ok(());
                        };
                        match nft::apply(&script) {
                            Ok(()) => return Ok(()),
                            Err(e) => tracing::warn!(
                                "services: incremental update failed ({e}); rewriting the table"
                            ),
                        }
                    }
                    Ok(nft::apply(&nft::render(want, cidr))?)
                })
            }
            Backend::Ipvs(b) => {
                let done = b.apply(want).await?;
                tracing::debug!(?done, "ipvs: applied");
                Ok(())
            }
        }
    }
}
