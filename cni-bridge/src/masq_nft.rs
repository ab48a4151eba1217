//! `ipMasqBackend: "nftables"`: the same masquerade as [`crate::masq`],
//! in one nftables table of our own:
//!
//! ```text
//! table inet cni_plugins_masquerade {
//!   map masq_v4 { type ipv4_addr : verdict }       # container IP -> its chain
//!   map masq_v6 { type ipv6_addr : verdict }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr vmap @masq_v4; ip6 saddr vmap @masq_v6 }
//!   chain CNI-<hash> { comment "name: <net> id: <cid>"
//!     ip daddr <subnet> accept; ip daddr != 224.0.0.0/4 masquerade }
//! }
//! ```
//!
//! Map elements are added and removed by key, so ADD and DEL are each one
//! `nft -f` transaction with no handles to look up first.

use ipnetwork::IpNetwork;

use crate::masq::chain_name;
use crate::nft::{self, NftError};

const TABLE: &str = "inet cni_plugins_masquerade";

fn map(net: &IpNetwork) -> &'static str {
    if net.is_ipv4() { "masq_v4" } else { "masq_v6" }
}

fn base() -> String {
    format!(
        "add table {TABLE}\n\
         add map {TABLE} masq_v4 {{ type ipv4_addr : verdict ; }}\n\
         add map {TABLE} masq_v6 {{ type ipv6_addr : verdict ; }}\n\
         add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}\n\
         flush chain {TABLE} postrouting\n\
         add rule {TABLE} postrouting ip saddr vmap @masq_v4\n\
         add rule {TABLE} postrouting ip6 saddr vmap @masq_v6\n"
    )
}

/// The chain comment. nft strings cannot escape quotes, so unlike the
/// iptables comment this one has none; names and ids are validated to
/// `[A-Za-z0-9_.-]`, which needs no quoting.
fn chain_comment(network: &str, container_id: &str) -> String {
    format!("\"name: {network} id: {container_id}\"")
}

pub fn setup(network: &str, container_id: &str, addrs: &[IpNetwork]) -> Result<(), NftError> {
    let chain = chain_name(network, container_id);
    let comment = chain_comment(network, container_id);
    // Fast path, one exec: `create chain` fails when the chain exists (a
    // second interface or a repeated ADD), and the whole transaction with it.
    let fresh = format!("create chain {TABLE} {chain} {{ comment {comment} ; }}\n");
    if nft::apply(&format!("{}{fresh}{}", base(), rules(&chain, addrs, ""))).is_ok() {
        return Ok(());
    }
    // The chain exists: add only what it lacks.
    let listing = nft::list(&format!("chain {TABLE} {chain}"))?.unwrap_or_default();
    let add = format!("add chain {TABLE} {chain} {{ comment {comment} ; }}\n");
    nft::apply(&format!(
        "{}{add}{}",
        base(),
        rules(&chain, addrs, &listing)
    ))
}

/// The chain's rules for `addrs` that `existing` (a listing) lacks, and
/// the map entries.
fn rules(chain: &str, addrs: &[IpNetwork], existing: &str) -> String {
    let mut s = String::new();
    for net in addrs {
        let subnet = IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net);
        let (fam, mcast) = if net.is_ipv4() {
            ("ip", "224.0.0.0/4")
        } else {
            ("ip6", "ff00::/8")
        };
        for rule in [
            format!("{fam} daddr {subnet} accept"),
            format!("{fam} daddr != {mcast} masquerade"),
        ] {
            if !existing.contains(&rule) && !s.contains(&rule) {
                s.push_str(&format!("add rule {TABLE} {chain} {rule}\n"));
            }
        }
        s.push_str(&format!(
            "add element {TABLE} {} {{ {} : jump {chain} }}\n",
            map(net),
            net.ip()
        ));
    }
    s
}

