//! Routes that are safe by construction, on the tutorial's emulated nodes
//! against a real control plane (kube-apiserver with Node,RBAC and
//! NodeRestriction, node-sync's RBAC applied, node-sync with each node's
//! own identity): two Nodes with one podCIDR get one route, the oldest
//! Node's, that never flips over 20 syncs and restarts; a Node claiming
//! this node's podCIDR (or its LAN) leaves cni0's connected route and the
//! pods on it alone; someone else's route to a Node's podCIDR is left
//! byte for byte. Each conflict is reported in `status`, the metric and
//! the log (once per change), and the node's network stays available.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, condition, echo, is_ready, pod, wait_for};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A Node made by the admin with `cidr` and the InternalIP `ip`.
async fn make_node(nodes: &Api<Node>, name: &str, cidr: &str, ip: &str) -> Node {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &n)
        .await
        .expect("create node");
    let addr = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("node status")
}

/// A label changed on the Node: a watch event, so a routes sync.
async fn touch(nodes: &Api<Node>, name: &str, i: usize) {
    let p = json!({"metadata": {"labels": {"touched": i.to_string()}}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&p))
        .await
        .expect("label");
}

/// Routes syncs the running node-sync on `node` has done.
fn syncs(env: &Env, node: &str) -> u64 {
    env.metrics(node)
        .lines()
        .find_map(|l| l.strip_prefix("node_sync_syncs_total{reconciler=\"routes\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits for the routes sync after the `before`th.
async fn synced(env: &Env, node: &str, before: u64) {
    wait_for("a routes sync", Duration::from_secs(10), || async {
        syncs(env, node) > before
    })
    .await;
}

/// Every route to exactly `dst` in every table, as `ip -d` shows them.
fn routes_to(env: &Env, node: &str, dst: &str) -> String {
    env.ns(node)
        .sh(&format!("ip -d route show table all exact {dst}"))
}

/// The `node_sync_route_conflicts` lines of `/metrics`.
fn conflicts(env: &Env, node: &str) -> Vec<String> {
    env.metrics(node)
        .lines()
        .filter(|l| l.starts_with("node_sync_route_conflicts{"))
        .map(str::to_string)
        .collect()
}

/// Waits for the Node's NetworkUnavailable False (RouteCreated): a
/// refused podCIDR leaves the node's network available. Waited for, not
/// read once: a process just started reports NoRouteCreated until its
/// first routes sync reaches the next status beat.
async fn network_available(nodes: &Api<Node>, name: &str) {
    wait_for(
        "NetworkUnavailable False",
        Duration::from_secs(5),
        || async {
            nodes
                .get(name)
                .await
                .ok()
                .and_then(|n| condition(&n, "NetworkUnavailable"))
                .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("RouteCreated"))
        },
    )
    .await;
}

/// `ip -o monitor route` in the node's netns until dropped: every change
/// to the routes meanwhile.
struct Monitor {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Monitor {
    fn start(env: &Env, node: &str) -> Monitor {
        let out = env.dir.path().join(format!("{node}-monitor.txt"));
        let file = std::fs::File::create(&out).expect("monitor file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", env.ns(node).path().display()))
            .args(["ip", "-o", "monitor", "route"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        // It listens before anything it must see happens.
        std::thread::sleep(Duration::from_millis(300));
        Monitor { child, out }
    }

    fn seen(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_podcidr_goes_to_the_oldest_node_and_never_flips() {
    let t0 = Instant::now();
    let env = Env::new("nrd", true);
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    // zz-old is made a second before aa-young: by name alone aa-young
    // would win, and a hash store's order picks either.
    let old = make_node(&nodes, "zz-old", "10.244.3.0/24", "192.168.43.113").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let young = make_node(&nodes, "aa-young", "10.244.3.0/24", "192.168.43.114").await;
    let created = |n: &Node| n.metadata.creation_timestamp.clone().expect("created").0;
    assert!(created(&old) < created(&young));

    let mut agent = env.start("inajob");
    let mut starts = 1;
    wait_for("inajob Ready", Duration::from_secs(20), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    let want = "10.244.3.0/24 via 192.168.43.113 dev eth0";
    wait_for(
        "the oldest Node's route",
        Duration::from_secs(10),
        || async { env.our_routes("inajob") == [want] },
    )
    .await;

    // 20 syncs: Node updates (either Node) and, every fifth, a restart.
    // The route is checked after each, and no change to it is seen in
    // between.
    let monitor = Monitor::start(&env, "inajob");
    for i in 0..20 {
        if i % 5 == 4 {
            drop(agent);
            agent = env.start("inajob");
            starts += 1;
            synced(&env, "inajob", 0).await;
        } else {
            let before = syncs(&env, "inajob");
            let name = if i % 2 == 0 { "zz-old" } else { "aa-young" };
            touch(&nodes, name, i).await;
            synced(&env, "inajob", before).await;
        }
        assert_eq!(
            env.our_routes("inajob"),
            [want],
            "after sync {i} (routes: {})",
            routes_to(&env, "inajob", "10.244.3.0/24")
        );
    }
    let seen = monitor.seen();
    assert!(
        !seen.contains("10.244.3.0/24"),
        "the route changed during the syncs:\n{seen}"
    );

    // Reported: the metric, status, and the log once per process (each
    // starts with nothing reported), not once per sync.
    let metrics = env.metrics("inajob");
    assert_eq!(
        conflicts(&env, "inajob"),
        [
            "node_sync_route_conflicts{node=\"aa-young\",cidr=\"10.244.3.0/24\",reason=\"older-node\",with=\"zz-old\"} 1"
        ],
        "{metrics}"
    );
    assert!(metrics.contains("node_sync_nodes_skipped 1\n"), "{metrics}");
    assert!(
        metrics.contains("node_sync_routes_programmed 1\n"),
        "{metrics}"
    );
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains(
            "routes      1 (proto 200)\n  10.244.3.0/24 via 192.168.43.113\nrefused     Node aa-young's podCIDR 10.244.3.0/24: overlaps Node zz-old's podCIDR; zz-old is older and keeps the route (older-node)\n"
        ),
        "{status}"
    );
    let log = env.log("inajob");
    let line = "routes: refused Node aa-young's podCIDR 10.244.3.0/24: overlaps Node zz-old's podCIDR; zz-old is older and keeps the route";
    assert_eq!(log.matches(line).count(), starts, "{log}");
    network_available(&nodes, "inajob").await;

    // The oldest goes: the younger gets the route, and the refusal ends.
    nodes
        .delete("zz-old", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the younger Node's route",
        Duration::from_secs(5),
        || async { env.our_routes("inajob") == ["10.244.3.0/24 via 192.168.43.114 dev eth0"] },
    )
    .await;
    wait_for("the conflict to clear", Duration::from_secs(5), || async {
        conflicts(&env, "inajob").is_empty()
    })
    .await;
    let log = env.log("inajob");
    assert!(
        log.contains("routes: no longer refused: Node aa-young's podCIDR 10.244.3.0/24"),
        "{log}"
    );
    let status = env.run_once("inajob", "status");
    assert!(status.contains("refused     none\n"), "{status}");
    assert!(!log.contains("panicked"), "{log}");
    drop(agent);
    eprintln!("took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_claiming_this_nodes_podcidr_leaves_cni0_alone() {
    let t0 = Instant::now();
    let env = Env::new("nro", true);
    let _a = env.start("inajob");
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for("inajob Ready", Duration::from_secs(20), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    // Two pods on cni0: its connected route is there.
    let (pa, ipa) = pod(&env, "inajob", "pod-a");
    let (pb, _) = pod(&env, "inajob", "pod-b");
    let ns = env.ns("inajob");
    let connected = routes_to(&env, "inajob", "10.244.1.0/24");
    assert!(
        connected.contains("unicast 10.244.1.0/24 dev cni0 table main proto kernel scope link"),
        "{connected}"
    );
    let main_before = ns.sh("ip -d route show table main");

    // The tester's intruder (this node's podCIDR), one claiming the whole
    // cluster range, and one in the node's LAN.
    let before = syncs(&env, "inajob");
    make_node(&nodes, "intruder", "10.244.1.0/24", "192.168.43.113").await;
    make_node(&nodes, "wide", "10.244.0.0/16", "192.168.43.114").await;
    make_node(&nodes, "lan", "192.168.43.0/25", "192.168.43.115").await;
    synced(&env, "inajob", before).await;
    wait_for("three conflicts", Duration::from_secs(5), || async {
        conflicts(&env, "inajob").len() == 3
    })
    .await;
    // More syncs: the kernel stays as it was through each.
    for i in 0..3 {
        let before = syncs(&env, "inajob");
        touch(&nodes, "intruder", i).await;
        synced(&env, "inajob", before).await;
        assert_eq!(
            ns.sh("ip -d route show table main"),
            main_before,
            "sync {i}"
        );
        assert_eq!(routes_to(&env, "inajob", "10.244.1.0/24"), connected);
    }
    assert!(env.our_routes("inajob").is_empty());

    // The pods still reach each other and the node, and the node them.
    assert_eq!(echo(&pa, &ipa, &pb), "across nodes");
    assert_eq!(echo(&pa, &ipa, ns), "across nodes");
    assert_eq!(echo(ns, "10.244.1.1", &pb), "across nodes");

    assert_eq!(
        conflicts(&env, "inajob"),
        [
            "node_sync_route_conflicts{node=\"intruder\",cidr=\"10.244.1.0/24\",reason=\"this-node\",with=\"10.244.1.0/24\"} 1",
            "node_sync_route_conflicts{node=\"lan\",cidr=\"192.168.43.0/25\",reason=\"local-route\",with=\"192.168.43.0/24 dev eth0 proto kernel scope link\"} 1",
            "node_sync_route_conflicts{node=\"wide\",cidr=\"10.244.0.0/16\",reason=\"this-node\",with=\"10.244.1.0/24\"} 1",
        ]
    );
    assert!(
        env.metrics("inajob")
            .contains("node_sync_nodes_skipped 3\n")
    );
    let status = env.run_once("inajob", "status");
    for line in [
        "routes      0 (proto 200)\n",
        "refused     Node intruder's podCIDR 10.244.1.0/24: overlaps this node's podCIDR 10.244.1.0/24 (this-node)\n",
        "refused     Node lan's podCIDR 192.168.43.0/25: overlaps this node's own network: 192.168.43.0/24 dev eth0 proto kernel scope link (local-route)\n",
        "refused     Node wide's podCIDR 10.244.0.0/16: overlaps this node's podCIDR 10.244.1.0/24 (this-node)\n",
    ] {
        assert!(status.contains(line), "{line:?} in\n{status}");
    }
    let log = env.log("inajob");
    for node in ["intruder", "wide", "lan"] {
        let line = format!("routes: refused Node {node}'s podCIDR");
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
    network_available(&nodes, "inajob").await;
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_route_to_a_podcidr_is_left_byte_for_byte() {
    let t0 = Instant::now();
    let env = Env::new("nrf", true);
    let ns = env.ns("inajob");
    ns.sh("ip route add 10.244.2.0/24 via 192.168.43.200 proto static");
    let table_before = ns.sh("ip -d route show table all");
    let _b = env.start("yuanying");
    let _a = env.start("inajob");
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    let foreign = "node_sync_route_conflicts{node=\"yuanying\",cidr=\"10.244.2.0/24\",reason=\"foreign-route\",with=\"10.244.2.0/24 via 192.168.43.200 dev eth0 proto static\"} 1";
    wait_for("the conflict", Duration::from_secs(10), || async {
        conflicts(&env, "inajob") == [foreign]
    })
    .await;
    // yuanying routes to inajob as ever.
    wait_for("yuanying's route", Duration::from_secs(5), || async {
        env.our_routes("yuanying") == ["10.244.1.0/24 via 192.168.43.111 dev eth0"]
    })
    .await;
    for i in 0..3 {
        let before = syncs(&env, "inajob");
        touch(&nodes, "yuanying", i).await;
        synced(&env, "inajob", before).await;
        assert_eq!(
            ns.sh("ip -d route show table all"),
            table_before,
            "sync {i}"
        );
    }
    assert!(env.our_routes("inajob").is_empty());
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains("refused     Node yuanying's podCIDR 10.244.2.0/24: a route that is not node-sync's is there, left alone: 10.244.2.0/24 via 192.168.43.200 dev eth0 proto static (foreign-route)\n"),
        "{status}"
    );
    let line = "routes: refused Node yuanying's podCIDR 10.244.2.0/24: a route that is not node-sync's is there";
    assert_eq!(
        env.log("inajob").matches(line).count(),
        1,
        "{}",
        env.log("inajob")
    );
    network_available(&nodes, "inajob").await;

    // Its owner takes it away: ours follows at the next sync, and the
    // refusal ends.
    ns.sh("ip route del 10.244.2.0/24 via 192.168.43.200 proto static");
    touch(&nodes, "yuanying", 10).await;
    let ours = "10.244.2.0/24 via 192.168.43.112 dev eth0";
    wait_for("our route", Duration::from_secs(5), || async {
        env.our_routes("inajob") == [ours]
    })
    .await;
    wait_for("the conflict to clear", Duration::from_secs(5), || async {
        conflicts(&env, "inajob").is_empty()
    })
    .await;
    assert!(
        env.log("inajob")
            .contains("routes: no longer refused: Node yuanying's podCIDR 10.244.2.0/24")
    );

    // Someone else's route arrives beside ours (another metric): ours
    // goes at the next sync, theirs stays as it was made.
    ns.sh("ip route add 10.244.2.0/24 via 192.168.43.201 proto static metric 10");
    let theirs = routes_to(&env, "inajob", "10.244.2.0/24")
        .lines()
        .filter(|l| l.contains("proto static"))
        .collect::<Vec<_>>()
        .join("\n");
    touch(&nodes, "yuanying", 11).await;
    wait_for("ours to go", Duration::from_secs(5), || async {
        env.our_routes("inajob").is_empty()
    })
    .await;
    assert_eq!(
        routes_to(&env, "inajob", "10.244.2.0/24").trim(),
        theirs.trim()
    );
    assert!(
        conflicts(&env, "inajob").iter().any(|l| l
            .contains("with=\"10.244.2.0/24 via 192.168.43.201 dev eth0 proto static metric 10\"")),
        "{:?}",
        conflicts(&env, "inajob")
    );
    assert!(!env.log("inajob").contains("panicked"));
    eprintln!("took {:?}", t0.elapsed());
}
