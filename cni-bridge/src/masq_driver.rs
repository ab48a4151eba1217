//! The bridge's two masquerade backends behind one trait, as netavark's
//! firewall driver: the plugin says which container's addresses to
//! masquerade on which network; a driver programs it with its tool
//! (`iptables-restore` in [`crate::masq`], `nft` in [`crate::masq_nft`]).
//! The trait is also the seam for a fake in unit tests.

use ipnetwork::IpNetwork;

use crate::bridge::config::MasqBackend;
use crate::{masq, masq_nft};

/// What a backend's tool said. Shown as the tool's own error, so the
/// plugin's messages are those of the backend it runs.
#[derive(Debug, thiserror::Error)]
pub enum MasqDriverError {
    #[error(transparent)]
    Iptables(#[from] masq::MasqError),
    #[error(transparent)]
    Nftables(#[from] crate::nft::NftError),
}

/// One masquerade backend. `network` and `container_id` name the rules
/// (their chain is derived from both, so DEL finds them without the netns).
pub trait MasqDriver {
    /// The `ipMasqBackend` value that selects it.
    fn name(&self) -> &'static str;
    /// Masquerades `addrs` (one interface's), adding only what is missing.
    fn setup(
        &self,
        network: &str,
        container_id: &str,
        addrs: &[IpNetwork],
    ) -> Result<(), MasqDriverError>;
    /// Removes the rules of `addrs`, and the container's chain once no
    /// address uses it; `None`: everything of the container.
    fn teardown(
        &self,
        network: &str,
        container_id: &str,
        addrs: Option<&[IpNetwork]>,
    ) -> Result<(), MasqDriverError>;
    /// Whether the rules for `addrs` are all there (CHECK).
    fn verify(
        &self,
        network: &str,
        container_id: &str,
        addrs: &[IpNetwork],
    ) -> Result<bool, MasqDriverError>;
    /// Removes the rules of `network`'s containers not in `valid` (GC).
    fn collect_garbage(&self, network: &str, valid: &[String]) -> Result<(), MasqDriverError>;
}

/// The reference's layout: a `CNI-<hash>` chain in iptables' nat table.
pub struct Iptables;

/// `ipMasqBackend: "nftables"`: one table of our own.
pub struct Nftables;

impl MasqDriver for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }
    fn setup(&self, network: &str, id: &str, addrs: &[IpNetwork]) -> Result<(), MasqDriverError> {
        Ok(masq::setup(network, id, addrs)?)
    }
    fn teardown(
        &self,
        network: &str,
        id: &str,
        addrs: Option<&[IpNetwork]>,
    ) -> Result<(), MasqDriverError> {
        Ok(masq::teardown(network, id, addrs)?)
    }
    fn verify(
        &self,
        network: &str,
        id: &str,
        addrs: &[IpNetwork],
    ) -> Result<bool, MasqDriverError> {
        Ok(masq::verify(network, id, addrs)?)
    }
    fn collect_garbage(&self, network: &str, valid: &[String]) -> Result<(), MasqDriverError> {
        Ok(masq::collect_garbage(network, valid)?)
    }
}

impl MasqDriver for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }
    fn setup(&self, network: &str, id: &str, addrs: &[IpNetwork]) -> Result<(), MasqDriverError> {
        Ok(masq_nft::setup(network, id, addrs)?)
    }
    fn teardown(
        &self,
        network: &str,
        id: &str,
        addrs: Option<&[IpNetwork]>,
    ) -> Result<(), MasqDriverError> {
        Ok(masq_nft::teardown(network, id, addrs)?)
    }
    fn verify(
        &self,
        network: &str,
        id: &str,
        addrs: &[IpNetwork],
    ) -> Result<bool, MasqDriverError> {
        Ok(masq_nft::verify(network, id, addrs)?)
    }
    fn collect_garbage(&self, network: &str, valid: &[String]) -> Result<(), MasqDriverError> {
        Ok(masq_nft::collect_garbage(network, valid)?)
    }
}

/// The driver of a backend.
pub fn driver(backend: MasqBackend) -> &'static dyn MasqDriver {
    match backend {
        MasqBackend::Iptables => &Iptables,
        MasqBackend::Nftables => &Nftables,
    }
}
