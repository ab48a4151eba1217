//! The demo end to end, as `./scripts/demo.sh` runs it: on the real control
//! plane (kube-apiserver, kube-controller-manager, kube-scheduler), every
//! step of the tutorial's story asserted from its output (node-sync's
//! RBAC, Nodes Ready, routes, the ReplicaSet's pods made by the controller
//! and bound by the scheduler, one on each node, Running with their IPs, a
//! request across nodes, the EndpointSlice, the Service's rules, round
//! robin over the ClusterIP), and nothing left behind. Then the same story
//! on the API server stand-in, the default where no Kubernetes binaries
//! exist.

use std::process::Command;

use testbed::image::static_bin;

fn has(out: &str, what: &str) {
    assert!(out.contains(what), "missing {what:?} in:\n{out}");
}

fn demo(plane: &str) -> String {
    let bins = static_bin("pod-runner")
        .parent()
        .expect("the static directory")
        .to_path_buf();
    let child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("demo")
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--control-plane", plane])
        .output()
        .expect("testbed demo");
    let out = String::from_utf8_lossy(&child.stdout).into_owned();
    let err = String::from_utf8_lossy(&child.stderr).into_owned();
    assert!(child.status.success(), "{out}\n{err}");
    assert!(!out.contains('✗'), "{out}");
    out
}

/// The round robin line's four answers: two pods, alternating.
fn round_robin(out: &str) -> Vec<String> {
    let rr = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("curl http://10.254.10.128:80/ x4 -> ")
        })
        .unwrap_or_else(|| panic!("no round robin line:\n{out}"));
    let got: Vec<String> = rr.split_whitespace().map(String::from).collect();
    assert_eq!(got.len(), 4, "{rr}");
    assert!(
        got[0] != got[1] && got[0] == got[2] && got[1] == got[3],
        "{rr}"
    );
    got
}

fn nothing_left(out: &str) {
    has(out, "nothing left");
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(!ns.contains("-demo-"), "{ns}");
    let procs = Command::new("pgrep")
        .args([
            "-af",
            "heartful-demo-|kube-apiserver|kube-controller-manager|kube-scheduler",
        ])
        .output()
        .expect("pgrep");
    let procs = String::from_utf8_lossy(&procs.stdout);
    // Other tests of this run may hold control planes of their own: only
    // the demo's directory counts.
    assert!(
        !procs.lines().any(|l| l.contains("heartful-demo-")),
        "{procs}"
    );
}

#[test]
fn the_demo_on_the_real_control_plane() {
    let out = demo("real");
    has(
        &out,
        "the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
    );
    has(&out, "Kubernetes v1.36");
    has(&out, "--authorization-mode=Node,RBAC, NodeRestriction");
    has(
        &out,
        "clusterrole.rbac.authorization.k8s.io/node-sync created",
    );
    has(
        &out,
        "clusterrolebinding.rbac.authorization.k8s.io/node-sync created",
    );
    // 1. The nodes, as the real kubectl shows them.
    let nodes: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("inajob ") || l.starts_with("yuanying "))
        .collect();
    assert!(
        nodes.iter().any(|l| l.contains("Ready")
            && l.contains("192.168.43.111")
            && l.contains("containerd://")),
        "{out}"
    );
    assert!(
        nodes
            .iter()
            .any(|l| l.contains("Ready") && l.contains("192.168.43.112")),
        "{out}"
    );
    has(&out, "inajob    10.244.2.0/24 via 192.168.43.112 dev eth0");
    has(&out, "yuanying  10.244.1.0/24 via 192.168.43.111 dev eth0");
    // 2. The controller's pods, one on each node, each the first on its
    // node's bridge.
    has(&out, "replicaset.apps/web created");
    has(&out, "service/web-service created");
    let on = |node: &str| -> String {
        out.lines()
            .map(str::trim)
            .find_map(|l| {
                let (pod, n) = l.split_once(" -> ")?;
                (n == node && pod.starts_with("web-")).then(|| pod.to_string())
            })
            .unwrap_or_else(|| panic!("no pod bound to {node}:\n{out}"))
    };
    let (pod1, pod2) = (on("inajob"), on("yuanying"));
    has(&out, &format!("pod-runner create {pod1} on inajob"));
    has(&out, &format!("pod-runner create {pod2} on yuanying"));
    let pod_line = |pod: &str| -> String {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{pod} ")) && l.contains("Running"))
            .unwrap_or_else(|| panic!("{pod} not Running:\n{out}"))
            .to_string()
    };
    let l1 = pod_line(&pod1);
    assert!(l1.contains("10.244.1.2") && l1.contains("inajob"), "{l1}");
    let l2 = pod_line(&pod2);
    assert!(l2.contains("10.244.2.2") && l2.contains("yuanying"), "{l2}");
    has(&out, &format!("curl http://10.244.2.2:8080/ -> {pod2}"));
    // 3. The EndpointSlice the controller wrote, the rules, round robin.
    has(&out, "web-service-");
    has(&out, "10.244.1.2,10.244.2.2");
    has(&out, "dnat to 10.244.1.2:8080");
    has(&out, "dnat to 10.244.2.2:8080");
    let mut got = round_robin(&out);
    got.sort();
    let mut want = vec![pod1.clone(), pod1, pod2.clone(), pod2];
    want.sort();
    assert_eq!(got, want);
    nothing_left(&out);
}

#[test]
fn the_demo_on_the_stand_in() {
    let out = demo("stand-in");
    has(&out, "the API server stand-in plays kube-apiserver");
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
    let mut got = round_robin(&out);
    got.sort();
    assert_eq!(got, ["web-001", "web-001", "web-002", "web-002"]);
    nothing_left(&out);
}
