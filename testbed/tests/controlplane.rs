//! The real control plane the end-to-end tests run against: it starts in
//! seconds, enforces the node identity's limits (Node authorizer, RBAC,
//! NodeRestriction), and leaves no process behind when dropped.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use testbed::api::Apiserver;
use testbed::controlplane::{ControlPlane, Options};

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn pids_of(cp: &ControlPlane) -> Vec<i32> {
    // Every process of ours runs with the control plane's directory in its
    // arguments or as its working directory.
    let dir = cp.dir().to_path_buf();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_in_seconds_enforces_node_identity_and_stops_by_pid() {
    let cp = ControlPlane::start(&Options::default()).expect("control plane");
    eprintln!(
        "control plane (etcd + kube-apiserver) ready in {:?}",
        cp.started_in
    );
    assert!(
        cp.started_in < Duration::from_secs(30),
        "{:?}",
        cp.started_in
    );
    let dir = tempfile::tempdir().expect("tmp");
    cp.write_kubeconfigs(dir.path(), &["inajob"])
        .expect("kubeconfigs");
    let admin = testbed::kubectl::client(&dir.path().join("admin.kubeconfig"))
        .await
        .expect("admin");
    let node = testbed::kubectl::client(&dir.path().join("inajob.kubeconfig"))
        .await
        .expect("node");

    // The namespace default has its ServiceAccount (Pods need it).
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    assert!(sas.get_opt("default").await.expect("get").is_some());

    // The node may register itself, not list every Node, nor make another.
    let nodes: Api<Node> = Api::all(node.clone());
    let me: Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "inajob"}})).expect("node");
    nodes
        .create(&PostParams::default(), &me)
        .await
        .expect("register");
    assert!(nodes.get("inajob").await.is_ok());
    match nodes.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403);
            assert!(e.message.contains("cannot read all nodes"), "{}", e.message);
        }
        other => panic!("a node listed all Nodes: {other:?}"),
    }
    let other: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "yuanying"}}))
        .expect("node");
    match nodes.create(&PostParams::default(), &other).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{}", e.message),
        other => panic!("a node made another Node: {other:?}"),
    }
    let all: Api<Node> = Api::all(admin);
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert!(
        cp.kubectl(&["get", "nodes", "-o", "name"])
            .expect("kubectl")
            .contains("node/inajob")
    );

    let pids = pids_of(&cp);
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver: {pids:?}");
    drop(cp);
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the control plane");
    }
}

#[test]
fn controllers_and_scheduler_join() {
    let cp = ControlPlane::start(&Options {
        controllers: true,
        scheduler: true,
        ..Options::default()
    })
    .expect("control plane");
    eprintln!(
        "control plane with kube-controller-manager and kube-scheduler ready in {:?}",
        cp.started_in
    );
    // The controller manager made the ServiceAccounts of the namespaces.
    let sas = cp
        .kubectl(&["get", "serviceaccounts", "-n", "kube-system", "-o", "name"])
        .expect("kubectl");
    assert!(
        sas.contains("serviceaccount/replicaset-controller"),
        "{sas}"
    );
    assert_eq!(pids_of(&cp).len(), 4);
}
