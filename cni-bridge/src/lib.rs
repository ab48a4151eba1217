//! The `bridge` and `loopback` CNI plugins.

pub mod bridge;
pub mod loopback;
pub mod masq;
pub mod masq_driver;
pub mod masq_nft;
pub mod nft;
pub mod nl;
pub mod spoofcheck;
pub use netkit::sysctl;

/// Re-exported so `cni_bridge::netns` keeps working for callers.
pub use netkit::netns;
