//! Node primitives shared by the CNI plugins, pod-runner, node-sync and the
//! testbed: network namespaces, `/proc/sys` knobs, and running a child
//! process (system tools, `nft`, CNI plugins) with a deadline.

pub mod netns;
pub mod nft;
pub mod pinned;
pub mod process;
pub mod sysctl;
pub mod tool;
