//! IP masquerade for a container's addresses, in the reference's layout:
//!
//! ```text
//! -A POSTROUTING -s <ip>/32 -m comment --comment "name: \"<net>\" id: \"<cid>\"" -j CNI-<hash>
//! -A CNI-<hash> -d <subnet> ... -j ACCEPT
//! -A CNI-<hash> ! -d 224.0.0.0/4 ... -j MASQUERADE
//! ```
//!
//! The chain name depends only on the network name and container id, so DEL
//! can find everything without the container's netns. All rules of a call go
//! through one `iptables-restore --noflush` (per address family).

use ipnetwork::IpNetwork;
use netkit::tool::run;
use sha2::{Digest, Sha512};

/// Running iptables-restore/-save: the shared tool runner's errors.
pub use netkit::tool::ToolError as MasqError;

/// `CNI-` and the first 24 hex digits of sha512(name + containerID).
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// The rule comment, formatted like Go's `%q`.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {} id: {}", go_quote(network), go_quote(container_id))
}

fn go_quote(s: &str) -> String {
    // Names and ids are validated to [A-Za-z0-9_.-], so only quotes and
    // backslashes could need escaping.
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The comment as iptables-save prints it (and iptables-restore reads it).
fn quoted_comment(network: &str, container_id: &str) -> String {
    go_quote(&comment(network, container_id))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNetwork) -> Self {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }
    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

fn of_family(addrs: &[IpNetwork], f: Family) -> Vec<&IpNetwork> {
    addrs.iter().filter(|a| Family::of(a) == f).collect()
}

/// The nat table as `iptables-save` prints it.
fn save_nat(f: Family) -> Result<String, MasqError> {
    run(f.save(), &["-t", "nat"], None)
}

fn restore(f: Family, body: &str) -> Result<(), MasqError> {
    let input = format!("*nat\n{body}COMMIT\n");
    run(f.restore(), &["--noflush", "-w", "5"], Some(&input)).map(|_| ())
}

/// The rules one address needs, as iptables-save would print them.
fn rules_for(net: &IpNetwork, chain: &str, comment: &str) -> [String; 3] {
    let f = Family::of(net);
    let subnet = IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net);
    [
        format!("-A {chain} -d {subnet} -m comment --comment {comment} -j ACCEPT"),
        format!(
            "-A {chain} ! -d {} -m comment --comment {comment} -j MASQUERADE",
            f.multicast()
        ),
        format!(
            "-A POSTROUTING -s {}/{} -m comment --comment {comment} -j {chain}",
            net.ip(),
            f.host_prefix()
        ),
    ]
}

/// Adds masquerading for `addrs` (one container's), creating the chain on
/// first use and adding only the rules that are missing.
pub fn setup(network: &str, container_id: &str, addrs: &[IpNetwork]) -> Result<(), MasqError> {
    let chain = chain_name(network, container_id);
    let comment = quoted_comment(network, container_id);
    for f in [Family::V4, Family::V6] {
        let mine = of_family(addrs, f);
        if mine.is_empty() {
            continue;
        }
        // Fast path: a new container's chain does not exist yet; one exec.
        let mut body = format!("-N {chain}\n");
        for net in &mine {
            for r in rules_for(net, &chain, &comment) {
                if !body.contains(&r) {
                    body.push_str(&r);
                    body.push('\n');
                }
            }
        }
        if restore(f, &body).is_ok() {
            continue;
        }
        // The chain exists (another interface of this container, or a
        // repeated ADD): add what is missing, keep what is there.
        let saved = save_nat(f)?;
        let has_chain = saved
            .lines()
            .any(|l| l == format!(":{chain} - [0:0]") || l.starts_with(&format!(":{chain} ")));
        let mut body = String::new();
        if !has_chain {
            body.push_str(&format!("-N {chain}\n"));
        }
        for net in &mine {
            for r in rules_for(net, &chain, &comment) {
                if !saved.lines().any(|l| l == r) && !body.contains(&r) {
                    body.push_str(&r);
                    body.push('\n');
                }
            }
        }
        if !body.is_empty() {
            restore(f, &body)?;
        }
    }
    Ok(())
}

