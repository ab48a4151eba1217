//! The netfilter half of kube-proxy's IPVS mode, as the tutorial lays it
//! out: the ipsets KUBE-CLUSTER-IP (every VIP,proto:port) and
//! KUBE-LOOP-BACK (every endpoint reaching itself), and the fixed
//! iptables chains KUBE-SERVICES, KUBE-MARK-MASQ, KUBE-POSTROUTING and
//! KUBE-FORWARD with the masquerade mark 0x4000. Pure rendering and
//! comparison; the caller runs one `ipset restore` and at most one
//! `iptables-restore --noflush` per sync.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ipnetwork::IpNetwork;

pub const CLUSTER_IP_SET: &str = "KUBE-CLUSTER-IP";
pub const LOOP_BACK_SET: &str = "KUBE-LOOP-BACK";

/// Our chains in the nat table, and the rules each holds, in order, as
/// `iptables-save` prints them.
fn nat_rules(cluster_cidr: IpNetwork) -> Vec<String> {
    let net = format!("{}/{}", cluster_cidr.network(), cluster_cidr.prefix());
    vec![
        format!(
            "-A KUBE-SERVICES ! -s {net} -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set {CLUSTER_IP_SET} dst,dst -j KUBE-MARK-MASQ"
        ),
        format!("-A KUBE-SERVICES -m set --match-set {CLUSTER_IP_SET} dst,dst -j ACCEPT"),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into(),
        format!(
            "-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set {LOOP_BACK_SET} dst,dst,src -j MASQUERADE"
        ),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    ]
}

const NAT_CHAINS: &[&str] = &["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"];
const NAT_JUMPS: &[&str] = &[
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
];

const FILTER_CHAINS: &[&str] = &["KUBE-FORWARD"];
const FILTER_RULES: &[&str] = &[
    "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
    "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
];
const FILTER_JUMPS: &[&str] =
    &["-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"];

/// The lines of `table` in an `iptables-save` dump.
fn in_table<'a>(save: &'a str, table: &'a str) -> impl Iterator<Item = &'a str> {
    let mut inside = false;
    save.lines()
        .filter(move |line| match line.strip_prefix('*') {
            Some(t) => {
                inside = t.trim() == table;
                false
            }
            None => inside,
        })
}

/// The `-A` lines of `table` in an `iptables-save` dump.
fn table_rules<'a>(save: &'a str, table: &'a str) -> Vec<&'a str> {
    in_table(save, table)
        .filter(|l| l.starts_with("-A "))
        .map(str::trim_end)
        .collect()
}

/// The rules of `chain` among `rules`, in order.
fn of_chain<'a>(rules: &[&'a str], chain: &str) -> Vec<&'a str> {
    rules
        .iter()
        .copied()
        .filter(|r| {
            r.strip_prefix("-A ")
                .and_then(|r| r.strip_prefix(chain))
                .is_some_and(|r| r.starts_with(' '))
        })
        .collect()
}

