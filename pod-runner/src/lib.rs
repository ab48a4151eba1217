//! pod-runner: a mini kubelet for one pod. This library holds the parts
//! node-sync will reuse; so far the CNI runtime side (libcni's job).

pub mod cni;
pub mod containerd;
