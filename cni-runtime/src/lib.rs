//! The runtime side of CNI, libcni's job, on cni-protocol's types: network
//! configs loaded from a conf dir with libcni's rules, the one plugin
//! executor (lookup, a deadline, both outputs drained), the result cache,
//! ADD/DEL/CHECK/GC/STATUS of a chain, and IPAM delegation for plugins.

pub mod cache;
pub mod chain;
pub mod conf;
pub mod exec;
pub mod ipam;
pub mod lookup;

pub use cache::{Cache, CacheError};
pub use chain::{ChainError, CniConfig, RuntimeConf};
pub use conf::{ConfError, Loaded, NetworkConfigList, PluginConf, Skipped, load_network};
pub use exec::{BaseEnv, ExecError, Executor, Invocation};
pub use lookup::{LookupError, find_plugin, validate_type};
