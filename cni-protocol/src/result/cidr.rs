//! Addresses the way the reference writes them: `ip/prefix` keeping host bits
//! (`10.1.0.5/16`), plain IPs, and Go's text for each.

use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Parses `ip/prefix`. Unlike `IpNetwork::from_str` a prefix is required,
/// as Go's `net.ParseCIDR` requires one.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
    let ip = IpAddr::from_str(ip).map_err(|_| format!("invalid CIDR address: {s}"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("invalid CIDR address: {s}"))?;
    IpNetwork::new(ip, prefix).map_err(|_| format!("invalid CIDR address: {s}"))
}

pub fn format_cidr(n: &IpNetwork) -> String {
    format!("{}/{}", n.ip(), n.prefix())
}

pub fn ser<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_cidr(n))
}

pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
    let s = String::deserialize(d)?;
    parse_cidr(&s).map_err(D::Error::custom)
}

/// `Option<IpAddr>` where Go writes nothing for a nil IP and reads `""` as nil.
pub mod opt_ip {
    use super::*;

    pub fn ser<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.serialize_str(&ip.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => IpAddr::from_str(s)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("invalid IP address: {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_host_bits_and_requires_prefix() {
        let n = parse_cidr("10.1.0.5/16").expect("ok");
        assert_eq!(format_cidr(&n), "10.1.0.5/16");
        assert!(parse_cidr("10.1.0.5").is_err());
        assert!(parse_cidr("10.1.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
        assert_eq!(
            format_cidr(&parse_cidr("fd00::1/64").expect("v6")),
            "fd00::1/64"
        );
    }
}
