//! Ranges and range sets with the reference's defaults: the gateway is the
//! subnet address + 1, the range runs from there to the last address
//! (broadcast - 1 for IPv4), and everything is checked for sanity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::error::IpamError;

/// An address as a number, so ranges can be walked and compared.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

pub fn next_ip(ip: IpAddr) -> IpAddr {
    from_u128(ip, to_u128(ip).wrapping_add(1))
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// One `{subnet, rangeStart, rangeEnd, gateway}` after canonicalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The network address: host bits are refused, as by the reference.
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// The raw fields of a range, as the config gives them.
#[derive(Debug, Clone, Default)]
pub struct RangeSpec {
    pub subnet: Option<IpNetwork>,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

fn in_subnet(subnet: &IpNetwork, ip: IpAddr) -> bool {
    same_family(subnet.ip(), ip) && subnet.contains(ip)
}

fn last_ip(subnet: &IpNetwork) -> IpAddr {
    match subnet {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()).wrapping_sub(1))),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.ip()) | mask))
        }
    }
}

impl Range {
    pub fn canonicalize(spec: &RangeSpec) -> Result<Self, IpamError> {
        let subnet = spec
            .subnet
            .ok_or_else(|| IpamError::InvalidRange("missing subnet".into()))?;
        let max = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > max - 2 {
            return Err(IpamError::InvalidRange(format!(
                "Network {} too small to allocate from",
                subnet_string(&subnet)
            )));
        }
        if subnet.ip() != subnet.network() {
            return Err(IpamError::InvalidRange(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                subnet.prefix(),
                subnet.network()
            )));
        }
        let gateway = match spec.gateway {
            None => next_ip(subnet.ip()),
            Some(gw) if in_subnet(&subnet, gw) => gw,
            Some(gw) => {
                return Err(IpamError::InvalidRange(format!(
                    "gateway {gw} not in network {}",
                    subnet_string(&subnet)
                )));
            }
        };
        let start = match spec.start {
            None => next_ip(subnet.ip()),
            Some(s) => {
                check_in_subnet(&subnet, s)?;
                s
            }
        };
        let end = match spec.end {
            None => last_ip(&subnet),
            Some(e) => {
                check_in_subnet(&subnet, e)?;
                if to_u128(e) < to_u128(start) {
                    return Err(IpamError::InvalidRange(format!(
                        "{e} is in network {} but before start {start}",
                        subnet_string(&subnet)
                    )));
                }
                e
            }
        };
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// In the subnet and between start and end, inclusive.
    pub fn contains(&self, ip: IpAddr) -> bool {
        in_subnet(&self.subnet, ip)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        same_family(self.start, other.start)
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }

    /// How many addresses can be handed out (the gateway is never one).
    pub fn capacity(&self) -> u128 {
        let n = to_u128(self.end) - to_u128(self.start) + 1;
        if self.contains(self.gateway) {
            n - 1
        } else {
            n
        }
    }

    pub fn prefix(&self) -> u8 {
        self.subnet.prefix()
    }
}

fn subnet_string(n: &IpNetwork) -> String {
    format!("{}/{}", n.ip(), n.prefix())
}

fn check_in_subnet(subnet: &IpNetwork, ip: IpAddr) -> Result<(), IpamError> {
    if !same_family(subnet.ip(), ip) {
        return Err(IpamError::InvalidRange(format!(
            "IP {ip} is not the same protocol as subnet {}",
            subnet_string(subnet)
        )));
    }
    if !subnet.contains(ip) {
        return Err(IpamError::InvalidRange(format!(
            "{ip} not in network {}",
            subnet_string(subnet)
        )));
    }
    Ok(())
}

/// A list of ranges of one family; one address is allocated per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn canonicalize(specs: &[RangeSpec]) -> Result<Self, IpamError> {
        if specs.is_empty() {
            return Err(IpamError::InvalidRange("empty range set".into()));
        }
        let ranges = specs
            .iter()
            .map(Range::canonicalize)
            .collect::<Result<Vec<_>, _>>()?;
        if ranges
            .iter()
            .any(|r| !same_family(r.start, ranges[0].start))
        {
            return Err(IpamError::InvalidRange("mixed address families".into()));
        }
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(IpamError::InvalidRange(format!(
                    "subnets {} and {} overlap",
                    a.describe(),
                    b.describe()
                )));
            }
        }
        Ok(RangeSet(ranges))
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    pub fn is_ipv4(&self) -> bool {
        self.0[0].start.is_ipv4()
    }

    pub fn capacity(&self) -> u128 {
        self.0.iter().map(Range::capacity).sum()
    }

    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(Range::describe)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Range {
    pub fn describe(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> RangeSpec {
        RangeSpec {
            subnet: Some(cni_protocol::result::cidr::parse_cidr(subnet).expect("cidr")),
            start: start.map(|s| s.parse().expect("ip")),
            end: end.map(|s| s.parse().expect("ip")),
            gateway: gw.map(|s| s.parse().expect("ip")),
        }
    }

    #[test]
    fn defaults_match_the_reference() {
        let r = Range::canonicalize(&spec("10.1.2.0/24", None, None, None)).expect("ok");
        assert_eq!(r.start.to_string(), "10.1.2.1");
        assert_eq!(r.end.to_string(), "10.1.2.254");
        assert_eq!(r.gateway.to_string(), "10.1.2.1");
        assert_eq!(r.capacity(), 253);
        let v6 = Range::canonicalize(&spec("fd00::/120", None, None, None)).expect("v6");
        assert_eq!(v6.end.to_string(), "fd00::ff");
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(Range::canonicalize(&spec("10.1.2.0/31", None, None, None)).is_err());
        assert!(Range::canonicalize(&spec("10.1.2.5/24", None, None, None)).is_err());
        assert!(
            Range::canonicalize(&spec(
                "10.1.2.0/24",
                Some("10.1.2.100"),
                Some("10.1.2.50"),
                None
            ))
            .is_err()
        );
        assert!(Range::canonicalize(&spec("10.1.2.0/24", Some("10.1.3.1"), None, None)).is_err());
        assert!(Range::canonicalize(&spec("10.1.2.0/24", None, None, Some("10.9.9.9"))).is_err());
        assert!(Range::canonicalize(&spec("10.1.2.0/24", Some("fd00::1"), None, None)).is_err());
        let mixed = [
            spec("10.1.2.0/24", None, None, None),
            spec("fd00::/64", None, None, None),
        ];
        assert!(RangeSet::canonicalize(&mixed).is_err());
        let overlap = [
            spec("10.1.2.0/24", None, None, None),
            spec("10.1.2.128/25", None, None, None),
        ];
        assert!(RangeSet::canonicalize(&overlap).is_err());
    }

    #[test]
    fn contains_honours_bounds() {
        let r = Range::canonicalize(&spec(
            "10.1.2.0/24",
            Some("10.1.2.10"),
            Some("10.1.2.20"),
            None,
        ))
        .expect("ok");
        assert!(r.contains("10.1.2.10".parse().expect("ip")));
        assert!(r.contains("10.1.2.20".parse().expect("ip")));
        assert!(!r.contains("10.1.2.21".parse().expect("ip")));
        assert!(!r.contains("fd00::1".parse().expect("ip")));
        assert_eq!(r.capacity(), 11);
    }
}
