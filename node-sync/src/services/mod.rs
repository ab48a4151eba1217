//! ClusterIP Services: the ports to program, from Services and their
//! EndpointSlices (Endpoints as a fallback), and the backends that program
//! them.

pub mod backend;
#[cfg(test)]
mod fake;
pub mod ipvs;
pub mod model;
pub mod nft;
pub mod nft_gen;
mod nft_read;
pub mod objects;
pub mod reconciler;

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One service port: the VIP, its port and protocol, and the ready
/// endpoints (sorted; empty means connections are rejected).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub endpoints: Vec<SocketAddr>,
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Proto, ServicePort};

    pub fn sp(vip: &str, port: u16, proto: Proto, eps: &[&str]) -> ServicePort {
        ServicePort {
            vip: vip.parse().expect("vip"),
            port,
            proto,
            endpoints: eps.iter().map(|e| e.parse().expect("ep")).collect(),
        }
    }

    /// The tutorial's web-service with web-002 and web-001.
    pub fn tutorial() -> ServicePort {
        sp(
            "10.254.10.128",
            80,
            Proto::Tcp,
            &["10.244.1.2:8080", "10.244.2.2:8080"],
        )
    }
}
