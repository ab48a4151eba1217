//! node-sync: the node agent. Registers the Node and keeps its status and
//! Lease fresh; routes to other nodes' podCIDRs (host-gw).

pub mod access;
pub mod agent;
pub mod blocking;
pub mod config;
pub mod http;
pub mod ident;
pub mod kubeclient;
pub mod machine;
pub mod metrics;
pub mod nodestatus;
pub mod pace;
pub mod routes;
pub mod services;
pub mod steps;
pub mod watch;
