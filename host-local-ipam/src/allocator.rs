//! Round-robin allocation over a range set, continuing after the address
//! in `last_reserved_ip.<n>` and skipping the gateway, exactly as the
//! reference walks it, so both hand out the same sequence.

use std::net::IpAddr;

use crate::error::IpamError;
use crate::range::{Range, RangeSet, next_ip};
use crate::store::Store;

/// Walks a range set once around, starting after `last` when it lies in the set.
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> RangeIter<'a> {
    pub fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Self {
        let resume = last.and_then(|ip| set.0.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
        match resume {
            Some((idx, ip)) => RangeIter {
                set,
                idx,
                cur: Some(ip),
                start: None,
            },
            None => RangeIter {
                set,
                idx: 0,
                cur: None,
                start: Some(set.0[0].start),
            },
        }
    }
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        let ranges = &self.set.0;
        loop {
            let next = match self.cur {
                None => {
                    let s = ranges[self.idx].start;
                    self.start = Some(s);
                    s
                }
                Some(cur) => {
                    let next = if cur == ranges[self.idx].end {
                        self.idx = (self.idx + 1) % ranges.len();
                        ranges[self.idx].start
                    } else {
                        next_ip(cur)
                    };
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => return None,
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(next);
            let range = &ranges[self.idx];
            if next != range.gateway {
                return Some((next, range));
            }
        }
    }
}

/// One allocated address with its range's prefix and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// Allocates in range set `idx`: the requested address if any, otherwise the
/// next free one.
pub fn allocate(
    store: &mut Store,
    set: &RangeSet,
    idx: usize,
    id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<Allocation, IpamError> {
    if let Some(ip) = requested {
        let range = set.range_for(ip).ok_or_else(|| {
            IpamError::Allocation(format!("{ip} not in range set {}", set.describe()))
        })?;
        if !store.reserve(id, ifname, ip, idx)? {
            return Err(IpamError::Allocation(format!(
                "requested IP address {ip} is not available in range set {}",
                set.describe()
            )));
        }
        return Ok(Allocation {
            ip,
            prefix: range.prefix(),
            gateway: range.gateway,
        });
    }
    // The spec forbids a second address for the same attachment.
    if let Some(ip) = store
        .get_by_id(id, ifname)?
        .into_iter()
        .find(|ip| set.contains(*ip))
    {
        return Err(IpamError::Allocation(format!(
            "{ip} has been allocated to {id}, duplicate allocation is not allowed"
        )));
    }
    for (ip, range) in RangeIter::new(set, store.last_reserved(idx)) {
        if store.reserve(id, ifname, ip, idx)? {
            return Ok(Allocation {
                ip,
                prefix: range.prefix(),
                gateway: range.gateway,
            });
        }
    }
    Err(IpamError::Allocation(format!(
        "no IP addresses available in range set: {}",
        set.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::RangeSpec;

    fn set(specs: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        let specs: Vec<RangeSpec> = specs
            .iter()
            .map(|(s, a, b)| RangeSpec {
                subnet: Some(cni_protocol::result::cidr::parse_cidr(s).expect("cidr")),
                start: a.map(|x| x.parse().expect("ip")),
                end: b.map(|x| x.parse().expect("ip")),
                gateway: None,
            })
            .collect();
        RangeSet::canonicalize(&specs).expect("set")
    }

    fn walk(s: &RangeSet, last: Option<&str>) -> Vec<String> {
        RangeIter::new(s, last.map(|l| l.parse().expect("ip")))
            .map(|(ip, _)| ip.to_string())
            .collect()
    }

    #[test]
    fn skips_gateway_and_visits_everything_once() {
        let s = set(&[("10.0.0.0/29", None, None)]);
        assert_eq!(
            walk(&s, None),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            walk(&s, Some("10.0.0.4")),
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        // A last address outside the set restarts from the beginning.
        assert_eq!(
            walk(&s, Some("10.9.0.4")).first().map(String::as_str),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn moves_across_ranges_of_a_set() {
        let s = set(&[
            ("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11")),
            ("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.11")),
        ]);
        assert_eq!(
            walk(&s, Some("10.0.0.11")),
            ["10.0.1.10", "10.0.1.11", "10.0.0.10", "10.0.0.11"]
        );
    }
}
