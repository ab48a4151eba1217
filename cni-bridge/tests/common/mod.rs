//! Shared by the bridge tests: plugin directories (ours and the
//! reference), a "node" (host netns + data dir) and kernel-state probes
//! normalised so two runs can be compared.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tempfile::TempDir;
use testbed::{Call, Netns, Outcome};

pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A directory with our `bridge`, `loopback` and `host-local`, as a
/// runtime's CNI_PATH would hold them.
pub struct PluginDir {
    pub dir: TempDir,
}

impl PluginDir {
    pub fn ours() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bridge = PathBuf::from(env!("CARGO_BIN_EXE_bridge"));
        let loopback = PathBuf::from(env!("CARGO_BIN_EXE_loopback"));
        let bin_dir = bridge.parent().expect("bin dir").to_path_buf();
        let host_local = bin_dir.join("host-local");
        if !host_local.exists() {
            // Another package's binary: build it if this test runs alone.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "host-local-ipam",
                    "--bin",
                    "host-local",
                ])
                .status()
                .expect("cargo build host-local");
            assert!(st.success(), "building host-local failed");
        }
        for (name, target) in [
            ("bridge", bridge),
            ("loopback", loopback),
            ("host-local", host_local),
        ] {
            std::os::unix::fs::symlink(&target, dir.path().join(name)).expect("symlink");
        }
        PluginDir { dir }
    }

    pub fn reference() -> Self {
        testbed::reference_plugin("bridge");
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["bridge", "loopback", "host-local"] {
            std::os::unix::fs::symlink(testbed::reference_plugin(name), dir.path().join(name))
                .expect("symlink");
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// One emulated node: its host netns, its IPAM data dir and its plugins.
pub struct Node {
    pub host: Netns,
    pub data: TempDir,
    pub plugins: PluginDir,
}

impl Node {
    pub fn new(tag: &str, plugins: PluginDir) -> Self {
        Node {
            host: Netns::new(tag),
            data: tempfile::tempdir().expect("tempdir"),
            plugins,
        }
    }

    /// The config with this node's dataDir filled in.
    pub fn conf(&self, conf: &Value) -> String {
        let mut c = conf.clone();
        if c["ipam"]["type"] == "host-local" {
            c["ipam"]["dataDir"] = json!(self.data.path().display().to_string());
        }
        c.to_string()
    }

    /// A call of `plugin` on this node, with PATH, CNI_PATH and the config;
    /// tests add the netns, ifname or CNI_ARGS they need.
    pub fn call_with(&self, plugin: &str, cmd: &str, id: &str, conf: &Value) -> Call {
        Call::new(self.plugins.path().join(plugin), cmd, id)
            .in_netns(&self.host)
            .env("PATH", PATH)
            .env("CNI_PATH", &self.plugins.path().display().to_string())
            .stdin(self.conf(conf))
    }

    pub fn call(
        &self,
        plugin: &str,
        cmd: &str,
        id: &str,
        netns: Option<&Netns>,
        conf: &Value,
    ) -> Outcome {
        let call = self.call_with(plugin, cmd, id, conf);
        match netns {
            Some(ns) => call.netns(&ns.path().display().to_string()),
            None => call.unset("CNI_NETNS"),
        }
        .run()
    }

    /// Leases of network `net`.
    pub fn leases(&self, net: &str) -> Vec<(String, String)> {
        testbed::snapshot(&self.data.path().join(net))
            .into_iter()
            .filter(|(k, _)| k != "lock")
            .map(|(k, e)| (k, e.text().unwrap_or_default()))
            .collect()
    }
}

/// The tutorial's network config (testdata/cni/10-bridge.conf) in `version`.
pub fn tutorial(version: &str) -> Value {
    let mut c = testbed::testdata::cni_conf("10-bridge.conf");
    c["cniVersion"] = json!(version);
    c
}

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Replaces MACs, host veth names and netns paths so two runs compare.
pub fn normalise(text: &str, sandboxes: &[&Netns]) -> String {
    let mut out = text.to_string();
    for ns in sandboxes {
        out = out.replace(&ns.path().display().to_string(), "<netns>");
        out = out.replace(ns.name(), "<netns>");
    }
    let words: Vec<String> = out
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '@')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    for w in words {
        if is_mac(&w) {
            out = out.replace(&w, "<mac>");
        } else if w.len() == 12
            && w.starts_with("veth")
            && w[4..].chars().all(|c| c.is_ascii_hexdigit())
        {
            out = out.replace(&w, "<veth>");
        }
    }
    out
}

/// Links as JSON with what the tests compare: name, kind, MTU, flags
/// (without the carrier flags, which race with linkwatch), promiscuity, bridge
/// port hairpin and isolation, controller, a bridge's VLAN filtering. MACs
/// are kept, then normalised.
pub fn links(ns: &Netns) -> Vec<Value> {
    links_json(&ns.sh("ip -d -j link show"))
}

/// [`links`] from the output of `ip -d -j link show` (e.g. from the VM).
pub fn links_json(raw: &str) -> Vec<Value> {
    let raw: Value = serde_json::from_str(raw).expect("ip -j");
    let mut out = Vec::new();
    for l in raw.as_array().expect("array") {
        let mut flags: Vec<Value> = l["flags"].as_array().cloned().unwrap_or_default();
        // NO-CARRIER on an empty bridge follows linkwatch timing, not the plugin.
        flags.retain(|f| f != "LOWER_UP" && f != "M-DOWN" && f != "NO-CARRIER");
        out.push(json!({
            "name": l["ifname"], "kind": l["linkinfo"]["info_kind"], "mtu": l["mtu"],
            "txqlen": l["txqlen"],
            "flags": flags, "mac": l["address"], "promiscuity": l["promiscuity"],
            "master": l["master"],
            "hairpin": l["linkinfo"]["info_slave_data"]["hairpin"],
            "isolated": l["linkinfo"]["info_slave_data"]["isolated"],
            "vlan_filtering": l["linkinfo"]["info_data"]["vlan_filtering"],
        }));
    }
    out
}

/// Global addresses as `dev addr/prefix`.
pub fn addrs(ns: &Netns) -> Vec<String> {
    addrs_json(&ns.sh("ip -j addr show"))
}

/// [`addrs`] from the output of `ip -j addr show`.
pub fn addrs_json(raw: &str) -> Vec<String> {
    let raw: Value = serde_json::from_str(raw).expect("ip -j");
    let mut out = Vec::new();
    for l in raw.as_array().expect("array") {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] != "link" {
                out.push(format!("{} {}/{}", l["ifname"], a["local"], a["prefixlen"]));
            }
        }
    }
    out.sort();
    out
}

