//! The JSON shape of each result family, field for field and in the reference's
//! order, so what we print is what the Go types print.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::cidr;
use super::{Dns, Route};

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// 1.0.0 / 1.1.0.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultV1 {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfigV1>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InterfaceV1 {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IpConfigV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(serialize_with = "cidr::ser", deserialize_with = "cidr::de")]
    pub address: IpNetwork,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "cidr::opt_ip::ser",
        deserialize_with = "cidr::opt_ip::de"
    )]
    pub gateway: Option<IpAddr>,
}

/// 0.3.0 / 0.3.1 / 0.4.0.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultV04 {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceV04>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfigV04>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InterfaceV04 {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IpConfigV04 {
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(serialize_with = "cidr::ser", deserialize_with = "cidr::de")]
    pub address: IpNetwork,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "cidr::opt_ip::ser",
        deserialize_with = "cidr::opt_ip::de"
    )]
    pub gateway: Option<IpAddr>,
}

/// 0.1.0 / 0.2.0.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultLegacy {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip4: Option<IpConfigLegacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpConfigLegacy>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IpConfigLegacy {
    #[serde(serialize_with = "cidr::ser", deserialize_with = "cidr::de")]
    pub ip: IpNetwork,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "cidr::opt_ip::ser",
        deserialize_with = "cidr::opt_ip::de"
    )]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}
