//! The backends that program Services, behind one trait the Services
//! reconciler drives ([`ServicesBackend`], as kube-proxy's Proxier and
//! netavark's firewall driver): nftables and IPVS, picked by
//! `--proxy-mode` ([`Backend`]), and a fake in the unit tests.

use std::future::Future;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::ServicePort;
use super::ipvs::{IpvsBackend, IpvsBackendError};
use super::nft::{self, NftError};
use super::nft_gen::generation;
use crate::blocking::{self, BlockingError};
use crate::config::ProxyMode;

/// How long one `nft` may run before it is killed: a full write of 10,000
/// Services takes about a second, so this is a hung `nft`, and the sync
/// is retried rather than waited for.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(15);
/// What the caller waits for a blocking step at most (the tools under it
/// are killed at their own, shorter deadline).
const STEP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("ipvs: {0}")]
    Ipvs(#[from] IpvsBackendError),
    #[error(transparent)]
    Blocking(#[from] BlockingError),
    /// From a backend outside this module (the tests' fake).
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// A step that ran past its deadline (a tool killed, a call abandoned).
    pub fn is_timeout(&self) -> bool {
        match self {
            BackendError::Nft(e) => e.is_timeout(),
            BackendError::Ipvs(e) => e.is_timeout(),
            BackendError::Blocking(e) => e.is_timeout(),
            BackendError::Other(_) => false,
        }
    }
}

/// What the Services reconciler needs of a backend. Every method may
/// block on the kernel or a tool internally, but not the async worker:
/// the returned futures are `Send` and do blocking work off it.
pub trait ServicesBackend: Send {
    fn name(&self) -> &'static str;

    /// Removes what the other proxy mode left, so that two backends never
    /// both DNAT the VIPs; `true` when something was removed.
    fn take_over(&mut self) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// What the next apply may build on, given `last`, what was applied:
    /// the periodic check for changes made by others. `Ok(None)`: the
    /// next apply reads or rewrites in full.
    fn recheck(
        &mut self,
        last: Option<Vec<ServicePort>>,
    ) -> impl Future<Output = Result<Option<Vec<ServicePort>>, BackendError>> + Send;

    /// Programs `want`; `prev`, what is known to be programmed, lets the
    /// backend change only what differs.
    fn apply(
        &mut self,
        want: &[ServicePort],
        prev: Option<&[ServicePort]>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
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

/// `nft` work on the blocking pool, `nft` itself killed at [`NFT_TIMEOUT`].
async fn nft_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, NftError> + Send + 'static,
) -> Result<T, BackendError> {
    Ok(blocking::run(what, STEP_LIMIT, f).await??)
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
                let read = nft_blocking("nft list", || nft::read_within(None, NFT_TIMEOUT)).await?;
                Ok(read.map(|p| p.ports))
            }
            Backend::Ipvs(b) => Ok(b.programmed().await?),
        }
    }
}

impl ServicesBackend for Backend {
    fn name(&self) -> &'static str {
        Backend::name(self)
    }

    async fn take_over(&mut self) -> Result<bool, BackendError> {
        match self {
            Backend::Nftables { .. } => {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(IpvsBackendError::from)?;
                let conn = tokio::spawn(conn);
                let removed = super::ipvs::remove(&handle).await;
                conn.abort();
                Ok(removed?)
            }
            Backend::Ipvs(_) => nft_blocking("nft delete table", || nft::remove(NFT_TIMEOUT)).await,
        }
    }

    /// nftables reads the table back only when some transaction was
    /// committed since (the ruleset generation moved), and builds only on
    /// a table in exactly its own shape (`None`: the next apply rewrites
    /// it whole); `None` for IPVS, whose next sync then reads the kernel
    /// in full.
    async fn recheck(
        &mut self,
        last: Option<Vec<ServicePort>>,
    ) -> Result<Option<Vec<ServicePort>>, BackendError> {
        let Backend::Nftables { known, .. } = self else {
            return Ok(None);
        };
        let now = generation().ok();
        if last.is_some() && known.is_some() && now == *known {
            return Ok(last);
        }
        // `now` was read before the table: a change made while it is
        // read shows at the next check.
        *known = None;
        match nft_blocking("nft list", || nft::read_within(None, NFT_TIMEOUT)).await? {
            Some(p) if p.clean => {
                *known = now;
                Ok(Some(p.ports))
            }
            _ => Ok(None),
        }
    }

    /// nftables falls back to a whole rewrite, IPVS to a sync read from
    /// the kernel, when the kernel is not what `prev` says.
    async fn apply(
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
                let want = want.to_vec();
                nft_blocking("nft -f", move || {
                    if let Some(script) = script {
                        match nft::apply(&script, NFT_TIMEOUT) {
                            Ok(()) => return Ok(()),
                            // A hung nft is not retried in full here: the
                            // caller backs off.
                            Err(e) if e.is_timeout() => return Err(e),
                            Err(e) => tracing::warn!(
                                "services: incremental update failed ({e}); rewriting the table"
                            ),
                        }
                    }
                    nft::apply(&nft::render(&want, cidr), NFT_TIMEOUT)
                })
                .await?;
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
