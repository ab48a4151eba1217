//! Small helpers around Linux network namespaces, shared by the CNI
//! plugins, pod-runner and the testbed.

pub mod netns;
pub mod nft;
pub mod tool;