/// Removes this interface's map entries (`addrs`), and the chain once no
/// entry points at it; with `addrs` unknown, every entry of the container.
pub fn teardown(
    network: &str,
    container_id: &str,
    addrs: Option<&[IpNetwork]>,
) -> Result<(), NftError> {
    let chain = chain_name(network, container_id);
    if let Some(list) = addrs {
        // Fast path: exactly our entries and the chain, in one go.
        let mut s = String::new();
        for net in list {
            s.push_str(&format!(
                "delete element {TABLE} {} {{ {} }}\n",
                map(net),
                net.ip()
            ));
        }
        s.push_str(&format!("delete chain {TABLE} {chain}\n"));
        if nft::apply(&s).is_ok() {
            return Ok(());
        }
    }
    let Some(table) = nft::list(&format!("table {TABLE}"))? else {
        return Ok(());
    };
    let mut s = String::new();
    let mut remaining = 0;
    for (m, line) in ["masq_v4", "masq_v6"]
        .iter()
        .flat_map(|m| map_elements(&table, m).into_iter().map(move |e| (*m, e)))
    {
        let (key, target) = line;
        if target != chain {
            continue;
        }
        let mine = match addrs {
            None => true,
            Some(list) => list.iter().any(|a| a.ip().to_string() == key),
        };
        if mine {
            s.push_str(&format!("delete element {TABLE} {m} {{ {key} }}\n"));
        } else {
            remaining += 1;
        }
    }
    if remaining == 0 && nft::chains(&table).contains(&chain) {
        s.push_str(&format!(
            "flush chain {TABLE} {chain}\ndelete chain {TABLE} {chain}\n"
        ));
    }
    if s.is_empty() {
        return Ok(());
    }
    nft::apply(&s)
}

/// `(key, chain)` pairs of a verdict map in an `nft list table` text.
fn map_elements(table: &str, map: &str) -> Vec<(String, String)> {
    let Some(start) = table.find(&format!("map {map} {{")) else {
        return Vec::new();
    };
    let body = &table[start..];
    let body = &body[..body.find("\n\t}").unwrap_or(body.len())];
    let Some(el) = body.find("elements = {") else {
        return Vec::new();
    };
    let el = &body[el + "elements = {".len()..];
    let el = &el[..el.find('}').unwrap_or(el.len())];
    el.split(',')
        .filter_map(|e| {
            let (k, v) = e.split_once(':')?;
            let target = v.trim().strip_prefix("jump ")?.trim().to_string();
            Some((k.trim().to_string(), target))
        })
        .collect()
}

/// Whether each address is mapped to the container's chain (CHECK).
pub fn verify(network: &str, container_id: &str, addrs: &[IpNetwork]) -> Result<bool, NftError> {
    let chain = chain_name(network, container_id);
    let Some(table) = nft::list(&format!("table {TABLE}"))? else {
        return Ok(false);
    };
    Ok(addrs.iter().all(|a| {
        map_elements(&table, map(a))
            .iter()
            .any(|(k, c)| *k == a.ip().to_string() && *c == chain)
    }))
}

/// GC: drops the chains (and entries) of `network` whose container is not
/// in `valid`.
pub fn collect_garbage(network: &str, valid: &[String]) -> Result<(), NftError> {
    let Some(table) = nft::list(&format!("table {TABLE}"))? else {
        return Ok(());
    };
    let keep: Vec<String> = valid.iter().map(|id| chain_name(network, id)).collect();
    let tag = format!("comment \"name: {network} id: ");
    let mut doomed = Vec::new();
    for part in table.split("\tchain ").skip(1) {
        let name = part.split_whitespace().next().unwrap_or("");
        if name.starts_with("CNI-") && part.contains(&tag) && !keep.iter().any(|k| k == name) {
            doomed.push(name.to_string());
        }
    }
    let mut s = String::new();
    for m in ["masq_v4", "masq_v6"] {
        for (k, c) in map_elements(&table, m) {
            if doomed.contains(&c) {
                s.push_str(&format!("delete element {TABLE} {m} {{ {k} }}\n"));
            }
        }
    }
    for c in &doomed {
        s.push_str(&format!(
            "flush chain {TABLE} {c}\ndelete chain {TABLE} {c}\n"
        ));
    }
    if s.is_empty() {
        return Ok(());
    }
    nft::apply(&s)
}
