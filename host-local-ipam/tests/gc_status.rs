//! The 1.1.0 commands the reference (1.1.1) does not have: GC and STATUS,
//! and VERSION negotiation.

mod common;

use std::path::Path;

use common::{NET, conf, leases, netconf, ours, result_ips};
use serde_json::{Value, json};
use testbed::{Call, Outcome};

fn call(cmd: &str, id: &str, ifname: &str, netconf: &Value, dir: &Path) -> Outcome {
    Call::new(ours(), cmd, id)
        .ifname(ifname)
        .stdin(conf(netconf.clone(), dir))
        .run()
}

fn owners(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = leases(dir).into_values().collect();
    v.sort();
    v
}

#[test]
fn gc_releases_every_lease_not_in_valid_attachments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let base = netconf(
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:10::/120"}]]}),
    );
    for (id, ifname) in [("a", "eth0"), ("a", "net1"), ("b", "eth0"), ("c", "eth0")] {
        let out = call("ADD", id, ifname, &base, dir);
        assert!(out.success(), "{out:?}");
        assert_eq!(out.json()["cniVersion"], "1.1.0");
    }
    // A lease from before ifnames were recorded, and one from the reference.
    std::fs::write(dir.join(NET).join("10.1.2.200"), "old-pod").expect("write");
    std::fs::write(dir.join(NET).join("10.1.2.201"), "keep-old").expect("write");

    let mut gc = base.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "a", "ifname": "eth0"},
        {"containerID": "c", "ifname": "eth0"},
        {"containerID": "keep-old", "ifname": "eth0"},
        {"containerID": "never-added", "ifname": "eth0"}
    ]);
    let out = call("GC", "", "", &gc, dir);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        owners(dir),
        [
            "a\r\neth0",
            "a\r\neth0",
            "c\r\neth0",
            "c\r\neth0",
            "keep-old"
        ]
    );
    // DEL still works for the survivors and GC with an empty list clears all.
    assert!(call("DEL", "a", "eth0", &base, dir).success());
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(call("GC", "", "", &gc, dir).success());
    assert!(leases(dir).is_empty());
}

#[test]
fn gc_and_status_need_version_1_1_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for cmd in ["GC", "STATUS"] {
        let old = netconf("1.0.0", json!({"subnet": "10.1.2.0/24"}));
        let out = call(cmd, "", "", &old, tmp.path());
        assert_eq!(out.error_code(), 1, "{cmd}: {out:?}");
    }
}

#[test]
fn status_reports_code_50_when_a_range_set_is_full() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Two usable addresses in v4 (.1 is the gateway), plenty in v6.
    let conf = netconf(
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/29", "rangeEnd": "10.1.2.3"}],
                          [{"subnet": "fd00:10::/120"}]]}),
    );
    let status = || call("STATUS", "", "", &conf, dir);
    let out = status();
    assert!(out.success() && out.stdout.is_empty(), "{out:?}");
    assert!(call("ADD", "a", "eth0", &conf, dir).success());
    assert!(status().success());
    let out = call("ADD", "b", "eth0", &conf, dir);
    assert_eq!(result_ips(&out), ["10.1.2.3", "fd00:10::3"]);
    let out = status();
    assert_eq!(out.error_code(), 50, "{out:?}");
    assert_ne!(out.code, 0);
    assert!(call("DEL", "a", "eth0", &conf, dir).success());
    assert!(status().success());
}

#[test]
fn version_negotiation() {
    let all = json!([
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
    ]);
    // 1.0+ runtimes send {cniVersion}; the answer echoes it.
    for (stdin, echoed) in [
        (r#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
        (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        ("", "1.1.0"),
    ] {
        let out = Call::new(ours(), "VERSION", "").stdin(stdin).run();
        assert!(out.success(), "{out:?}");
        assert_eq!(
            out.json(),
            json!({"cniVersion": echoed, "supportedVersions": all}),
            "stdin {stdin:?}"
        );
    }
    // An unknown version is not echoed: the answer is in our newest.
    let out = Call::new(ours(), "VERSION", "")
        .stdin(r#"{"cniVersion":"9.9.9"}"#)
        .run();
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": all})
    );
}

#[test]
fn check_in_1_1_0_confirms_the_lease() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = netconf("1.1.0", json!({"subnet": "10.1.2.0/24"}));
    assert!(call("ADD", "a", "eth0", &conf, tmp.path()).success());
    assert!(call("CHECK", "a", "eth0", &conf, tmp.path()).success());
    let out = call("CHECK", "a", "net1", &conf, tmp.path());
    assert_eq!(out.error_code(), 999, "{out:?}");
    assert!(call("DEL", "a", "eth0", &conf, tmp.path()).success());
    assert!(!call("CHECK", "a", "eth0", &conf, tmp.path()).success());
}
