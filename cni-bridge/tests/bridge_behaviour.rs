//! Where ours goes beyond the reference, and what a node needs of it:
//! cleanup without the netns, rollback of a failed ADD, a chain shared by
//! two interfaces, pods reaching each other, parallel calls, interop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use cni_bridge::masq::chain_name;
use cni_bridge::netns::run_in;
use common::{Node, PluginDir, tutorial};
use serde_json::{Value, json};
use testbed::{Netns, Outcome};

fn nat(node: &Node) -> String {
    node.host.sh("iptables-save -t nat | grep -v '^#'")
}

fn host_links(node: &Node) -> String {
    node.host.sh("ip -o link show")
}

fn ok(out: Outcome) -> Outcome {
    assert!(out.success(), "{out:?}");
    out
}

fn ip_of(out: &Outcome) -> String {
    let v = out.json();
    let a = v["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    a.split('/').next().unwrap_or_default().to_string()
}

#[test]
fn del_without_netns_still_removes_masquerade_and_lease() {
    let node = Node::new("dn", PluginDir::ours());
    let conf = tutorial("0.4.0");
    let chain = chain_name("bridge", "web-002");
    for gone in [true, false] {
        let c = Netns::new("c");
        ok(node.call("bridge", "ADD", "web-002", Some(&c), &conf));
        assert!(nat(&node).contains(&chain));
        let del = if gone {
            let path = c.path();
            drop(c);
            assert!(!path.exists());
            // The runtime still names the netns it used.
            node.call_with("bridge", "DEL", "web-002", &conf)
                .netns(&path.display().to_string())
                .run()
        } else {
            node.call("bridge", "DEL", "web-002", None, &conf)
        };
        ok(del);
        let rules = nat(&node);
        assert!(!rules.contains(&chain), "netns gone={gone}: {rules}");
        let leases: Vec<_> = node
            .leases("bridge")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("last_"))
            .collect();
        assert!(leases.is_empty(), "{leases:?}");
    }
}

#[test]
fn failed_add_leaves_nothing_behind() {
    let node = Node::new("fa", PluginDir::ours());
    // Fails after IPAM: IPAM sets a default route through another gateway.
    let mut conf = tutorial("0.4.0");
    conf["isDefaultGateway"] = json!(true);
    conf["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.254"}]);
    let c = Netns::new("c");
    let out = node.call("bridge", "ADD", "web-002", Some(&c), &conf);
    assert!(!out.success(), "{out:?}");
    assert!(!host_links(&node).contains("veth"), "{}", host_links(&node));
    assert!(
        node.host.try_sh("ip link show cni0").is_err(),
        "the bridge this call made is gone"
    );
    assert!(!c.sh("ip -o link show").contains("eth0"));
    let leases: Vec<_> = node
        .leases("bridge")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("last_"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    assert!(!nat(&node).contains("CNI-"));

    // Fails in IPAM (no such plugin) on a bridge that already exists: the
    // bridge stays, the veth goes.
    let other = Netns::new("o");
    ok(node.call("bridge", "ADD", "other", Some(&other), &tutorial("0.4.0")));
    let mut conf = tutorial("0.4.0");
    conf["ipam"] = json!({"type": "no-such-ipam"});
    let c2 = Netns::new("c");
    let out = node.call("bridge", "ADD", "web-003", Some(&c2), &conf);
    assert!(!out.success(), "{out:?}");
    assert_eq!(host_links(&node).matches("veth").count(), 1);
    assert!(node.host.try_sh("ip link show cni0").is_ok());
}

