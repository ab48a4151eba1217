//! Ours against the Go reference bridge plugin. Each side gets its own
//! "node" (a host netns, its own dataDir, its own plugin directory) and its
//! own container netns; after every step the exit status, the stdout JSON,
//! the container netns, the host netns and the leases must match, with
//! MACs, veth names and netns paths normalised.

mod common;

use common::{Node, PluginDir, container_state, host_state, normalise, tutorial};

use serde_json::{Value, json};
use testbed::{Netns, Outcome};

struct Pair {
    ours: Node,
    theirs: Node,
    ours_c: Netns,
    theirs_c: Netns,
}

impl Pair {
    fn new() -> Self {
        Pair {
            ours: Node::new("bo", PluginDir::ours()),
            theirs: Node::new("br", PluginDir::reference()),
            ours_c: Netns::new("co"),
            theirs_c: Netns::new("cr"),
        }
    }

    /// Runs one step on both sides and compares everything.
    fn step(&self, what: &str, cmd: &str, conf: &Value, with_netns: bool) -> (Outcome, Outcome) {
        let a = self.ours.call(
            "bridge",
            cmd,
            "web-002",
            with_netns.then_some(&self.ours_c),
            conf,
        );
        let b = self.theirs.call(
            "bridge",
            cmd,
            "web-002",
            with_netns.then_some(&self.theirs_c),
            conf,
        );
        let at = format!("{what}\n ours: {a:?}\n  ref: {b:?}");
        assert_eq!(a.code, b.code, "exit status differs: {at}");
        if a.success() {
            assert_eq!(
                normalise(&a.stdout, &[&self.ours_c]),
                normalise(&b.stdout, &[&self.theirs_c]),
                "stdout differs: {at}"
            );
        } else {
            assert_eq!(a.error_code(), b.error_code(), "error code differs: {at}");
        }
        self.compare(&at);
        (a, b)
    }

    fn compare(&self, at: &str) {
        assert_eq!(
            container_state(&self.ours_c, "eth0"),
            container_state(&self.theirs_c, "eth0"),
            "container netns differs after {at}"
        );
        assert_eq!(
            host_state(&self.ours.host),
            host_state(&self.theirs.host),
            "host netns differs after {at}"
        );
        assert_eq!(
            self.ours.leases("bridge"),
            self.theirs.leases("bridge"),
            "leases differ after {at}"
        );
    }
}

/// The config CHECK gets: the ADD result as prevResult.
fn with_prev(conf: &Value, add: &Outcome) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = add.json();
    c
}

/// CHECK with the ADD result must pass on ours. The reference (1.1.1)
/// fails its own CHECK right after ADD ("Bridge interface cni0 Mac doesn't
/// match"): it reports the bridge MAC from before it re-pins it. So CHECK
/// is held to the kernel, not to the reference.
fn check_ours(p: &Pair, conf: &Value, add: &Outcome) {
    let out = p.ours.call(
        "bridge",
        "CHECK",
        "web-002",
        Some(&p.ours_c),
        &with_prev(conf, add),
    );
    assert!(out.success(), "CHECK after ADD: {out:?}");
}

#[test]
fn tutorial_config_add_check_del_in_each_version() {
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        let p = Pair::new();
        let conf = tutorial(v);
        let (add, _) = p.step(&format!("{v} ADD"), "ADD", &conf, true);
        // The result's bridge MAC is the bridge's real (pinned) MAC.
        let br_mac = add.json()["interfaces"][0]["mac"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            p.ours.host.sh("ip link show cni0").contains(&br_mac),
            "{add:?}"
        );
        if v != "0.3.1" {
            check_ours(&p, &conf, &add);
        }
        p.step(&format!("{v} DEL"), "DEL", &conf, true);
        p.step(&format!("{v} DEL again"), "DEL", &conf, true);
    }
}

