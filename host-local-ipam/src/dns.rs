//! `resolvConf`: the nameservers, domain, search and options of a resolv.conf,
//! read the way the reference reads them.

use cni_protocol::Dns;

pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = fields[1].to_string(),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_of_line() {
        let dns = parse_resolv_conf(
            "# c\n; c\nnameserver 10.0.0.10\nnameserver 10.0.0.11\ndomain example.com\nsearch a.com b.com\noptions ndots:5 rotate\nbogus\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.10", "10.0.0.11"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, ["a.com", "b.com"]);
        assert_eq!(dns.options, ["ndots:5", "rotate"]);
    }
}
