//! The bridge plugin's network configuration, field for field the reference's.

use cni_protocol::{CniError, ErrorCode};
use serde::Deserialize;

use super::vlan::{TrunkEntry, VlanPlan};

pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    pub name: String,
    #[serde(rename = "bridge", default)]
    pub bridge: String,
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    #[serde(rename = "forceAddress", default)]
    pub force_address: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    #[serde(rename = "ipMasqBackend", default)]
    pub ip_masq_backend: Option<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    /// Signed like the reference's, so -1 gets its range message.
    #[serde(default)]
    pub vlan: i64,
    #[serde(rename = "vlanTrunk", default)]
    pub vlan_trunk: Option<Vec<TrunkEntry>>,
    /// Absent means true, as in the reference.
    #[serde(rename = "preserveDefaultVlan", default)]
    pub preserve_default_vlan: Option<bool>,
    #[serde(rename = "enabledad", default)]
    pub enable_dad: bool,
    #[serde(rename = "macspoofchk", default)]
    pub mac_spoof_check: bool,
    #[serde(rename = "disableContainerInterface", default)]
    pub disable_container_interface: bool,
    #[serde(rename = "portIsolation", default)]
    pub port_isolation: bool,
    #[serde(default)]
    pub ipam: Ipam,
    #[serde(default)]
    pub args: Args,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// `vlan`, `vlanTrunk` and `preserveDefaultVlan`, checked by [`NetConf::load`].
    #[serde(skip)]
    pub vlans: VlanPlan,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type", default)]
    pub plugin: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Args {
    #[serde(default)]
    pub cni: CniArgsSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CniArgsSection {
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub mac: Option<String>,
}

/// Which tool programs the masquerade rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Iptables,
    Nftables,
}

impl NetConf {
    /// Parses and checks the config; `cni_args_mac` is `MAC=` from CNI_ARGS.
    pub fn load(stdin: &[u8]) -> Result<Self, CniError> {
        let mut n: NetConf = cni_protocol::config::parse_typed(stdin)?;
        if n.bridge.is_empty() {
            n.bridge = DEFAULT_BRIDGE.to_string();
        }
        if n.is_default_gateway {
            n.is_gateway = true;
        }
        if n.hairpin_mode && n.promisc_mode {
            return Err(CniError::internal(
                "cannot set hairpin mode and promiscuous mode at the same time.",
            ));
        }
        // The reference's messages, as plain (code 999) errors.
        n.vlans = VlanPlan::new(n.vlan, n.vlan_trunk.as_deref(), n.preserve_default_vlan)
            .map_err(|e| CniError::internal(e.to_string()))?;
        if n.disable_container_interface && n.is_layer3() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "cannot use IPAM when disableContainerInterface flag is set",
            ));
        }
        if cni_protocol::validate::interface_name(&n.bridge).is_err() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("invalid bridge name {:?}", n.bridge),
            ));
        }
        Ok(n)
    }

    pub fn is_layer3(&self) -> bool {
        !self.ipam.plugin.is_empty()
    }

    pub fn masq_backend(&self) -> Result<MasqBackend, CniError> {
        match self.ip_masq_backend.as_deref() {
            None | Some("") | Some("iptables") => Ok(MasqBackend::Iptables),
            Some("nftables") => Ok(MasqBackend::Nftables),
            Some(other) => Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("unknown ipMasqBackend {other:?}"),
            )),
        }
    }

    /// The requested container MAC: CNI_ARGS `MAC=`, then `args.cni.mac`,
    /// then `runtimeConfig.mac` (the reference's order, last one wins).
    pub fn requested_mac(&self, cni_args_mac: Option<&str>) -> Option<String> {
        let mut mac = cni_args_mac.map(str::to_string);
        if let Some(m) = &self.args.cni.mac {
            mac = Some(m.clone());
        }
        if let Some(m) = &self.runtime_config.mac {
            mac = Some(m.clone());
        }
        mac
    }
}
