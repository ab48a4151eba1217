//! One lease file: named by the IP, holding `<containerID>\r\n<ifname>` with
//! no trailing newline. Very old reference versions wrote only the id.

use std::net::IpAddr;

pub const LINE_BREAK: &str = "\r\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub id: String,
    /// `None` for a legacy lease that names no interface.
    pub ifname: Option<String>,
}

impl Lease {
    /// The file's bytes, exactly as the reference writes them.
    pub fn contents(id: &str, ifname: &str) -> String {
        format!("{}{LINE_BREAK}{ifname}", id.trim())
    }

    /// Reads a lease file's text; the reference compares trimmed contents.
    pub fn parse(ip: IpAddr, text: &str) -> Option<Lease> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(match text.split_once(LINE_BREAK) {
            Some((id, ifname)) => Lease {
                ip,
                id: id.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Lease {
                ip,
                id: text.to_string(),
                ifname: None,
            },
        })
    }

    /// The reference's DEL rule: exact (id, ifname) leases, or, when there
    /// are none, the legacy leases of the id.
    pub fn select<'a>(leases: &'a [Lease], id: &str, ifname: &str) -> Vec<&'a Lease> {
        let exact: Vec<&Lease> = leases
            .iter()
            .filter(|l| l.id == id && l.ifname.as_deref() == Some(ifname))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        leases
            .iter()
            .filter(|l| l.id == id && l.ifname.is_none())
            .collect()
    }

    pub fn matches(&self, id: &str, ifname: &str) -> bool {
        self.id == id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_legacy() {
        let ip: IpAddr = "10.0.0.2".parse().expect("ip");
        let text = Lease::contents("abc", "eth0");
        assert_eq!(text, "abc\r\neth0");
        let l = Lease::parse(ip, &text).expect("lease");
        assert_eq!(l.ifname.as_deref(), Some("eth0"));
        let legacy = Lease::parse(ip, "abc\n").expect("legacy");
        assert_eq!(legacy.ifname, None);
        assert!(Lease::parse(ip, "  ").is_none());
        let all = [l.clone(), legacy.clone()];
        assert_eq!(Lease::select(&all, "abc", "eth0"), vec![&l]);
        assert_eq!(Lease::select(&all, "abc", "eth1"), vec![&legacy]);
    }
}
