//! The runtime side of CNI, libcni's job, on cni-protocol's types: network
//! configs loaded from a conf dir with libcni's rules.

pub mod conf;

pub use conf::{ConfError, Loaded, NetworkConfigList, PluginConf, Skipped, load_network};
