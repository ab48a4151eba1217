//! Results: one model for every version, printed in the layout of the version
//! the config asked for and parsed from any version (prevResult, IPAM output).
//!
//! Conversions follow the reference: 1.x to 0.4 adds `ips[].version`; to 0.2
//! keeps the first address of each family and attaches routes to the family
//! of their destination. Anything a layout can hold survives a round trip.

pub mod cidr;
mod wire;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};
use crate::version::{ResultFamily, SpecVersion};
use wire::*;

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// 1.1.0 only.
    pub mtu: u32,
    pub sandbox: String,
    /// 1.1.0 only.
    pub socket_path: String,
    /// 1.1.0 only.
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`.
    pub interface: Option<usize>,
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(serialize_with = "cidr::ser", deserialize_with = "cidr::de")]
    pub dst: IpNetwork,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "cidr::opt_ip::ser",
        deserialize_with = "cidr::opt_ip::de"
    )]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub advmss: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<i32>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: 0,
            advmss: 0,
            priority: 0,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

fn family_of(n: &IpNetwork) -> &'static str {
    if n.is_ipv4() { "4" } else { "6" }
}

impl CniResult {
    /// The bytes to print for a config of `version`.
    pub fn to_json(&self, version: SpecVersion) -> Vec<u8> {
        let v = version.as_str().to_string();
        match version.family() {
            ResultFamily::V1 => crate::json::to_go_pretty(&self.to_v1(v)),
            ResultFamily::V04 => crate::json::to_go_pretty(&self.to_v04(v)),
            ResultFamily::Legacy => crate::json::to_go_pretty(&self.to_legacy(v)),
        }
    }

    /// The 1.0 layout labelled with `version`, whatever the version: what
    /// the reference loopback plugin prints (it builds a current result and
    /// prints it without conversion), which runtimes have long accepted.
    pub fn to_json_current_layout(&self, version: SpecVersion) -> Vec<u8> {
        crate::json::to_go_pretty(&self.to_v1(version.as_str().to_string()))
    }

    /// Parses a result of any version, e.g. a prevResult or an IPAM plugin's
    /// answer. Its own `cniVersion` decides the layout; `fallback` is used
    /// when it has none.
    pub fn parse(bytes: &[u8], fallback: SpecVersion) -> Result<Self, CniError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, format!("decoding result: {e}"))
        })?;
        Self::from_value(value, fallback)
    }

    pub fn from_value(value: serde_json::Value, fallback: SpecVersion) -> Result<Self, CniError> {
        let version = match value.get("cniVersion").and_then(|v| v.as_str()) {
            None | Some("") => fallback,
            Some(s) => SpecVersion::parse(s).ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("unsupported result version {s:?}"),
                )
            })?,
        };
        let bad = |e: serde_json::Error| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("decoding {version} result: {e}"),
            )
        };
        Ok(match version.family() {
            ResultFamily::V1 => Self::from_v1(serde_json::from_value(value).map_err(bad)?),
            ResultFamily::V04 => Self::from_v04(serde_json::from_value(value).map_err(bad)?),
            ResultFamily::Legacy => Self::from_legacy(serde_json::from_value(value).map_err(bad)?),
        })
    }

    fn to_v1(&self, cni_version: String) -> ResultV1 {
        ResultV1 {
            cni_version,
            interfaces: self
                .interfaces
                .iter()
                .map(|i| InterfaceV1 {
                    name: i.name.clone(),
                    mac: i.mac.clone(),
                    mtu: i.mtu,
                    sandbox: i.sandbox.clone(),
                    socket_path: i.socket_path.clone(),
                    pci_id: i.pci_id.clone(),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| IpConfigV1 {
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    fn from_v1(r: ResultV1) -> Self {
        Self {
            interfaces: r
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    mtu: i.mtu,
                    sandbox: i.sandbox,
                    socket_path: i.socket_path,
                    pci_id: i.pci_id,
                })
                .collect(),
            ips: r
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: r.routes,
            dns: r.dns,
        }
    }

    fn to_v04(&self, cni_version: String) -> ResultV04 {
        ResultV04 {
            cni_version,
            interfaces: self
                .interfaces
                .iter()
                .map(|i| InterfaceV04 {
                    name: i.name.clone(),
                    mac: i.mac.clone(),
                    sandbox: i.sandbox.clone(),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| IpConfigV04 {
                    version: family_of(&ip.address).to_string(),
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: self.routes.clone(),
            dns: self.dns.clone(),
        }
    }

    fn from_v04(r: ResultV04) -> Self {
        Self {
            interfaces: r
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                    ..Interface::default()
                })
                .collect(),
            ips: r
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: r.routes,
            dns: r.dns,
        }
    }

    fn to_legacy(&self, cni_version: String) -> ResultLegacy {
        let first = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| IpConfigLegacy {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| Route::new(r.dst, r.gw))
                        .collect(),
                })
        };
        ResultLegacy {
            cni_version,
            ip4: first(true),
            ip6: first(false),
            dns: self.dns.clone(),
        }
    }

    fn from_legacy(r: ResultLegacy) -> Self {
        let mut out = Self {
            dns: r.dns,
            ..Self::default()
        };
        for ipc in [r.ip4, r.ip6].into_iter().flatten() {
            out.ips.push(IpConfig {
                interface: None,
                address: ipc.ip,
                gateway: ipc.gateway,
            });
            out.routes.extend(ipc.routes);
        }
        out
    }
}

#[cfg(test)]
mod tests;
