//! The `bridge` plugin: a Linux bridge on the host, a veth pair per
//! attachment with the host end on the bridge, addresses from IPAM.

pub mod config;
mod gateway;
mod masquerade;
mod plugin;
mod setup;
pub mod vlan;
mod vlan_setup;

pub use plugin::Bridge;