#[test]
fn two_interfaces_share_a_chain_and_del_of_one_keeps_the_other() {
    let node = Node::new("tw", PluginDir::ours());
    let c = Netns::new("c");
    let conf = tutorial("0.4.0");
    let call = |cmd: &str, ifname: &str| {
        node.call_with("bridge", cmd, "web-002", &conf)
            .netns(&c.path().display().to_string())
            .ifname(ifname)
            .run()
    };
    let eth0 = ip_of(&ok(call("ADD", "eth0")));
    let net1 = ip_of(&ok(call("ADD", "net1")));
    let chain = chain_name("bridge", "web-002");
    let rules = nat(&node);
    assert_eq!(rules.matches(&format!("-j {chain}")).count(), 2, "{rules}");
    ok(call("DEL", "eth0"));
    let rules = nat(&node);
    assert!(!rules.contains(&format!("-s {eth0}/32")), "{rules}");
    assert!(
        rules.contains(&format!("-A POSTROUTING -s {net1}/32")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("-A {chain} ! -d 224.0.0.0/4")),
        "{rules}"
    );
    ok(call("DEL", "net1"));
    assert!(!nat(&node).contains(&chain));
}

/// A one-shot TCP echo server inside `ns`, on `addr`.
fn echo_server(ns: &Netns, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = run_in(&ns.path(), || TcpListener::bind(addr))
        .expect("enter netns")
        .expect("bind");
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    })
}

fn echo_from(ns: &Netns, to: SocketAddr) -> String {
    run_in(&ns.path(), || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"heartful")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .expect("enter netns")
    .unwrap_or_else(|e| panic!("echo to {to}: {e}"))
}

#[test]
fn pods_reach_each_other_and_the_gateway_over_tcp() {
    let node = Node::new("re", PluginDir::ours());
    let conf = tutorial("0.3.1");
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let ip_a = ip_of(&ok(node.call("bridge", "ADD", "web-001", Some(&a), &conf)));
    let ip_b = ip_of(&ok(node.call("bridge", "ADD", "web-002", Some(&b), &conf)));
    let to_b: SocketAddr = format!("{ip_b}:8080").parse().expect("addr");
    let server = echo_server(&b, to_b);
    assert_eq!(echo_from(&a, to_b), "heartful");
    server.join().expect("server");
    let to_a: SocketAddr = format!("{ip_a}:8080").parse().expect("addr");
    let server = echo_server(&a, to_a);
    assert_eq!(echo_from(&b, to_a), "heartful");
    server.join().expect("server");
    // The gateway is the bridge's address in the node's netns.
    let gw: SocketAddr = "10.244.1.1:9090".parse().expect("addr");
    let server = echo_server(&node.host, gw);
    assert_eq!(echo_from(&a, gw), "heartful");
    server.join().expect("server");
    ok(node.call("bridge", "DEL", "web-001", Some(&a), &conf));
    ok(node.call("bridge", "DEL", "web-002", Some(&b), &conf));
}

#[test]
fn parallel_adds_and_dels() {
    const N: usize = 64;
    let node = Node::new("pa", PluginDir::ours());
    let conf = tutorial("0.3.1");
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("p")).collect();
    let run_all = |cmd: &'static str| -> Vec<Outcome> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let node = &node;
                    let conf = &conf;
                    s.spawn(move || node.call("bridge", cmd, &format!("pod-{i}"), Some(ns), conf))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        })
    };
    let adds = run_all("ADD");
    let mut ips: Vec<String> = adds.iter().map(|o| ip_of(&ok(o.clone()))).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "distinct addresses");
    assert_eq!(host_links(&node).matches("master cni0").count(), N);
    for ns in &pods {
        assert!(ns.sh("ip -o addr show eth0").contains("10.244.1."));
    }
    for out in run_all("DEL") {
        ok(out);
    }
    assert!(!host_links(&node).contains("veth"));
    assert!(!nat(&node).contains("CNI-"));
    let leases: Vec<_> = node
        .leases("bridge")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("last_"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
}

