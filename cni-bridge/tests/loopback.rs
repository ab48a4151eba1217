//! Ours against the reference loopback plugin, and the own-netns guard.

mod common;

use common::{Node, PluginDir, links, normalise};
use serde_json::{Value, json};
use testbed::{Call, Netns, Outcome};

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "lo", "type": "loopback"})
}

/// `lo`'s flags, operstate and addresses, as `ip -j` reports them.
fn lo_state(ns: &Netns) -> String {
    let mut v = links(ns);
    v.retain(|l| l["name"] == "lo");
    let link: Value = serde_json::from_str(&ns.sh("ip -j link show lo")).expect("ip -j");
    let addr: Value = serde_json::from_str(&ns.sh("ip -j addr show dev lo")).expect("ip -j");
    let addrs: Vec<String> = addr[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{} {}", a["local"], a["prefixlen"], a["scope"]))
        .collect();
    format!("{v:?} {} {addrs:?}", link[0]["operstate"])
}

fn run(node: &Node, cmd: &str, c: Option<&Netns>, conf: &Value) -> Outcome {
    node.call("loopback", cmd, "web-002", c, conf)
}

#[test]
fn add_check_del_match_the_reference_in_every_version() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    for v in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let (a_ns, b_ns) = (Netns::new("la"), Netns::new("lb"));
        // Start from a lo that is down, as in a fresh netns before runc.
        a_ns.sh("ip link set lo down");
        b_ns.sh("ip link set lo down");
        // Before 0.4.0 CHECK is refused (code 1) by both.
        let steps = ["ADD", "CHECK", "DEL", "DEL"];
        let mut prev: Option<Value> = None;
        for step in steps {
            let mut c = conf(v);
            if step == "CHECK" {
                c["prevResult"] = prev.clone().unwrap_or(Value::Null);
            }
            let a = run(&ours, step, Some(&a_ns), &c);
            let b = run(&theirs, step, Some(&b_ns), &c);
            let at = format!("{v} {step}\n ours: {a:?}\n  ref: {b:?}");
            assert_eq!(a.code, b.code, "{at}");
            assert_eq!(
                normalise(&a.stdout, &[&a_ns]),
                normalise(&b.stdout, &[&b_ns]),
                "{at}"
            );
            assert_eq!(lo_state(&a_ns), lo_state(&b_ns), "{at}");
            if step == "ADD" {
                assert!(a_ns.sh("ip -o link show lo").contains(",UP"), "{at}");
                prev = Some(a.json());
            }
        }
        // CHECK on a lo that is down fails on both.
        if v >= "0.4.0" {
            let mut c = conf(v);
            c["prevResult"] = prev.clone().unwrap_or(Value::Null);
            let (a, b) = (
                run(&ours, "CHECK", Some(&a_ns), &c),
                run(&theirs, "CHECK", Some(&b_ns), &c),
            );
            assert_eq!(
                (a.code, a.error_code()),
                (b.code, b.error_code()),
                "{a:?} {b:?}"
            );
        }
    }
}

#[test]
fn del_of_a_deleted_netns_or_without_one_succeeds() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    let gone = Netns::new("lg");
    let path = gone.path().display().to_string();
    drop(gone);
    for node in [&ours, &theirs] {
        let out = Call::new(node.plugins.path().join("loopback"), "DEL", "web-002")
            .in_netns(&node.host)
            .netns(&path)
            .stdin(conf("0.3.1").to_string())
            .run();
        assert!(out.success(), "{out:?}");
        assert!(run(node, "DEL", None, &conf("0.3.1")).success());
    }
}

