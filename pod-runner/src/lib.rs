//! pod-runner: a mini kubelet for one pod. The binary is a thin CLI over
//! these modules.

pub mod api;
pub mod cgroup;
pub mod cni;
// node-sync's old path to the client, until it uses containerd-api itself.
pub use containerd_api as containerd;
pub mod logs;
pub mod netns;
pub mod pod;
pub mod quantity;
pub mod runner;
pub mod spec;
pub mod state;
pub mod status;
