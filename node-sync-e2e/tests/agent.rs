//! node-sync on the tutorial's two emulated nodes, each with its own node
//! identity, containerd and CNI config, against a real control plane
//! (kube-apiserver with Node,RBAC and NodeRestriction) with node-sync's
//! RBAC (deploy/node-sync-rbac.yaml) applied by the admin:
//! registration and Ready with real nodeInfo, Leases that renew, one route
//! per other node with pods reaching each other through them, Node changes
//! followed within seconds, foreign routes untouched; and the faults: the
//! API out of reach, SIGKILL and restart, containerd stopped. Then the
//! tutorial Service over nftables on both nodes, reached from a node and
//! from a pod, round robin across the two nodes' pods, with its faults.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Env, condition, echo, endpoints_on, is_ready, pod, ready, renewed, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testbed::Netns;
use testbed::containerd::Containerd;

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_register_report_and_route() {
    let env = Env::new("nsa", true);
    // Someone else's route in the same table, before we start.
    env.ns("inajob")
        .sh("ip route add 10.99.0.0/24 via 192.168.43.112 proto boot");
    let _a = env.start("inajob");
    let mut b = Some(env.start("yuanying"));
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    let n = nodes.get("inajob").await.expect("node");
    let spec = n.spec.clone().expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tutorial"))
            .map(String::as_str),
        Some("heartful")
    );
    let st = n.status.clone().expect("status");
    let info = st.node_info.expect("nodeInfo");
    assert_eq!(
        info.kernel_version,
        String::from_utf8_lossy(
            &Command::new("uname")
                .arg("-r")
                .output()
                .expect("uname")
                .stdout
        )
        .trim()
    );
    assert!(
        info.container_runtime_version
            .starts_with("containerd://1."),
        "{}",
        info.container_runtime_version
    );
    assert_eq!(
        info.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("boot id")
            .trim()
    );
    assert_eq!(info.architecture, "amd64");
    let addrs = st.addresses.expect("addresses");
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "192.168.43.111")
    );
    // The pressures follow this machine, whose disk is shared with others
    // and may really be nearly full: DiskPressure is held to what statvfs
    // says of the nodefs (default /var/lib) against the kubelet's 10%.
    let vfs = nix::sys::statvfs::statvfs("/var/lib").expect("statvfs");
    let disk_full = (vfs.blocks_available() as f64) < 0.10 * vfs.blocks() as f64;
    for (t, want) in [
        ("MemoryPressure", "False"),
        ("DiskPressure", if disk_full { "True" } else { "False" }),
        ("PIDPressure", "False"),
    ] {
        let c = st
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .expect(t);
        assert_eq!(c.status, want, "{t}");
    }
    assert!(
        st.capacity
            .as_ref()
            .is_some_and(|c| c.contains_key("cpu") && c.contains_key("memory"))
    );

    // One route each way; pods on the two nodes talk over it.
    wait_for("routes", Duration::from_secs(5), || async {
        env.our_routes("inajob").len() == 1 && env.our_routes("yuanying").len() == 1
    })
    .await;
    assert_eq!(
        env.our_routes("inajob"),
        vec!["10.244.2.0/24 via 192.168.43.112 dev eth0"]
    );
    assert_eq!(
        env.our_routes("yuanying"),
        vec!["10.244.1.0/24 via 192.168.43.111 dev eth0"]
    );
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains("  10.244.2.0/24 via 192.168.43.112"),
        "{status}"
    );
    assert!(status.contains("condition   Ready=True"), "{status}");
    assert!(
        status.contains("access      list/watch nodes: granted\n"),
        "{status}"
    );
    // The routes are reported, as the route controller would.
    wait_for(
        "NetworkUnavailable False",
        Duration::from_secs(5),
        || async {
            nodes
                .get("inajob")
                .await
                .ok()
                .and_then(|n| condition(&n, "NetworkUnavailable"))
                .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("RouteCreated"))
        },
    )
    .await;
    let (pa, ipa) = pod(&env, "inajob", "pod-a");
    let (pb, _) = pod(&env, "yuanying", "pod-b");
    assert_eq!(echo(&pa, &ipa, &pb), "across nodes");

    // The Leases renew (every 10 s).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let renew = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renew(leases.get("inajob").await.expect("lease")).expect("renewTime");
    wait_for("a renewed Lease", Duration::from_secs(15), || async {
        leases
            .get("inajob")
            .await
            .ok()
            .and_then(renew)
            .is_some_and(|t| t > first)
    })
    .await;
    let l = leases.get("inajob").await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("inajob")
    );

    // A new Node appears: its route within a second or two; it changes
    // podCIDR (deleted and made again): the route is replaced.
    let third = |cidr: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": "third"}, "spec": {"podCIDR": cidr}}))
            .expect("node")
    };
    nodes
        .create(&PostParams::default(), &third("10.244.3.0/24"))
        .await
        .expect("create");
    let addr =
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.43.113"}]}});
    nodes
        .patch_status("third", &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("status");
    wait_for("the third node's route", Duration::from_secs(2), || async {
        env.our_routes("inajob")
            .contains(&"10.244.3.0/24 via 192.168.43.113 dev eth0".to_string())
    })
    .await;
    nodes
        .delete("third", &DeleteParams::default())
        .await
        .expect("delete");
    nodes
        .create(&PostParams::default(), &third("10.244.4.0/24"))
        .await
        .expect("create");
    nodes
        .patch_status("third", &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("status");
    wait_for("the replaced route", Duration::from_secs(2), || async {
        let r = env.our_routes("inajob");
        r.len() == 2 && r.contains(&"10.244.4.0/24 via 192.168.43.113 dev eth0".to_string())
    })
    .await;

    // A Node deleted (its agent stopped first): its route goes within 2 s.
    drop(b.take());
    nodes
        .delete("yuanying", &DeleteParams::default())
        .await
        .expect("delete");
    let t = Instant::now();
    wait_for(
        "the deleted node's route to go",
        Duration::from_secs(2),
        || async {
            !env.our_routes("inajob")
                .iter()
                .any(|r| r.starts_with("10.244.2.0/24"))
        },
    )
    .await;
    eprintln!("route removed {:?} after the Node was deleted", t.elapsed());
    // Someone else's route survived every sync.
    assert!(
        env.ns("inajob")
            .sh("ip route")
            .contains("10.99.0.0/24 via 192.168.43.112")
    );
    assert!(env.ns("inajob").sh("sysctl -n net.ipv4.ip_forward").trim() == "1");

    // Metrics and health on the node's loopback.
    let at = "127.0.0.1:10249".parse().expect("addr");
    let metrics = env.metrics("inajob");
    assert!(
        metrics.contains("node_sync_routes_programmed 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("node_sync_syncs_total{reconciler=\"heartbeat\"}"),
        "{metrics}"
    );
    // Nothing was refused with the RBAC in place.
    assert!(!metrics.contains("node_sync_api_forbidden"), "{metrics}");
    assert!(
        !env.log("inajob").contains("forbidden"),
        "{}",
        env.log("inajob")
    );
    let health = testbed::http::get_path_in(&env.ns("inajob").path(), at, "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") && health.ends_with("\nok\n"),
        "{health}"
    );
    assert!(
        !env.log("inajob").contains("panicked"),
        "{}",
        env.log("inajob")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_keep_the_routes_and_node_sync_recovers() {
    let mut env = Env::new("nsf", true);
    let mut a = env.start("inajob");
    let _b = env.start("yuanying");
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    let route = vec!["10.244.2.0/24 via 192.168.43.112 dev eth0".to_string()];
    wait_for("routes", Duration::from_secs(5), || async {
        env.our_routes("inajob") == route
    })
    .await;

    // The API server out of reach for 30 s: the routes stay all along.
    // (The Lease comes right after the first status patch.)
    wait_for("the Lease", Duration::from_secs(15), || async {
        renewed(&leases, "inajob").await.is_some()
    })
    .await;
    let before = renewed(&leases, "inajob").await.expect("lease");
    env.cut("inajob");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            env.our_routes("inajob"),
            route,
            "routes changed during the outage"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The outage was real: no renewal got through it.
    let during = renewed(&leases, "inajob").await.expect("lease");
    assert!(
        during.duration_since(before).as_secs_f64() < 2.0,
        "the Lease was renewed during the outage: {before} -> {during}"
    );
    env.reconnect("inajob");
    wait_for(
        "a heartbeat after the outage",
        Duration::from_secs(30),
        || async { renewed(&leases, "inajob").await.is_some_and(|t| t > before) },
    )
    .await;
    assert_eq!(env.our_routes("inajob"), route);

    // SIGKILL and a restart: the routes are adopted, none doubled.
    let _ = a.0.kill();
    let _ = a.0.wait();
    a = env.start("inajob");
    let since = renewed(&leases, "inajob").await.expect("lease");
    wait_for(
        "the restarted agent's heartbeat",
        Duration::from_secs(20),
        || async { renewed(&leases, "inajob").await.is_some_and(|t| t > since) },
    )
    .await;
    assert_eq!(env.our_routes("inajob"), route);
    let all = env.ns("inajob").sh("ip route show 10.244.2.0/24");
    assert_eq!(all.lines().count(), 1, "{all}");

    // containerd stopped: Ready False with the reason; back: Ready True.
    let state = env.nodes[0].state.path().to_path_buf();
    if let Some(mut c) = env.nodes[0].ctrd.take() {
        c.stop();
    }
    wait_for("Ready False", Duration::from_secs(10), || {
        is_ready(&nodes, "inajob", "False")
    })
    .await;
    let (_, msg) = ready(&nodes.get("inajob").await.expect("node")).expect("ready");
    assert!(msg.contains("container runtime is down"), "{msg}");
    env.nodes[0].ctrd = Some(Containerd::start(
        &state,
        Some(env.ns("inajob")),
        Path::new("/usr/lib/cni"),
    ));
    wait_for("Ready True again", Duration::from_secs(10), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    drop(a);
    assert!(
        !env.log("inajob").contains("panicked"),
        "{}",
        env.log("inajob")
    );
}

/// Who answered `n` GETs to the tutorial VIP from `ns`.
fn answers(ns: &Netns, n: usize) -> Vec<String> {
    let vip: std::net::SocketAddr = "10.254.10.128:80".parse().expect("vip");
    (0..n)
        .map(|_| {
            let r = testbed::http::get(ns, vip);
            let body = r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
            body.split(' ').next().unwrap_or("").to_string()
        })
        .collect()
}

fn alternate(got: &[String]) -> bool {
    let mut sorted = got.to_vec();
    sorted.sort();
    got.len() == 4
        && got[0] != got[1]
        && got[0] == got[2]
        && got[1] == got[3]
        && sorted == ["web-001", "web-001", "web-002", "web-002"]
}

#[tokio::test(flavor = "multi_thread")]
async fn services_over_nftables_on_two_nodes() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let mut env = Env::new("nsv", true);
    // A default route, as on a real node: a VIP is routed through it
    // before DNAT.
    for node in ["inajob", "yuanying"] {
        env.ns(node)
            .sh("ip route add default via 192.168.43.1 dev eth0");
    }
    let nft = ["--proxy-mode", "nftables"];
    let mut a = env.start_with("inajob", &nft);
    let _b = env.start_with("yuanying", &nft);
    wait_for("routes", Duration::from_secs(10), || async {
        env.our_routes("inajob").len() == 1 && env.our_routes("yuanying").len() == 1
    })
    .await;
    // web-001 on yuanying, web-002 and a client pod on inajob.
    let (web1, ip1) = pod(&env, "yuanying", "web-001");
    let (web2, ip2) = pod(&env, "inajob", "web-002");
    let (client, _) = pod(&env, "inajob", "client");
    assert_eq!((ip1.as_str(), ip2.as_str()), ("10.244.2.2", "10.244.1.2"));
    testbed::http::serve_name(&web1, "web-001");
    testbed::http::serve_name(&web2, "web-002");

    let admin = env.admin().await;
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    let pp = PostParams::default();
    services
        .create(&pp, &testbed::testdata::load_one("service-web.yaml"))
        .await
        .expect("service");
    endpoints
        .create(&pp, &testbed::testdata::load_one("endpoints-web.yaml"))
        .await
        .expect("endpoints");
    // Malformed objects beside it: an SCTP port, an invalid address.
    let bad_svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "sctp"},
        "spec": {"clusterIP": "10.254.10.201", "ports": [{"port": 80, "protocol": "SCTP"}]}
    }))
    .expect("svc");
    services.create(&pp, &bad_svc).await.expect("sctp");
    let empty: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty"},
        "spec": {"clusterIP": "10.254.10.129", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .expect("svc");
    services.create(&pp, &empty).await.expect("empty");
    // The API server validates the addresses of Endpoints and of IPv4
    // slices; what reaches node-sync unchecked is an FQDN slice's
    // hostname, which is no address to DNAT to.
    let bad_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "empty-fqdn", "labels": {"kubernetes.io/service-name": "empty"}},
        "addressType": "FQDN",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["not-an-ip.example"]}]
    }))
    .expect("slice");
    Api::<EndpointSlice>::namespaced(admin.clone(), "default")
        .create(&pp, &bad_slice)
        .await
        .expect("FQDN slice");

    let both = Some(vec![
        "10.244.1.2:8080".to_string(),
        "10.244.2.2:8080".to_string(),
    ]);
    for node in ["inajob", "yuanying"] {
        wait_for(
            &format!("the service on {node}"),
            Duration::from_secs(10),
            || async { endpoints_on(&env, node) == both },
        )
        .await;
    }
    // From the node and from a pod: round robin over both nodes' pods.
    let from_node = answers(env.ns("inajob"), 4);
    assert!(alternate(&from_node), "from the node: {from_node:?}");
    let from_pod = answers(&client, 4);
    assert!(alternate(&from_pod), "from a pod: {from_pod:?}");
    // No endpoint: a reset, at once.
    let t = Instant::now();
    let refused = client.run(|| {
        TcpStream::connect_timeout(
            &"10.254.10.129:80".parse().expect("addr"),
            Duration::from_secs(3),
        )
    });
    let err = refused.expect_err("connected to a Service without endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The malformed ones were skipped, and said so.
    let table = env.ns("inajob").sh("nft list table ip node-sync");
    assert!(!table.contains("10.254.10.201"), "{table}");
    let log = env.log("inajob");
    assert!(
        log.contains("invalid address \"not-an-ip.example\""),
        "{log}"
    );

    // web-002 removed from the Endpoints: gone from the rules within 1 s.
    let one = json!({"subsets": [{"addresses": [{"ip": "10.244.2.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
    let t = Instant::now();
    endpoints
        .patch("web-service", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .expect("patch");
    let only = Some(vec!["10.244.2.2:8080".to_string()]);
    while endpoints_on(&env, "inajob") != only {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{:?}",
            endpoints_on(&env, "inajob")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("endpoint removal in the rules after {:?}", t.elapsed());
    assert_eq!(answers(&client, 4), ["web-001"; 4]);

    // The API server out of reach: the rules stay and traffic flows.
    let before = env.ns("inajob").sh("nft list table ip node-sync");
    env.cut("inajob");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.ns("inajob").sh("nft list table ip node-sync"), before);
    assert_eq!(answers(&client, 2), ["web-001"; 2]);
    env.reconnect("inajob");

    // SIGKILL and a restart: adopted as it is, nothing flushed or doubled.
    let _ = a.0.kill();
    let _ = a.0.wait();
    let programmed_runs = env
        .log("inajob")
        .matches("services: nftables programmed")
        .count();
    a = env.start_with("inajob", &nft);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.ns("inajob").sh("nft list table ip node-sync"), before);
    assert_eq!(
        env.log("inajob")
            .matches("services: nftables programmed")
            .count(),
        programmed_runs,
        "{}",
        env.log("inajob")
    );

    // The Service deleted: every rule of it goes, on both nodes.
    services
        .delete("web-service", &DeleteParams::default())
        .await
        .expect("delete");
    for node in ["inajob", "yuanying"] {
        wait_for(
            &format!("the service gone from {node}"),
            Duration::from_secs(5),
            || async {
                !env.ns(node)
                    .sh("nft list table ip node-sync")
                    .contains("10_254_10_128")
            },
        )
        .await;
        let table = env.ns(node).sh("nft list table ip node-sync");
        assert!(!table.contains("10.254.10.128"), "{table}");
    }
    drop(a);
}
