//! Ours against the reference loopback plugin, and the own-netns guard.

mod common;

use common::{Node, PluginDir, links, normalise};
use serde_json::{Value, json};
use testbed::{Call, Netns, Outcome};

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "lo", "type": "loopback"})
}

fn lo_state(ns: &Netns) -> String {
    let mut v = links(ns);
    v.retain(|l| l["name"] == "lo");
    format!(
        "{v:?} {}",
        ns.sh("ip -o addr show dev lo | sed 's/^[0-9]*: //; s/ valid_lft.*//'")
    )
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
        let mut steps = vec!["ADD"];
        if v >= "0.4.0" {
            steps.push("CHECK");
        }
        steps.extend(["DEL", "DEL"]);
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
    let cases: Vec<(&str, String, Option<String>)> = vec![
        ("malformed", "{bad".into(), None),
        ("version", v999.to_string(), None),
        ("missing netns", conf("0.3.1").to_string(), Some(gone_path)),
    ];
    for (what, stdin, netns) in cases {
        let call = |node: &Node| {
            Call::new(node.plugins.path().join("loopback"), "ADD", "web-002")
                .in_netns(&node.host)
                .netns(netns.as_deref().unwrap_or(&c.path().display().to_string()))
                .stdin(stdin.clone())
                .run()
        };
        let (a, b) = (call(&ours), call(&theirs));
        assert_ne!(a.code, 0, "{what}: {a:?}");
        assert_eq!(
            (a.code, a.error_code()),
            (b.code, b.error_code()),
            "{what}: {a:?} {b:?}"
        );
    }
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