/// Whether each interface takes router advertisements (the bridge and the
/// host ends must not: their routes are the plugin's).
pub fn accept_ra(ns: &Netns) -> String {
    ns.try_sh(
        "for d in /proc/sys/net/ipv6/conf/*/; do n=${d%/}; n=${n##*/}; \
         case $n in all|default) continue;; esac; echo \"accept_ra $n=$(cat $d/accept_ra)\"; done",
    )
    .unwrap_or_default()
}

/// What a test compares of a container netns.
pub fn container_state(ns: &Netns, ifname: &str) -> String {
    let mut s = format!("{:?}\n{:?}\n", links(ns), addrs(ns));
    s.push_str(&accept_ra(ns));
    s.push_str(&ns.sh("ip route; ip -6 route | grep -v '^fe80' || true"));
    for key in [
        format!("net/ipv6/conf/{ifname}/accept_dad"),
        format!("net/ipv4/conf/{ifname}/arp_notify"),
    ] {
        let v = ns
            .try_sh(&format!("cat /proc/sys/{key}"))
            .unwrap_or_default();
        s.push_str(&format!("{key}={v}"));
    }
    normalise(&s, &[])
}

/// What a test compares of the host netns: links (bridge MTU and MAC
/// pinning, port hairpin/promisc), addresses, forwarding, the nat rules
/// with their exact chain names, and the nft ruleset.
pub fn host_state(ns: &Netns) -> String {
    let mut s = format!("{:?}\n{:?}\n", links(ns), addrs(ns));
    s.push_str(&accept_ra(ns));
    s.push_str(&ns.sh(
        "cat /proc/sys/net/ipv4/ip_forward; iptables-save -t nat | grep -v '^#'; nft list ruleset",
    ));
    normalise(&s, &[])
}
