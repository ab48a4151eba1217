//! The API server stand-in, driven by kube-rs and kubectl the way
//! pod-runner, node-sync and the demo use a real kube-apiserver.

use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::testdata::{load, load_one};

async fn client(server: &ApiServer, dir: &Path, who: &str) -> Client {
    server
        .write_kubeconfigs(dir, &["inajob", "yuanying"])
        .expect("kubeconfigs");
    let kc = Kubeconfig::read_from(dir.join(format!("{who}.kubeconfig"))).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn crud_metadata_defaults_and_errors() {
    let server = ApiServer::start(0, None).expect("start");
    let dir = tempfile::tempdir().expect("tmp");
    let c = client(&server, dir.path(), "admin").await;
    let nodes: Api<Node> = Api::all(c.clone());
    for mut n in load::<Node>("nodes.yaml") {
        // podCIDRs is defaulted from podCIDR.
        if let Some(s) = n.spec.as_mut() {
            s.pod_cidrs = None;
        }
        let made = nodes
            .create(&PostParams::default(), &n)
            .await
            .expect("create node");
        let m = &made.metadata;
        assert!(m.uid.is_some() && m.creation_timestamp.is_some() && m.resource_version.is_some());
        let spec = made.spec.expect("spec");
        assert_eq!(
            spec.pod_cidrs,
            Some(vec![spec.pod_cidr.clone().expect("podCIDR")])
        );
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod: Pod = load_one("pod-web-001.yaml");
    let made = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    assert_eq!(made.metadata.generation, Some(1));
    assert_eq!(
        made.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    assert_eq!(
        code(
            pods.create(&PostParams::default(), &pod)
                .await
                .expect_err("dup")
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        code(pods.get("nope").await.expect_err("missing")),
        (404, "NotFound".into())
    );
    // A stale resourceVersion on update is a conflict.
    let mut stale = made.clone();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "1".into());
    pods.replace("web-001", &PostParams::default(), &stale)
        .await
        .expect("update");
    assert_eq!(
        code(
            pods.replace("web-001", &PostParams::default(), &stale)
                .await
                .expect_err("stale")
        ),
        (409, "Conflict".into())
    );
    // Invalid objects are 422 with causes.
    let bad: Pod = serde_json::from_value(
        json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}}),
    )
    .expect("pod");
    match pods
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid")
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(s.message.contains("spec.containers"), "{}", s.message);
        }
        other => panic!("{other}"),
    }
    // A namespace that does not exist.
    let other: Api<Pod> = Api::namespaced(c.clone(), "nowhere");
    let mut elsewhere = pod.clone();
    elsewhere.metadata.namespace = None;
    assert_eq!(
        code(
            other
                .create(&PostParams::default(), &elsewhere)
                .await
                .expect_err("ns")
        )
        .0,
        404
    );
    // Merge and JSON patches.
    let p = pods
        .patch(
            "web-001",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        p.metadata
            .labels
            .unwrap_or_default()
            .get("m")
            .map(String::as_str),
        Some("1")
    );
    let p = pods
        .patch(
            "web-001",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "remove", "path": "/metadata/labels/m"}]))
                    .expect("json patch"),
            ),
        )
        .await
        .expect("json patch");
    assert!(!p.metadata.labels.unwrap_or_default().contains_key("m"));
}