#[test]
fn bad_input_matches_the_reference() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    let c = Netns::new("lc");
    let gone = Netns::new("lg");
    let gone_path = gone.path().display().to_string();
    drop(gone);
    let mut v999 = conf("0.3.1");
    v999["cniVersion"] = json!("9.9.9");
    let mut v110 = conf("0.3.1");
    v110["cniVersion"] = json!("1.1.0");
    let c_path = c.path().display().to_string();
    // (what, stdin, CNI_NETNS (None: unset), the reference's code)
    let cases: Vec<(&str, String, Option<String>, u64)> = vec![
        ("malformed", "{bad".into(), Some(c_path.clone()), 6),
        ("version", v999.to_string(), Some(c_path.clone()), 1),
        (
            "missing netns",
            conf("0.3.1").to_string(),
            Some(gone_path),
            999,
        ),
        ("unset netns", conf("0.3.1").to_string(), None, 4),
        (
            "not a netns",
            conf("0.3.1").to_string(),
            Some("/etc/hostname".into()),
            999,
        ),
    ];
    for (what, stdin, netns, code) in cases {
        let call = |node: &Node| {
            let call = Call::new(node.plugins.path().join("loopback"), "ADD", "web-002")
                .in_netns(&node.host)
                .stdin(stdin.clone());
            match &netns {
                Some(p) => call.netns(p),
                None => call.unset("CNI_NETNS"),
            }
            .run()
        };
        let (a, b) = (call(&ours), call(&theirs));
        assert_eq!((b.code, b.error_code()), (1, code), "{what}: ref {b:?}");
        assert_eq!(
            (a.code, a.error_code()),
            (b.code, b.error_code()),
            "{what}: {a:?} {b:?}"
        );
    }
    // The reference knows no 1.1.0; ours is tested with it further down.
    let b = Call::new(theirs.plugins.path().join("loopback"), "ADD", "web-002")
        .in_netns(&theirs.host)
        .sandbox(&c)
        .stdin(v110.to_string())
        .run();
    assert_eq!(b.error_code(), 1, "the reference stops at 1.0.0: {b:?}");
}

#[test]
fn never_touches_its_own_netns() {
    let node = Node::new("lo", PluginDir::ours());
    // The plugin runs in node.host; CNI_NETNS names that same netns.
    for cmd in ["ADD", "CHECK", "DEL"] {
        let mut c = conf("1.0.0");
        if cmd == "CHECK" {
            c["prevResult"] =
                json!({"cniVersion": "1.0.0", "interfaces": [], "ips": [], "dns": {}});
        }
        let out = run(&node, cmd, Some(&node.host), &c);
        if cmd == "DEL" {
            assert!(out.success(), "DEL leaves it alone and succeeds: {out:?}");
        } else {
            assert_eq!(out.error_code(), 4, "{cmd}: {out:?}");
        }
        assert!(
            node.host.sh("ip -o link show lo").contains(",UP"),
            "{cmd} took lo down"
        );
    }
}

#[test]
fn chained_loopback_passes_the_previous_result_through_like_the_reference() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    let mut c = conf("0.3.1");
    c["prevResult"] = json!({"cniVersion": "0.3.1",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/x"}],
        "ips": [{"version": "4", "interface": 0, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
        "dns": {}});
    let (a_ns, b_ns) = (Netns::new("la"), Netns::new("lb"));
    let a = run(&ours, "ADD", Some(&a_ns), &c);
    let b = run(&theirs, "ADD", Some(&b_ns), &c);
    assert_eq!((a.code, &a.stdout), (b.code, &b.stdout), "{a:?} {b:?}");
}

#[test]
fn speaks_1_1_0_with_the_1_0_0_result_gc_and_status() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    let (a_ns, b_ns) = (Netns::new("la"), Netns::new("lb"));
    a_ns.sh("ip link set lo down");
    b_ns.sh("ip link set lo down");
    let a = run(&ours, "ADD", Some(&a_ns), &conf("1.1.0"));
    let b = run(&theirs, "ADD", Some(&b_ns), &conf("1.0.0"));
    assert_eq!(
        normalise(&a.stdout, &[&a_ns]),
        normalise(&b.stdout, &[&b_ns]).replace("\"1.0.0\"", "\"1.1.0\""),
        "{a:?} {b:?}"
    );
    assert_eq!(lo_state(&a_ns), lo_state(&b_ns));
    let mut c = conf("1.1.0");
    c["prevResult"] = a.json();
    for cmd in ["CHECK", "GC", "STATUS"] {
        let out = run(&ours, cmd, Some(&a_ns), &c);
        assert!(out.success() && out.stdout.is_empty(), "{cmd}: {out:?}");
        assert_eq!(lo_state(&a_ns), lo_state(&b_ns), "{cmd} changed lo");
    }
    assert!(run(&ours, "DEL", Some(&a_ns), &conf("1.1.0")).success());
    assert!(run(&theirs, "DEL", Some(&b_ns), &conf("1.0.0")).success());
    assert_eq!(lo_state(&a_ns), lo_state(&b_ns));
}