/// Removes masquerading. With `addrs` (the interface's addresses, when its
/// netns still exists) only their POSTROUTING jumps go, and the chain only
/// once no jump to it is left, so a container's other interface keeps
/// working. Without (netns gone or unknown) every jump and the chain go:
/// the chain name is deterministic, so nothing is left behind.
pub fn teardown(
    network: &str,
    container_id: &str,
    addrs: Option<&[IpNetwork]>,
) -> Result<(), MasqError> {
    let chain = chain_name(network, container_id);
    let comment = quoted_comment(network, container_id);
    let jump = format!(" -j {chain}");
    for f in [Family::V4, Family::V6] {
        if let Some(list) = addrs {
            let mine = of_family(list, f);
            if mine.is_empty() {
                continue;
            }
            // Fast path, one exec: this interface's jumps, then the chain.
            // It fails as a whole when a rule is missing or another
            // interface still uses the chain; the careful path follows.
            let mut body = String::new();
            for net in &mine {
                let [_, _, jump_rule] = rules_for(net, &chain, &comment);
                body.push_str(&jump_rule.replacen("-A ", "-D ", 1));
                body.push('\n');
            }
            body.push_str(&format!("-F {chain}\n-X {chain}\n"));
            if restore(f, &body).is_ok() {
                continue;
            }
        }
        let saved = match save_nat(f) {
            Ok(s) => s,
            // No ip6tables on this node means no v6 rules to remove.
            Err(MasqError::Run {
                source: netkit::process::ProcessError::Spawn { .. },
                ..
            }) if f == Family::V6 => continue,
            Err(e) => return Err(e),
        };
        let has_chain = saved.lines().any(|l| l.starts_with(&format!(":{chain} ")));
        let jumps: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with(&jump))
            .collect();
        let doomed: Vec<&str> = jumps
            .iter()
            .copied()
            .filter(|l| match addrs {
                None => true,
                Some(list) => list.iter().filter(|a| Family::of(a) == f).any(|a| {
                    l.starts_with(&format!(
                        "-A POSTROUTING -s {}/{} ",
                        a.ip(),
                        f.host_prefix()
                    )) || l.starts_with(&format!("-A POSTROUTING -s {} ", a))
                }),
            })
            .collect();
        let mut body = String::new();
        for l in &doomed {
            body.push_str(&l.replacen("-A ", "-D ", 1));
            body.push('\n');
        }
        if has_chain && doomed.len() == jumps.len() {
            body.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        if !body.is_empty() {
            restore(f, &body)?;
        }
    }
    Ok(())
}

/// GC: removes every masquerade chain of `network` (found by its rule
/// comment) whose container is not in `valid`, with its jumps.
pub fn collect_garbage(network: &str, valid: &[String]) -> Result<(), MasqError> {
    let keep: Vec<String> = valid.iter().map(|id| chain_name(network, id)).collect();
    let prefix = format!("--comment \"name: \\\"{network}\\\" id: \\\"");
    for f in [Family::V4, Family::V6] {
        let saved = match save_nat(f) {
            Ok(s) => s,
            Err(MasqError::Run {
                source: netkit::process::ProcessError::Spawn { .. },
                ..
            }) if f == Family::V6 => continue,
            Err(e) => return Err(e),
        };
        let mut chains: Vec<&str> = Vec::new();
        for l in saved
            .lines()
            .filter(|l| l.starts_with("-A CNI-") && l.contains(&prefix))
        {
            if let Some(c) = l.split_whitespace().nth(1)
                && !keep.iter().any(|k| k == c)
                && !chains.contains(&c)
            {
                chains.push(c);
            }
        }
        let mut body = String::new();
        for c in &chains {
            let jump = format!(" -j {c}");
            for l in saved
                .lines()
                .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with(&jump))
            {
                body.push_str(&l.replacen("-A ", "-D ", 1));
                body.push('\n');
            }
            body.push_str(&format!("-F {c}\n-X {c}\n"));
        }
        if !body.is_empty() {
            restore(f, &body)?;
        }
    }
    Ok(())
}

/// Whether the chain and a jump for each address exist (CHECK).
pub fn verify(network: &str, container_id: &str, addrs: &[IpNetwork]) -> Result<bool, MasqError> {
    let chain = chain_name(network, container_id);
    let comment = quoted_comment(network, container_id);
    for f in [Family::V4, Family::V6] {
        let mine = of_family(addrs, f);
        if mine.is_empty() {
            continue;
        }
        let saved = save_nat(f)?;
        for net in mine {
            for r in rules_for(net, &chain, &comment) {
                if !saved.lines().any(|l| l == r) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_name_and_comment_match_the_reference() {
        // `printf bridgeweb-002 | sha512sum | cut -c1-24`
        assert_eq!(
            chain_name("bridge", "web-002"),
            "CNI-117fce886830d13d029a3d7d"
        );
        assert_eq!(
            comment("bridge", "web-002"),
            r#"name: "bridge" id: "web-002""#
        );
        assert_eq!(
            quoted_comment("bridge", "x"),
            r#""name: \"bridge\" id: \"x\"""#
        );
    }
}