#[test]
fn options_match_the_reference() {
    let base = tutorial("0.4.0");
    let variants = [
        json!({"mtu": 1400}),
        json!({"hairpinMode": true}),
        json!({"promiscMode": true}),
        json!({"isDefaultGateway": true, "ipam": {"type": "host-local",
               "ranges": [[{"subnet": "10.244.1.0/24"}]]}}),
        json!({"isGateway": false, "ipMasq": false}),
        json!({"enabledad": true}),
        json!({"bridge": "kube-br0"}),
        json!({"ipam": {}}),
        json!({"args": {"cni": {"mac": "0a:58:0a:f4:01:09"}}}),
        json!({"runtimeConfig": {"mac": "0a:58:0a:f4:01:0a"}}),
        json!({"macspoofchk": true}),
        json!({"macspoofchk": true, "hairpinMode": true, "mtu": 9000}),
    ];
    for extra in variants {
        let mut conf = base.clone();
        for (k, v) in extra.as_object().expect("object") {
            conf[k] = v.clone();
        }
        let p = Pair::new();
        let (add, _) = p.step(&format!("{extra} ADD"), "ADD", &conf, true);
        if add.success() {
            check_ours(&p, &conf, &add);
        }
        p.step(&format!("{extra} DEL"), "DEL", &conf, true);
    }
}

#[test]
fn bad_input_matches_the_reference() {
    let p = Pair::new();
    let conf = tutorial("0.3.1");
    // Malformed JSON, an unsupported version, a missing netns.
    for (what, bad) in [
        ("malformed", json!("{not json")),
        ("version 9.9.9", {
            let mut c = conf.clone();
            c["cniVersion"] = json!("9.9.9");
            c
        }),
    ] {
        let a = p
            .ours
            .call("bridge", "ADD", "web-002", Some(&p.ours_c), &bad);
        let b = p
            .theirs
            .call("bridge", "ADD", "web-002", Some(&p.theirs_c), &bad);
        assert_eq!(
            (a.code, a.error_code()),
            (b.code, b.error_code()),
            "{what}: {a:?} {b:?}"
        );
    }
    let gone = Netns::new("gone");
    let gone_path = gone.path();
    drop(gone);
    for node in [&p.ours, &p.theirs] {
        let out = node
            .call_with("bridge", "ADD", "web-002", &conf)
            .netns(&gone_path.display().to_string())
            .run();
        assert_ne!(out.code, 0, "{out:?}");
        assert_eq!(out.error_code(), 999, "{out:?}");
    }
    // The reference creates cni0 before it finds the netns missing; ours
    // checks first and creates nothing.
    assert!(p.ours.host.try_sh("ip link show cni0").is_err());
    assert!(p.ours.leases("bridge").is_empty());
    // An interface name too long for the kernel.
    let long = "eth0123456789abcdef";
    let a = testbed::Call::new(p.ours.plugins.path().join("bridge"), "ADD", "web-002")
        .in_netns(&p.ours.host)
        .ifname(long)
        .netns(&p.ours_c.path().display().to_string())
        .stdin(p.ours.conf(&conf))
        .run();
    let b = testbed::Call::new(p.theirs.plugins.path().join("bridge"), "ADD", "web-002")
        .in_netns(&p.theirs.host)
        .ifname(long)
        .netns(&p.theirs_c.path().display().to_string())
        .stdin(p.theirs.conf(&conf))
        .run();
    assert_eq!(
        (a.code, a.error_code()),
        (b.code, b.error_code()),
        "{a:?} {b:?}"
    );
    assert!(p.ours.host.try_sh("ip link show cni0").is_err());
    assert!(p.ours.leases("bridge").is_empty());
    // A duplicate ADD fails on both and leaves the first attachment alone.
    p.step("first ADD", "ADD", &conf, true);
    p.step("duplicate ADD", "ADD", &conf, true);
    p.step("DEL", "DEL", &conf, true);
}

#[test]
fn mac_from_cni_args_matches_the_reference() {
    let p = Pair::new();
    let conf = tutorial("1.0.0");
    let run = |node: &Node, c: &Netns| {
        testbed::Call::new(node.plugins.path().join("bridge"), "ADD", "web-002")
            .in_netns(&node.host)
            .env("PATH", common::PATH)
            .env("CNI_PATH", &node.plugins.path().display().to_string())
            .netns(&c.path().display().to_string())
            .args("IgnoreUnknown=1;K8S_POD_NAME=web-002;MAC=0a:58:0a:f4:01:11")
            .stdin(node.conf(&conf))
            .run()
    };
    let (a, b) = (run(&p.ours, &p.ours_c), run(&p.theirs, &p.theirs_c));
    assert_eq!(a.code, b.code, "{a:?} {b:?}");
    assert!(a.stdout.contains("0a:58:0a:f4:01:11"), "{a:?}");
    p.compare("ADD with CNI_ARGS MAC");
    p.step("DEL", "DEL", &conf, true);
}

