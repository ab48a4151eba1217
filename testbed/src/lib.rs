//! Test support for the workspace, not shipped: run CNI plugins the way a
//! runtime does, find the Go reference plugins, and snapshot directories so
//! two runs can be compared file by file.

pub mod api;
pub mod apiserver;
pub mod cluster;
pub mod containerd;
pub mod controlplane;
pub mod cri;
pub mod demo;
pub mod http;
pub mod image;
pub mod kubectl;
pub mod netns;
pub mod pki;
pub mod plugin;
pub mod relay;
pub mod snapshot;
pub mod testdata;
pub mod vm;

pub use netns::Netns;
pub use plugin::{Call, Outcome, reference_plugin};
pub use snapshot::{Entry, all_paths, snapshot};