#[test]
fn reference_and_ours_release_each_others_attachments() {
    // One node, one lease directory and one bridge, two plugin builds.
    let ours = Node::new("io", PluginDir::ours());
    let theirs_dir = PluginDir::reference();
    let call = |dir: &std::path::Path, cmd: &str, id: &str, ns: &Netns, conf: &Value| {
        testbed::Call::new(dir.join("bridge"), cmd, id)
            .in_netns(&ours.host)
            .env("PATH", common::PATH)
            .env("CNI_PATH", &dir.display().to_string())
            .netns(&ns.path().display().to_string())
            .stdin(ours.conf(conf))
            .run()
    };
    let conf = tutorial("0.4.0");
    let (x, y) = (Netns::new("x"), Netns::new("y"));
    // Reference ADD, our CHECK and DEL.
    let add = ok(call(theirs_dir.path(), "ADD", "ref-made", &x, &conf));
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = add.json();
    // The reference's own result names a stale bridge MAC (see the
    // differential test), so CHECK it without the bridge entry's MAC.
    with_prev["prevResult"]["interfaces"][0]["mac"] = json!("");
    ok(call(
        ours.plugins.path(),
        "CHECK",
        "ref-made",
        &x,
        &with_prev,
    ));
    ok(call(ours.plugins.path(), "DEL", "ref-made", &x, &conf));
    // Our ADD, reference DEL.
    ok(call(ours.plugins.path(), "ADD", "ours-made", &y, &conf));
    ok(call(theirs_dir.path(), "DEL", "ours-made", &y, &conf));
    assert!(!host_links(&ours).contains("veth"));
    assert!(!nat(&ours).contains("CNI-"));
    let leases: Vec<_> = ours
        .leases("bridge")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("last_"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
}

fn nft_masq(node: &Node) -> String {
    node.host
        .try_sh("nft list table inet cni_plugins_masquerade")
        .unwrap_or_default()
}

#[test]
fn nftables_masquerade_backend() {
    let node = Node::new("nf", PluginDir::ours());
    let mut conf = tutorial("1.0.0");
    conf["ipMasqBackend"] = json!("nftables");
    let chain = chain_name("bridge", "web-002");
    let c = Netns::new("c");
    let call = |cmd: &str, ifname: &str, netns: Option<&Netns>| {
        let mut call = node
            .call_with("bridge", cmd, "web-002", &conf)
            .ifname(ifname);
        call = match netns {
            Some(ns) => call.netns(&ns.path().display().to_string()),
            None => call.unset("CNI_NETNS"),
        };
        call.run()
    };
    let add = ok(call("ADD", "eth0", Some(&c)));
    let ip = ip_of(&add);
    let table = nft_masq(&node);
    assert!(table.contains(&format!("{ip} : jump {chain}")), "{table}");
    assert!(table.contains("ip daddr 10.244.1.0/24 accept"), "{table}");
    assert!(
        table.contains("ip daddr != 224.0.0.0/4 masquerade"),
        "{table}"
    );
    assert!(
        !nat(&node).contains("CNI-"),
        "no iptables rules with this backend"
    );
    // CHECK sees the map entry; a repeated ADD of a second interface shares the chain.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = add.json();
    let check = node
        .call_with("bridge", "CHECK", "web-002", &with_prev)
        .netns(&c.path().display().to_string())
        .run();
    ok(check);
    let ip2 = ip_of(&ok(call("ADD", "net1", Some(&c))));
    ok(call("DEL", "eth0", Some(&c)));
    let table = nft_masq(&node);
    assert!(!table.contains(&format!("{ip} :")), "{table}");
    assert!(table.contains(&format!("{ip2} : jump {chain}")), "{table}");
    // The netns is gone: DEL still clears the entry and the chain.
    drop(c);
    ok(call("DEL", "net1", None));
    let table = nft_masq(&node);
    assert!(!table.contains(&chain), "{table}");
}

#[test]
fn port_isolation_and_disabled_container_interface() {
    let node = Node::new("pi", PluginDir::ours());
    let mut conf = tutorial("1.0.0");
    conf["portIsolation"] = json!(true);
    let c = Netns::new("c");
    ok(node.call("bridge", "ADD", "web-002", Some(&c), &conf));
    let port = node.host.sh("ip -d -j link show master cni0");
    assert!(port.contains("\"isolated\":true"), "{port}");
    ok(node.call("bridge", "DEL", "web-002", Some(&c), &conf));

    let mut conf = tutorial("1.0.0");
    conf["disableContainerInterface"] = json!(true);
    let out = node.call("bridge", "ADD", "web-003", Some(&c), &conf);
    assert_eq!(
        out.error_code(),
        7,
        "IPAM and a disabled interface: {out:?}"
    );
    conf["ipam"] = json!({});
    conf["ipMasq"] = json!(false);
    ok(node.call("bridge", "ADD", "web-003", Some(&c), &conf));
    let eth0 = c.sh("ip -o link show eth0");
    assert!(!eth0.contains(",UP"), "{eth0}");
    ok(node.call("bridge", "DEL", "web-003", Some(&c), &conf));
}

#[test]
fn gc_removes_what_no_valid_attachment_names_and_status_asks_ipam() {
    for backend in ["iptables", "nftables"] {
        let node = Node::new("gc", PluginDir::ours());
        let mut conf = tutorial("1.1.0");
        conf["ipMasqBackend"] = json!(backend);
        let (a, b) = (Netns::new("a"), Netns::new("b"));
        ok(node.call("bridge", "ADD", "keep", Some(&a), &conf));
        ok(node.call("bridge", "ADD", "leak", Some(&b), &conf));
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
        let out = node
            .call_with("bridge", "GC", "", &gc)
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run();
        ok(out);
        let rules = if backend == "iptables" {
            nat(&node)
        } else {
            nft_masq(&node)
        };
        assert!(
            rules.contains(&chain_name("bridge", "keep")),
            "{backend}: {rules}"
        );
        assert!(
            !rules.contains(&chain_name("bridge", "leak")),
            "{backend}: {rules}"
        );
        let owners: Vec<String> = node.leases("bridge").into_iter().map(|(_, v)| v).collect();
        assert!(owners.iter().any(|o| o.starts_with("keep")), "{owners:?}");
        assert!(!owners.iter().any(|o| o.starts_with("leak")), "{owners:?}");
    }
    let node = Node::new("st", PluginDir::ours());
    let conf = tutorial("1.1.0");

    // STATUS is IPAM's: a /30 with its one address taken is code 50.
    let mut small = conf.clone();
    small["name"] = json!("small");
    small["bridge"] = json!("cni1");
    small["ipam"]["ranges"] = json!([[{"subnet": "10.9.0.0/30"}]]);
    let status = || {
        node.call_with("bridge", "STATUS", "", &small)
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run()
    };
    ok(status());
    let s = Netns::new("s");
    ok(node.call("bridge", "ADD", "only", Some(&s), &small));
    assert_eq!(status().error_code(), 50);
}

/// Whether this kernel has bridge VLAN filtering, asked in a scratch netns.
fn kernel_filters_vlans() -> bool {
    Netns::new("vp")
        .try_sh("ip link add br0 type bridge vlan_filtering 1")
        .is_ok()
}

fn with(extra: &Value) -> Value {
    let mut conf = tutorial("1.0.0");
    for (k, v) in extra.as_object().expect("object") {
        conf[k] = v.clone();
    }
    conf
}

/// On a kernel without bridge VLAN filtering (this host's; the VM test
/// `vlan_vm.rs` covers one with it) the kernel's EOPNOTSUPP becomes CNI
/// code 2 naming the field, and nothing is left: no bridge, veth or lease,
/// and a bridge that existed is as it was.
#[test]
fn vlan_without_kernel_support_fails_clearly_and_leaves_nothing() {
    if kernel_filters_vlans() {
        eprintln!("this kernel filters VLANs: the VM test covers the VLAN options");
        return;
    }
    let node = Node::new("vl", PluginDir::ours());
    let no_leases = |node: &Node| {
        node.leases("bridge")
            .iter()
            .all(|(k, _)| k.starts_with("last_"))
    };
    for (extra, field) in [
        (json!({"vlan": 100}), r#""vlan" = 100"#),
        (
            json!({"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}]}),
            r#""vlanTrunk" = [{"id":101},{"minID":200,"maxID":202}]"#,
        ),
        // Present but empty still asks for filtering, as in the reference.
        (json!({"vlanTrunk": []}), r#""vlanTrunk" = []"#),
        (
            json!({"vlan": 7, "preserveDefaultVlan": false}),
            r#""vlan" = 7"#,
        ),
    ] {
        let conf = with(&extra);
        let c = Netns::new("c");
        let out = node.call("bridge", "ADD", "web-002", Some(&c), &conf);
        assert_eq!(out.error_code(), 2, "{extra}: {out:?}");
        let msg = out.json()["msg"].as_str().unwrap_or("").to_string();
        assert!(msg.contains("VLAN filtering"), "{msg}");
        assert!(msg.contains(field), "{field} in {msg}");
        assert!(msg.contains("Operation not supported"), "{msg}");
        assert!(node.host.try_sh("ip link show cni0").is_err(), "{extra}");
        assert!(!host_links(&node).contains("veth"), "{extra}");
        assert!(!c.sh("ip -o link show").contains("eth0"), "{extra}");
        assert!(no_leases(&node), "{extra}");
        // DEL of the failed attachment succeeds (nothing to remove).
        ok(node.call("bridge", "DEL", "web-002", Some(&c), &conf));
    }
    // The bridge exists (made without filtering): it stays, unchanged,
    // with its port, and the new attachment leaves nothing.
    let other = Netns::new("o");
    ok(node.call("bridge", "ADD", "other", Some(&other), &tutorial("1.0.0")));
    // Links, flags, MACs, the bridge's addresses and options (no timers).
    let state = |node: &Node| {
        let opts = node
            .host
            .sh("ip -d link show cni0 | grep -o 'vlan_filtering [0-9]\\|stp_state [0-9]'");
        (host_links(node), node.host.sh("ip addr show cni0"), opts)
    };
    let before = state(&node);
    let c = Netns::new("c");
    let out = node.call(
        "bridge",
        "ADD",
        "web-002",
        Some(&c),
        &with(&json!({"vlan": 100})),
    );
    assert_eq!(out.error_code(), 2, "{out:?}");
    assert!(out.stdout.contains("setting vlan_filtering 1"), "{out:?}");
    assert_eq!(state(&node), before);
    assert!(!c.sh("ip -o link show").contains("eth0"));
    assert_eq!(
        node.leases("bridge").len(),
        2,
        "other's lease and last_reserved_ip"
    );
}

/// The VLAN options are checked before anything is made, with the
/// reference's messages (code 999, as its plain errors are); `vlan` out
/// of range also against the reference itself.
#[test]
fn vlan_options_are_validated_like_the_reference() {
    let ours = Node::new("vo", PluginDir::ours());
    let theirs = Node::new("vr", PluginDir::reference());
    for vlan in [-1, 4095] {
        let conf = with(&json!({ "vlan": vlan }));
        let (c1, c2) = (Netns::new("c"), Netns::new("c"));
        let a = ours.call("bridge", "ADD", "web-002", Some(&c1), &conf);
        let b = theirs.call("bridge", "ADD", "web-002", Some(&c2), &conf);
        assert_eq!(
            (a.code, a.error_code(), &a.json()["msg"]),
            (b.code, b.error_code(), &b.json()["msg"]),
            "vlan {vlan}"
        );
        assert_eq!(
            a.json()["msg"],
            format!("invalid VLAN ID {vlan} (must be between 0 and 4094)")
        );
    }
    // Trunk rules of the reference's later releases (1.1.1 has no trunk).
    for (trunk, msg) in [
        (
            json!([{"minID": 0, "maxID": 10}]),
            "incorrect trunk minID parameter",
        ),
        (
            json!([{"minID": 1, "maxID": 4095}]),
            "incorrect trunk maxID parameter",
        ),
        (
            json!([{"minID": 20, "maxID": 10}]),
            "minID is greater than maxID in trunk parameter",
        ),
        (
            json!([{"maxID": 10}]),
            "minID and maxID should be configured simultaneously, minID is missing",
        ),
        (
            json!([{"minID": 10}]),
            "minID and maxID should be configured simultaneously, maxID is missing",
        ),
        (json!([{"id": 4095}]), "incorrect trunk id parameter"),
    ] {
        let out = ours.call(
            "bridge",
            "ADD",
            "web-002",
            Some(&Netns::new("c")),
            &with(&json!({ "vlanTrunk": trunk })),
        );
        assert_eq!(
            (out.error_code(), out.json()["msg"].clone()),
            (999, json!(msg))
        );
    }
    let both = with(&json!({"vlan": 100, "vlanTrunk": [{"id": 5}]}));
    for cmd in ["ADD", "DEL"] {
        let out = ours.call("bridge", cmd, "web-002", Some(&Netns::new("c")), &both);
        assert_eq!(
            (out.error_code(), out.json()["msg"].clone()),
            (999, json!("cannot set vlan and vlanTrunk at the same time")),
            "{cmd}"
        );
    }
    // A gateway interface name the kernel would refuse: code 7, up front.
    let long = with(&json!({"bridge": "kube-bridge-01", "vlan": 100}));
    let out = ours.call("bridge", "ADD", "web-002", Some(&Netns::new("c")), &long);
    assert_eq!(out.error_code(), 7, "{out:?}");
    assert!(out.stdout.contains("kube-bridge-01.100"), "{out:?}");
    assert!(!host_links(&ours).contains("kube-bridge"));
    assert!(!host_links(&ours).contains("veth"));
}

#[test]
fn check_compares_the_previous_result_with_the_kernel() {
    let node = Node::new("ck", PluginDir::ours());
    let conf = tutorial("1.0.0");
    let c = Netns::new("c");
    let add = ok(node.call("bridge", "ADD", "web-002", Some(&c), &conf));
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = add.json();
    let check = || node.call("bridge", "CHECK", "web-002", Some(&c), &with_prev);
    ok(check());
    // Each break of the attachment is found.
    let chain = chain_name("bridge", "web-002");
    let ip = ip_of(&add);
    type Step<'a> = Box<dyn Fn() + 'a>;
    let breaks: [(&str, Step, Step); 3] = [
        (
            "route",
            Box::new(|| {
                c.sh("ip route del default");
            }),
            Box::new(|| {
                c.sh("ip route add default via 10.244.1.1 dev eth0");
            }),
        ),
        (
            "masquerade",
            Box::new(|| {
                node.host.sh(&format!("iptables -t nat -D POSTROUTING -s {ip}/32 -m comment --comment 'name: \"bridge\" id: \"web-002\"' -j {chain}"));
            }),
            Box::new(|| {
                node.host.sh(&format!("iptables -t nat -A POSTROUTING -s {ip}/32 -m comment --comment 'name: \"bridge\" id: \"web-002\"' -j {chain}"));
            }),
        ),
        (
            "address",
            Box::new(|| {
                c.sh(&format!("ip addr del {ip}/24 dev eth0"));
            }),
            Box::new(|| {}),
        ),
    ];
    for (what, break_it, mend) in breaks {
        break_it();
        let out = check();
        assert!(!out.success(), "CHECK missed a broken {what}: {out:?}");
        mend();
    }
    ok(node.call("bridge", "DEL", "web-002", Some(&c), &conf));
}