#[test]
fn force_address_matches_the_reference() {
    let prepare = |p: &Pair| {
        // The bridge exists with an address from another subnet.
        for node in [&p.ours, &p.theirs] {
            node.host.sh(
                "ip link add cni0 type bridge && ip addr add 10.99.0.1/24 dev cni0 && ip link set cni0 up",
            );
        }
    };
    let conf = tutorial("0.4.0");
    // Without forceAddress both fail. The reference leaves the attachment
    // half made (eth0 configured, the lease taken); ours rolls it back.
    let p = Pair::new();
    prepare(&p);
    let a = p
        .ours
        .call("bridge", "ADD", "web-002", Some(&p.ours_c), &conf);
    let b = p
        .theirs
        .call("bridge", "ADD", "web-002", Some(&p.theirs_c), &conf);
    assert_eq!(
        (a.code, a.error_code()),
        (b.code, b.error_code()),
        "{a:?} {b:?}"
    );
    assert!(!p.ours_c.sh("ip -o link show").contains("eth0"));
    assert!(!p.ours.host.sh("ip -o link show").contains("veth"));
    assert!(
        p.ours
            .leases("bridge")
            .iter()
            .all(|(k, _)| k.starts_with("last_"))
    );
    // With it, the old address is replaced, the same way on both.
    let p = Pair::new();
    prepare(&p);
    let mut forced = conf.clone();
    forced["forceAddress"] = json!(true);
    p.step("ADD with forceAddress", "ADD", &forced, true);
    p.step("DEL", "DEL", &forced, true);
}

#[test]
fn del_without_the_netns_answers_like_the_reference_but_cleans_up() {
    for gone in [true, false] {
        let mut p = Pair::new();
        let conf = tutorial("0.4.0");
        p.step("ADD", "ADD", &conf, true);
        let (a, b) = if gone {
            // The runtime still names the netns it had.
            let (a_path, b_path) = (p.ours_c.path(), p.theirs_c.path());
            p.ours_c = Netns::new("co");
            p.theirs_c = Netns::new("cr");
            let del = |node: &Node, path: &std::path::Path| {
                node.call_with("bridge", "DEL", "web-002", &conf)
                    .netns(&path.display().to_string())
                    .run()
            };
            (del(&p.ours, &a_path), del(&p.theirs, &b_path))
        } else {
            (
                p.ours.call("bridge", "DEL", "web-002", None, &conf),
                p.theirs.call("bridge", "DEL", "web-002", None, &conf),
            )
        };
        assert_eq!(
            (a.code, &a.stdout),
            (b.code, &b.stdout),
            "gone={gone}: {a:?} {b:?}"
        );
        // Both released the lease; only ours removed the masquerade chain.
        assert_eq!(p.ours.leases("bridge"), p.theirs.leases("bridge"));
        let chain = cni_bridge::masq::chain_name("bridge", "web-002");
        assert!(!p.ours.host.sh("iptables-save -t nat").contains(&chain));
        assert!(p.theirs.host.sh("iptables-save -t nat").contains(&chain));
    }
}