/// Beyond the reference, which checks only that lo is up: an address the
/// ADD result reported for lo must still be there.
#[test]
fn check_finds_a_missing_lo_address_where_the_reference_does_not() {
    let (ours, theirs) = (
        Node::new("lo", PluginDir::ours()),
        Node::new("lr", PluginDir::reference()),
    );
    for node in [&ours, &theirs] {
        let ns = Netns::new("lk");
        let call = |cmd: &str, conf: &Value| {
            node.call_with("loopback", cmd, "web-002", conf)
                .sandbox(&ns)
                .run()
        };
        let add = call("ADD", &conf("1.0.0"));
        assert!(add.success(), "{add:?}");
        let mut c = conf("1.0.0");
        c["prevResult"] = add.json();
        assert!(call("CHECK", &c).success());
        ns.sh("ip addr del 127.0.0.1/8 dev lo");
        let out = call("CHECK", &c);
        if std::ptr::eq(node, &ours) {
            assert_eq!(out.error_code(), 999, "{out:?}");
            assert!(out.stdout.contains("127.0.0.1/8"), "{out:?}");
        } else {
            assert!(out.success(), "the reference checks only the flag: {out:?}");
        }
        // An unreadable prevResult is ignored, as the reference does.
        c["prevResult"] = json!("garbage");
        assert!(call("CHECK", &c).success());
    }
}

/// A config without `cniVersion` (or with an empty one) is 0.1.0 to the
/// spec and the reference: the result comes in 0.1.0's layout
/// (`ip4`/`ip6`), not the current one the reference prints for a version
/// it is given. And the reference's loopback reads no `CNI_ARGS`, so it
/// takes keys it does not know without `IgnoreUnknown`.
#[test]
fn no_version_is_0_1_0_and_cni_args_are_not_read_like_the_reference() {
    let (ours, theirs) = (
        Node::new("lv", PluginDir::ours()),
        Node::new("lw", PluginDir::reference()),
    );
    let unversioned = json!({"name": "lo", "type": "loopback"});
    let empty = json!({"cniVersion": "", "name": "lo", "type": "loopback"});
    for (what, c, args) in [
        ("no cniVersion", &unversioned, None),
        ("an empty cniVersion", &empty, None),
        (
            "unknown CNI_ARGS",
            &conf("0.3.1"),
            Some("FOO=bar;IP=10.244.1.50"),
        ),
        (
            "unknown CNI_ARGS, no version",
            &unversioned,
            Some("FOO=bar"),
        ),
    ] {
        let (a_ns, b_ns) = (Netns::new("la"), Netns::new("lb"));
        let call = |node: &Node, ns: &Netns| {
            let mut call = node
                .call_with("loopback", "ADD", "web-002", c)
                .netns(&ns.path().display().to_string());
            if let Some(a) = args {
                call = call.args(a);
            }
            call.run()
        };
        let (a, b) = (call(&ours, &a_ns), call(&theirs, &b_ns));
        let at = format!("{what}\n ours: {a:?}\n  ref: {b:?}");
        assert_eq!(a.code, b.code, "{at}");
        assert!(a.success(), "{at}");
        assert_eq!(
            normalise(&a.stdout, &[&a_ns]),
            normalise(&b.stdout, &[&b_ns]),
            "{at}"
        );
        assert_eq!(lo_state(&a_ns), lo_state(&b_ns), "{at}");
        if args.is_none() {
            let v = a.json();
            assert_eq!(v["cniVersion"], "0.1.0", "{at}");
            assert_eq!(v["ip4"]["ip"], "127.0.0.1/8", "{at}");
            assert_eq!(v["ip6"]["ip"], "::1/128", "{at}");
            assert!(
                v.get("ips").is_none() && v.get("interfaces").is_none(),
                "{at}"
            );
        }
    }
}