/// One table's part of the script, or nothing when `save` already has
/// exactly our chains and every jump into them.
fn table_script(
    save: &str,
    table: &str,
    chains: &[&str],
    rules: &[String],
    jumps: &[&str],
) -> Option<String> {
    let have = table_rules(save, table);
    let want: Vec<&str> = rules.iter().map(String::as_str).collect();
    // iptables-save groups rules by chain, in its own chain order.
    let same = chains
        .iter()
        .all(|c| of_chain(&have, c) == of_chain(&want, c));
    let missing: Vec<&&str> = jumps.iter().filter(|j| !have.contains(j)).collect();
    if same && missing.is_empty() {
        return None;
    }
    let mut s = format!("*{table}\n");
    // Declaring a chain under --noflush empties it: our chains are
    // rewritten whole, nobody else's are touched.
    for c in chains {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for r in rules {
        let _ = writeln!(s, "{r}");
    }
    for j in missing {
        // Jumps go first in the built-in chain, as kube-proxy puts them.
        let _ = writeln!(s, "-I{}", &j[2..]);
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// The `iptables-restore --noflush` input that puts the fixed chains in
/// place, or `None` when `save` (`iptables-save` of nat and filter) shows
/// them as they should be. Running it twice adds nothing twice.
pub fn iptables_script(save: &str, cluster_cidr: IpNetwork) -> Option<String> {
    let nat = table_script(save, "nat", NAT_CHAINS, &nat_rules(cluster_cidr), NAT_JUMPS);
    let filter_rules: Vec<String> = FILTER_RULES.iter().map(|r| r.to_string()).collect();
    let filter = table_script(save, "filter", FILTER_CHAINS, &filter_rules, FILTER_JUMPS);
    match (nat, filter) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or_default() + &b.unwrap_or_default()),
    }
}

/// The `iptables-restore --noflush` input that removes the fixed chains
/// and the jumps into them (another proxy mode took over), or `None` when
/// `save` shows none of them. Jumps and chains of the same names that are
/// not exactly ours stay only if they are not ours to tell apart: the
/// chains are kube-proxy's names, so this runs only where `kube-ipvs0`
/// says IPVS mode was ours.
pub fn removal_script(save: &str) -> Option<String> {
    let mut out = String::new();
    for (table, chains, jumps) in [
        ("nat", NAT_CHAINS, NAT_JUMPS),
        ("filter", FILTER_CHAINS, FILTER_JUMPS),
    ] {
        let have = table_rules(save, table);
        let declared = declared_chains(save, table);
        let present: Vec<&&str> = chains.iter().filter(|c| declared.contains(**c)).collect();
        let gone: Vec<&&str> = jumps.iter().filter(|j| have.contains(j)).collect();
        if present.is_empty() && gone.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for j in gone {
            let _ = writeln!(out, "-D{}", &j[2..]);
        }
        // Emptied first: KUBE-SERVICES jumps to KUBE-MARK-MASQ.
        for c in &present {
            let _ = writeln!(out, "-F {c}");
        }
        for c in &present {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// The user chains `table` declares in an `iptables-save` dump.
fn declared_chains<'a>(save: &'a str, table: &'a str) -> BTreeSet<&'a str> {
    in_table(save, table)
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .collect()
}

/// The members each set should have, as `ipset save` prints them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sets {
    pub cluster_ip: BTreeSet<String>,
    pub loop_back: BTreeSet<String>,
}

/// The members of our two sets in an `ipset save` dump, and whether each
/// set exists.
pub fn parse_sets(save: &str) -> (Sets, bool) {
    let mut s = Sets::default();
    let mut created = 0;
    for line in save.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(CLUSTER_IP_SET | LOOP_BACK_SET), _) => created += 1,
            (Some("add"), Some(CLUSTER_IP_SET), Some(m)) => {
                s.cluster_ip.insert(m.to_string());
            }
            (Some("add"), Some(LOOP_BACK_SET), Some(m)) => {
                s.loop_back.insert(m.to_string());
            }
            _ => {}
        }
    }
    (s, created == 2)
}

