//! The `bridge` and `loopback` CNI plugins.

pub mod bridge;
pub mod masq;
pub mod netns;
pub mod nl;
pub mod sysctl;
