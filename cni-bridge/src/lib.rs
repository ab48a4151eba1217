//! The `bridge` and `loopback` CNI plugins.

pub mod bridge;
pub mod loopback;
pub mod masq;
pub mod masq_nft;
pub mod netns;
pub mod nft;
pub mod nl;
pub mod spoofcheck;
pub mod sysctl;