#[tokio::test]
async fn binding_status_patches_and_graceful_delete() {
    let server = ApiServer::start(0, None).expect("start");
    let dir = tempfile::tempdir().expect("tmp");
    let c = client(&server, dir.path(), "admin").await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for name in ["web-001", "web-002"] {
        let p: Pod = load_one(&format!("pod-{name}.yaml"));
        pods.create(&PostParams::default(), &p)
            .await
            .expect("create");
    }
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "web-002"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "inajob"}});
    pods.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        "web-002",
        &PostParams::default(),
        &binding,
    )
    .await
    .expect("bind");
    let p = pods.get("web-002").await.expect("get");
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("inajob")
    );
    assert_eq!(
        code(
            pods.create_subresource::<serde_json::Value, serde_json::Value>(
                "binding",
                "web-002",
                &PostParams::default(),
                &binding
            )
            .await
            .expect_err("rebind")
        )
        .0,
        409
    );

    // The node's status reports: conditions merge by type (patched ones
    // first), containerStatuses is atomic.
    let node_client = client(&server, dir.path(), "inajob").await;
    let node_pods: Api<Pod> = Api::namespaced(node_client.clone(), "default");
    let status = |ready: &str, statuses: serde_json::Value| {
        json!({"status": {"phase": "Running",
        "podIP": "10.244.1.2",
        "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": ready}],
        "containerStatuses": statuses}})
    };
    node_pods
        .patch_status("web-002", &PatchParams::default(), &Patch::Strategic(status("False",
            json!([{"name": "web", "ready": false, "restartCount": 0, "image": "localhost/web:latest", "imageID": "", "state": {}}, {"name": "sidecar", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {}}]))))
        .await
        .expect("status patch");
    let p = node_pods
        .patch_status("web-002", &PatchParams::default(), &Patch::Strategic(status("True",
            json!([{"name": "web", "ready": true, "restartCount": 0, "image": "localhost/web:latest", "imageID": "", "state": {}}]))))
        .await
        .expect("status patch");
    let st = p.status.expect("status");
    let types: Vec<String> = st
        .conditions
        .unwrap_or_default()
        .iter()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(types, ["Initialized", "Ready", "PodScheduled"]);
    let cs = st.container_statuses.unwrap_or_default();
    assert_eq!(cs.len(), 1, "containerStatuses replaced whole");
    assert!(cs[0].ready);
    assert_eq!(
        p.metadata.generation,
        Some(1),
        "status changes keep the generation"
    );
    // A node may not write status of a pod bound elsewhere, nor another node.
    assert_eq!(
        code(
            node_pods
                .patch_status(
                    "web-001",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running"}}))
                )
                .await
                .expect_err("foreign pod")
        )
        .0,
        403
    );
    // Another node's Node (it must exist: the real server answers 404
    // before NodeRestriction looks).
    Api::<Node>::all(c.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "yuanying"}})).expect("node"),
        )
        .await
        .expect("yuanying");
    let nodes: Api<Node> = Api::all(node_client.clone());
    assert_eq!(
        code(
            nodes
                .patch_status(
                    "yuanying",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {}}))
                )
                .await
                .expect_err("other node")
        )
        .0,
        403
    );
    let leases: Api<Lease> = Api::namespaced(node_client.clone(), "kube-node-lease");
    leases
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "inajob"}, "spec": {"holderIdentity": "inajob", "leaseDurationSeconds": 40}})).expect("lease"))
        .await
        .expect("own lease");

    // Deleting a bound pod marks it; a delete with grace 0 removes it.
    pods.delete("web-002", &DeleteParams::default())
        .await
        .expect("delete");
    let p = pods.get("web-002").await.expect("still there");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "web-002",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("force");
    assert_eq!(code(pods.get("web-002").await.expect_err("gone")).0, 404);
    // An unbound pod goes at once.
    pods.delete("web-001", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(code(pods.get("web-001").await.expect_err("gone")).0, 404);
}

