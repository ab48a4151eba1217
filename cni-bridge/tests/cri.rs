//! The kubelet's real CNI path: containerd's CRI plugin (driven by
//! `crictl`, as the kubelet drives it) runs the plugins from its
//! `cni.bin_dir` with the tutorial's conflist, inside a node netns. The
//! same scenario with ours and with the Go reference plugins, side by
//! side: `crictl runp` brings the sandbox up with an address from
//! host-local, its veth on cni0 and the masquerade chain; `stopp` and
//! `rmp` release the lease and remove the veth and the chain. The node's
//! kernel state is compared after each step.

mod common;

use std::path::PathBuf;

use common::{addrs, links, normalise};
use testbed::cri::{CriNode, crictl};
use testbed::image::static_bin;

/// The node's netns as the two sides must agree on it: links, addresses,
/// routes, the bridge's operstate and the nat table, with the sandbox ID,
/// the chain name derived from it, MACs and veth names normalised.
fn node_state(n: &CriNode, sandbox: &str) -> String {
    let ns = n.ns();
    let mut s = format!("{:?}\n{:?}\n", links(ns), addrs(ns));
    s.push_str(&ns.sh("ip route"));
    s.push_str(&common::accept_ra(ns));
    s.push_str(&ns.sh("iptables-save -t nat | grep -v '^#'"));
    let mut s = normalise(&s, &[]);
    if !sandbox.is_empty() {
        let chain = cni_bridge::masq::chain_name("bridge", sandbox);
        s = s.replace(&chain, "<chain>").replace(sandbox, "<sandbox>");
    }
    s
}

/// The bridge's operstate, polled until linkwatch has applied the carrier
/// (up to a second after a port changes).
fn operstate(n: &CriNode, want: &str) -> String {
    let t = std::time::Instant::now();
    loop {
        let got = n
            .ns()
            .sh("cat /sys/class/net/cni0/operstate")
            .trim()
            .to_string();
        if got == want || t.elapsed() > std::time::Duration::from_secs(5) {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Side {
    node: CriNode,
    label: &'static str,
}

fn start(tag: &str, label: &'static str, plugins: PathBuf) -> Side {
    Side {
        node: CriNode::start(tag, &plugins, &static_bin("pause"), &crictl()),
        label,
    }
}

#[test]
fn crictl_runp_stopp_rmp_with_ours_and_with_the_reference() {
    let ours_dir = static_bin("bridge")
        .parent()
        .expect("static dir")
        .to_path_buf();
    let theirs_dir = testbed::reference_plugin("bridge")
        .parent()
        .expect("reference dir")
        .to_path_buf();
    let sides = [
        start("crio", "ours", ours_dir),
        start("crir", "reference", theirs_dir),
    ];
    let mut up = Vec::new();
    for s in &sides {
        let n = &s.node;
        let (id, took) = n.runp("web-002");
        eprintln!("{}: crictl runp {took:?}", s.label);
        assert!(n.ready(&id), "{}: sandbox not ready", s.label);
        let ip = n.pod_ip(&id);
        // The first address host-local hands out after the gateway.
        assert_eq!(ip, "10.244.1.2", "{}", s.label);
        assert_eq!(
            n.leases(),
            vec![("10.244.1.2".to_string(), format!("{id}\r\neth0"))],
            "{}",
            s.label
        );
        let ports = n.ns().sh("ip -o link show master cni0");
        assert_eq!(ports.lines().count(), 1, "{}: {ports}", s.label);
        assert!(ports.contains("veth"), "{}: {ports}", s.label);
        let nat = n.ns().sh("iptables-save -t nat");
        let chain = cni_bridge::masq::chain_name("bridge", &id);
        assert!(
            nat.contains(&format!(":{chain} ")) && nat.contains(&format!("id: \\\"{id}\\\"")),
            "{}: {nat}",
            s.label
        );
        assert_eq!(operstate(n, "up"), "up", "{}", s.label);
        up.push((node_state(n, &id), id));
    }
    assert_eq!(up[0].0, up[1].0, "the node after runp differs");

    let mut down = Vec::new();
    for (s, (_, id)) in sides.iter().zip(&up) {
        let n = &s.node;
        let took = n.stopp(id);
        eprintln!("{}: crictl stopp {took:?}", s.label);
        n.rmp(id);
        assert!(n.leases().is_empty(), "{}: {:?}", s.label, n.leases());
        assert!(
            n.ns().sh("ip -o link show master cni0").trim().is_empty(),
            "{}: a port is left",
            s.label
        );
        let nat = n.ns().sh("iptables-save -t nat");
        assert!(!nat.contains("CNI-"), "{}: {nat}", s.label);
        let sandboxes = String::from_utf8_lossy(&n.crictl(&["pods", "-q"]).stdout).into_owned();
        assert!(sandboxes.trim().is_empty(), "{}: {sandboxes}", s.label);
        assert_eq!(operstate(n, "down"), "down", "{}", s.label);
        down.push(node_state(n, ""));
    }
    assert_eq!(down[0], down[1], "the node after stopp and rmp differs");
}
