//! The runtime side of CNI, as libcni does it for the kubelet's runtime:
//! load the first network config in the conf dir, run its plugin chain
//! with each result passed to the next as prevResult, add loopback, cache
//! the result for DEL, and run DEL in reverse order.

mod conf;
mod exec;
mod runner;

pub use conf::{NetworkList, load_network};
pub use exec::{CniRunError, PluginCall};
pub use runner::{Attachment, Runtime};
