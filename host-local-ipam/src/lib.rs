//! host-local IPAM: hands out addresses from configured ranges and records
//! each lease as a file, in the reference plugin's on-disk format.

pub mod allocator;
pub mod config;
pub mod dns;
pub mod error;
pub mod plugin;
pub mod range;
pub mod store;

pub use plugin::HostLocal;