/// The `ipset restore` input that turns `have` into `want` (creating the
/// sets when `exist` is false), or `None` when nothing changes.
pub fn ipset_script(have: &Sets, exist: bool, want: &Sets) -> Option<String> {
    if exist && have == want {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "create {CLUSTER_IP_SET} hash:ip,port family inet hashsize 1024 maxelem 65536 -exist"
    );
    let _ = writeln!(
        s,
        "create {LOOP_BACK_SET} hash:ip,port,ip family inet hashsize 1024 maxelem 65536 -exist"
    );
    for (set, h, w) in [
        (CLUSTER_IP_SET, &have.cluster_ip, &want.cluster_ip),
        (LOOP_BACK_SET, &have.loop_back, &want.loop_back),
    ] {
        for m in w.difference(h) {
            let _ = writeln!(s, "add {set} {m} -exist");
        }
        for m in h.difference(w) {
            let _ = writeln!(s, "del {set} {m} -exist");
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr() -> IpNetwork {
        "10.244.0.0/16".parse().expect("cidr")
    }

    #[test]
    fn a_fresh_node_gets_the_tutorials_chains_and_jumps() {
        let s =
            iptables_script("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", cidr()).expect("script");
        assert!(s.starts_with(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n"
        ));
        assert!(s.contains("-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment"));
        assert!(s.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n"));
        assert!(s.contains(
            "-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(s.contains("*filter\n:KUBE-FORWARD - [0:0]\n"));
        assert!(s.contains(
            "-I FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n"
        ));
        assert_eq!(s.matches("COMMIT").count(), 2);
    }

    #[test]
    fn what_is_in_place_is_left_alone() {
        let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
        for j in NAT_JUMPS {
            save.push_str(j);
            save.push('\n');
        }
        save.push_str("-A POSTROUTING -s 10.244.1.0/24 -j CNI-abc\n");
        // As iptables-save prints them: chain by chain, by name.
        let mut nat = nat_rules(cidr());
        nat.sort_by_key(|r| r.split(' ').nth(1).map(str::to_string));
        for r in nat {
            save.push_str(&r);
            save.push('\n');
        }
        save.push_str("COMMIT\n*filter\n");
        for r in FILTER_JUMPS.iter().chain(FILTER_RULES) {
            save.push_str(r);
            save.push('\n');
        }
        save.push_str("COMMIT\n");
        assert_eq!(iptables_script(&save, cidr()), None);
        // A rule of ours removed: its table is rewritten, the jumps that
        // are there are not added again, the other table is untouched.
        let broken = save.replace("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n", "");
        let s = iptables_script(&broken, cidr()).expect("script");
        assert!(s.contains("-A KUBE-MARK-MASQ -j MARK"));
        assert!(!s.contains("-I "));
        assert!(!s.contains("*filter"));
    }

    #[test]
    fn sets_are_diffed_member_by_member() {
        let save = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
                    add KUBE-CLUSTER-IP 10.254.10.128,tcp:80\n\
                    add KUBE-CLUSTER-IP 10.254.0.9,udp:53\n\
                    create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536\n\
                    create OTHER hash:ip\nadd OTHER 1.2.3.4\n";
        let (have, exist) = parse_sets(save);
        assert!(exist);
        assert_eq!(have.cluster_ip.len(), 2);
        let want = Sets {
            cluster_ip: ["10.254.10.128,tcp:80".to_string()].into(),
            loop_back: ["10.244.1.2,tcp:8080,10.244.1.2".to_string()].into(),
        };
        let s = ipset_script(&have, exist, &want).expect("script");
        assert!(s.contains("add KUBE-LOOP-BACK 10.244.1.2,tcp:8080,10.244.1.2 -exist\n"));
        assert!(s.contains("del KUBE-CLUSTER-IP 10.254.0.9,udp:53 -exist\n"));
        assert!(!s.contains("OTHER"));
        assert!(!s.contains("add KUBE-CLUSTER-IP"));
        assert_eq!(ipset_script(&want, true, &want), None);
        // Missing sets are created even with nothing to add.
        assert!(ipset_script(&Sets::default(), false, &Sets::default()).is_some());
    }

    #[test]
    fn removal_takes_our_chains_and_jumps_and_nothing_else() {
        let cidr: IpNetwork = "10.244.0.0/16".parse().expect("cidr");
        let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n");
        for c in NAT_CHAINS {
            save.push_str(&format!(":{c} - [0:0]\n"));
        }
        save.push_str("-A PREROUTING -j OTHER\n");
        for j in NAT_JUMPS {
            save.push_str(&format!("{j}\n"));
        }
        for r in nat_rules(cidr) {
            save.push_str(&format!("{r}\n"));
        }
        save.push_str("COMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        let script = removal_script(&save).expect("something to remove");
        assert!(script.starts_with("*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert!(script.contains(
            "-F KUBE-SERVICES\n-F KUBE-MARK-MASQ\n-F KUBE-POSTROUTING\n-X KUBE-SERVICES\n"
        ));
        assert!(!script.contains("OTHER"));
        assert!(!script.contains("*filter"), "{script}");
        assert_eq!(removal_script("*nat\n:OTHER - [0:0]\nCOMMIT\n"), None);
    }
}
