//! The demo end to end, as `./scripts/demo.sh` runs it: every step of the
//! tutorial's story asserted from its output (Nodes Ready, routes, pods
//! Running with their IPs, a request across nodes, the Service's rules,
//! round robin over the ClusterIP), and nothing left behind.

use std::process::Command;

use testbed::image::static_bin;

fn has(out: &str, what: &str) {
    assert!(out.contains(what), "missing {what:?} in:\n{out}");
}

#[test]
fn the_demo_tells_the_story_and_leaves_nothing() {
    let bins = static_bin("pod-runner")
        .parent()
        .expect("the static directory")
        .to_path_buf();
    let child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("demo")
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .expect("testbed demo");
    let out = String::from_utf8_lossy(&child.stdout).into_owned();
    let err = String::from_utf8_lossy(&child.stderr).into_owned();
    assert!(child.status.success(), "{out}\n{err}");
    assert!(!out.contains('✗'), "{out}");

    // 1. The nodes.
    has(&out, "inajob    Ready  192.168.43.111  10.244.1.0/24");
    has(&out, "yuanying  Ready  192.168.43.112  10.244.2.0/24");
    has(&out, "inajob    10.244.2.0/24 via 192.168.43.112 dev eth0");
    has(&out, "yuanying  10.244.1.0/24 via 192.168.43.111 dev eth0");
    // 2. The pods, each the first on its node's bridge.
    has(&out, "web-002  Running  10.244.1.2  on inajob");
    has(&out, "web-001  Running  10.244.2.2  on yuanying");
    has(&out, "curl http://10.244.2.2:8080/ -> web-001");
    // 3. The Service: rules for both endpoints, and round robin.
    has(&out, "dnat to 10.244.1.2:8080");
    has(&out, "dnat to 10.244.2.2:8080");
    let rr = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("curl http://10.254.10.128:80/ x4 -> ")
        })
        .unwrap_or_else(|| panic!("no round robin line:\n{out}"));
    let got: Vec<&str> = rr.split_whitespace().collect();
    assert_eq!(got.len(), 4, "{rr}");
    assert!(
        got[0] != got[1] && got[0] == got[2] && got[1] == got[3],
        "{rr}"
    );
    // Nothing left: its namespaces, containerd, node-sync.
    has(&out, "nothing left");
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(!ns.contains("-demo-"), "{ns}");
    let procs = Command::new("pgrep")
        .args(["-af", "heartful-demo-"])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&procs.stdout)
    );
}