/// The bridge's operstate, whether it has carrier, and whether the kernel
/// marks its connected route `linkdown`.
fn bridge_oper(ns: &Netns) -> (String, bool, bool) {
    let l: Value = serde_json::from_str(&ns.sh("ip -j link show cni0")).expect("ip -j");
    let carrier = !l[0]["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f == "NO-CARRIER");
    let linkdown = ns.sh("ip route show dev cni0").contains("linkdown");
    (
        l[0]["operstate"].as_str().unwrap_or("").to_string(),
        carrier,
        linkdown,
    )
}

/// Polls both nodes until their bridges reach `want` (linkwatch applies a
/// carrier change up to a second later), then asserts they agree.
fn settle(p: &Pair, want: (&str, bool, bool), at: &str) {
    let want = (want.0.to_string(), want.1, want.2);
    let t = std::time::Instant::now();
    loop {
        let (a, b) = (bridge_oper(&p.ours.host), bridge_oper(&p.theirs.host));
        if a == want && b == want {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{at}: ours {a:?}, reference {b:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// With a port the bridge is UP with carrier, as the reference's; when the
/// last port goes it loses carrier, goes DOWN and its route `linkdown`.
#[test]
fn operstate_carrier_and_linkdown_match_the_reference() {
    let p = Pair::new();
    let conf = tutorial("0.3.1");
    p.step("ADD", "ADD", &conf, true);
    settle(&p, ("UP", true, false), "after ADD");
    // A second pod and its removal: the bridge stays up with one port.
    let second = |node: &Node, ns: &Netns, cmd: &str| {
        node.call_with("bridge", cmd, "web-003", &conf)
            .netns(&ns.path().display().to_string())
            .ifname("eth0")
            .run()
    };
    let (c2o, c2r) = (Netns::new("c2o"), Netns::new("c2r"));
    assert!(second(&p.ours, &c2o, "ADD").success());
    assert!(second(&p.theirs, &c2r, "ADD").success());
    assert!(second(&p.ours, &c2o, "DEL").success());
    assert!(second(&p.theirs, &c2r, "DEL").success());
    settle(&p, ("UP", true, false), "after a second pod came and went");
    p.step("DEL", "DEL", &conf, true);
    settle(&p, ("DOWN", false, true), "after the last DEL");
    // A pod on the port-less bridge brings it back up.
    p.step("ADD again", "ADD", &conf, true);
    settle(&p, ("UP", true, false), "after ADD on the emptied bridge");
    p.step("DEL again", "DEL", &conf, true);
}

/// `CNI_ARGS` keys the bridge does not know are refused, on ADD and on DEL,
/// unless `IgnoreUnknown` is set, as the reference refuses them; then the
/// IPAM plugin takes `IP=` as the address. The code is the spec's 4 (bad
/// environment) where the reference says 999 (README), with its message.
#[test]
fn unknown_cni_args_are_refused_unless_ignored_like_the_reference() {
    let p = Pair::new();
    let conf = tutorial("0.3.1");
    let call = |node: &Node, ns: &Netns, cmd: &str, args: &str| {
        node.call_with("bridge", cmd, "web-002", &conf)
            .netns(&ns.path().display().to_string())
            .args(args)
            .run()
    };
    for cmd in ["ADD", "DEL"] {
        for args in ["IP=10.244.1.50", "FOO=bar;MAC=0a:58:0a:f4:01:11"] {
            let a = call(&p.ours, &p.ours_c, cmd, args);
            let b = call(&p.theirs, &p.theirs_c, cmd, args);
            let at = format!("{cmd} {args}\n ours: {a:?}\n  ref: {b:?}");
            assert!(!a.success() && !b.success(), "{at}");
            assert_eq!((a.error_code(), b.error_code()), (4, 999), "{at}");
            assert_eq!(a.json()["msg"], b.json()["msg"], "{at}");
            // Nothing made: no bridge, no veth, no lease.
            p.compare(&at);
            assert!(p.ours.host.try_sh("ip link show cni0").is_err(), "{at}");
        }
    }
    let ignored = "IgnoreUnknown=1;IP=10.244.1.50;K8S_POD_NAME=web-002";
    let a = call(&p.ours, &p.ours_c, "ADD", ignored);
    let b = call(&p.theirs, &p.theirs_c, "ADD", ignored);
    assert!(a.success() && b.success(), "{a:?} {b:?}");
    assert_eq!(
        normalise(&a.stdout, &[&p.ours_c]),
        normalise(&b.stdout, &[&p.theirs_c]),
    );
    assert_eq!(a.json()["ips"][0]["address"], "10.244.1.50/24", "{a:?}");
    p.compare("ADD with IgnoreUnknown");
    let a = call(&p.ours, &p.ours_c, "DEL", ignored);
    let b = call(&p.theirs, &p.theirs_c, "DEL", ignored);
    assert!(a.success() && b.success(), "{a:?} {b:?}");
    p.compare("DEL with IgnoreUnknown");
}