#[tokio::test]
async fn selectors_and_watch_streams() {
    let server = ApiServer::start(0, None).expect("start");
    let dir = tempfile::tempdir().expect("tmp");
    let c = client(&server, dir.path(), "admin").await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let list = pods.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let wp = WatchParams::default().labels("app=web").timeout(5);
    let mut stream = pods.watch(&wp, &rv).await.expect("watch").boxed();
    for name in ["web-001", "web-002"] {
        let p: Pod = load_one(&format!("pod-{name}.yaml"));
        pods.create(&PostParams::default(), &p)
            .await
            .expect("create");
    }
    let mut other: Pod = load_one("pod-web-001.yaml");
    other.metadata.name = Some("db".into());
    other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    pods.create(&PostParams::default(), &other)
        .await
        .expect("create");
    pods.delete("web-001", &DeleteParams::default())
        .await
        .expect("delete");
    // A delete is graceful even at grace 0 (an unscheduled Pod's): the
    // marks are written, then the Pod goes, as kube-apiserver does it.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(p)) => {
                seen.push(format!("ADDED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Deleted(p)) => {
                seen.push(format!("DELETED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Modified(p)) => {
                seen.push(format!("MODIFIED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Bookmark(_)) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "ADDED web-001",
            "ADDED web-002",
            "MODIFIED web-001",
            "DELETED web-001"
        ]
    );

    // Label and field selectors on list.
    let bind = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web-002"},
        "target": {"kind": "Node", "name": "inajob"}});
    pods.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        "web-002",
        &PostParams::default(),
        &bind,
    )
    .await
    .expect("bind");
    let on_inajob = pods
        .list(&ListParams::default().fields("spec.nodeName=inajob"))
        .await
        .expect("list");
    assert_eq!(on_inajob.items.len(), 1);
    let not_web = pods
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .expect("list");
    assert_eq!(
        not_web
            .items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["db"]
    );

    // Bookmarks when asked for.
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(3)
    };
    let now = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut s = pods.watch(&wp, &now).await.expect("watch").boxed();
    let ev = s.try_next().await.expect("event");
    assert!(matches!(ev, Some(WatchEvent::Bookmark(_))), "{ev:?}");

    // A version older than the event log: an ERROR event with 410.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "default");
    for i in 0..1005 {
        let l: Lease =
            serde_json::from_value(json!({"metadata": {"name": format!("l{i}")}})).expect("lease");
        leases
            .create(&PostParams::default(), &l)
            .await
            .expect("lease");
    }
    let mut s = pods
        .watch(&WatchParams::default().timeout(3), "2")
        .await
        .expect("watch")
        .boxed();
    match s.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn anonymous_is_forbidden_but_version_answers() {
    let server = ApiServer::start(0, None).expect("start");
    let mut cfg = Config::new(server.url().parse().expect("url"));
    let ca = rustls_pemfile_der(server.ca_pem());
    cfg.root_cert = Some(vec![ca]);
    let anon = Client::try_from(cfg).expect("client");
    assert_eq!(anon.apiserver_version().await.expect("version").minor, "36");
    let pods: Api<Pod> = Api::namespaced(anon, "default");
    let (code, reason) = code(
        pods.list(&ListParams::default())
            .await
            .expect_err("forbidden"),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
}

fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("pem")
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state.json");
    {
        let server = ApiServer::start(0, Some(state.clone())).expect("start");
        let c = client(&server, dir.path(), "admin").await;
        let svcs: Api<Service> = Api::namespaced(c, "default");
        svcs.create(&PostParams::default(), &load_one("service-web.yaml"))
            .await
            .expect("svc");
    }
    let server = ApiServer::start(0, Some(state)).expect("restart");
    let c = client(&server, dir.path(), "admin").await;
    let svcs: Api<Service> = Api::namespaced(c, "default");
    let s = svcs.get("web-service").await.expect("kept");
    assert_eq!(
        s.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.254.10.128")
    );
}

#[test]
fn kubectl_works_against_it() {
    let server = ApiServer::start(0, None).expect("start");
    let dir = tempfile::tempdir().expect("tmp");
    server
        .write_kubeconfigs(dir.path(), &[])
        .expect("kubeconfig");
    let kc = dir.path().join("admin.kubeconfig");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let td = testbed::testdata::dir();
    for f in [
        "nodes.yaml",
        "pod-web-001.yaml",
        "pod-web-002.yaml",
        "service-web.yaml",
        "endpoints-web.yaml",
    ] {
        // The stand-in serves no OpenAPI schema for client-side validation.
        kubectl(&[
            "create",
            "--validate=false",
            "-f",
            &td.join(f).display().to_string(),
        ]);
    }
    let nodes = kubectl(&["get", "nodes"]);
    assert!(
        nodes.contains("inajob") && nodes.contains("yuanying"),
        "{nodes}"
    );
    let pods = kubectl(&["get", "pods", "-o", "wide"]);
    assert!(
        pods.contains("web-001") && pods.contains("Pending") && pods.contains("NODE"),
        "{pods}"
    );
    let ns = kubectl(&["get", "ns"]);
    assert!(ns.contains("STATUS") && ns.contains("Active"), "{ns}");
    let ep = kubectl(&["get", "ep"]);
    assert!(
        ep.contains("web-service") && ep.contains("10.244.2.2:8080"),
        "{ep}"
    );
}

#[test]
fn the_testbed_binary_serves_until_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["apiserver", "--port", "0", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("testbed");
    let out = child.stdout.take().expect("stdout");
    let lines: Vec<String> = std::io::BufReader::new(out)
        .lines()
        .take(4)
        .map(|l| l.expect("line"))
        .collect();
    assert!(
        lines[0].starts_with("serving https://127.0.0.1:"),
        "{lines:?}"
    );
    let kc = dir.path().join("inajob.kubeconfig");
    // A node lists only the pods bound to it, as the Node authorizer
    // allows.
    let got = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args([
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=inajob",
        ])
        .output();
    let all = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "pods", "-A"])
        .output();
    // Stopped before any assertion, so a failure leaves no server behind.
    let stopped = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let got = got.expect("kubectl");
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let all = all.expect("kubectl");
    assert!(
        !all.status.success()
            && String::from_utf8_lossy(&all.stderr)
                .contains("can only list/watch pods with spec.nodeName field selector"),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    stopped.expect("kill");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st:?}");
}
