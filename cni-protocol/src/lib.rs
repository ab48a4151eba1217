//! The CNI protocol as the containernetworking reference speaks it: environment,
//! configuration, versions 0.1.0 to 1.1.0, results, errors and the plugin
//! skeleton. Every plugin of this project is built on it (IPAM delegation,
//! which runs a plugin, is cni-runtime's).

pub mod args;
pub mod config;
pub mod env;
pub mod error;
pub mod json;
pub mod result;
pub mod skel;
pub mod validate;
pub mod version;

pub use config::{NetConfHeader, ValidAttachment};
pub use env::{CniEnv, Command};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, Request};
pub use version::SpecVersion;
