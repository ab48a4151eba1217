//! pod-runner: a mini kubelet for one pod. The binary is a thin CLI over
//! these modules.

pub mod api;
pub mod backoff;
pub mod cgroup;
pub mod cni;
pub mod daemon;
pub mod logs;
pub mod pod;
pub mod probe;
pub mod quantity;
pub mod runner;
pub mod spec;
pub mod state;
pub mod status;
