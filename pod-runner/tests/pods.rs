//! The Pod spec pod-runner supports, checked in the running container and
//! on the host; two pods on one node reach each other; and a delete of a
//! pod the real API server is deleting finishes it, as the kubelet does.

mod common;

use std::time::{Duration, Instant};

use common::{Env, stdout, text};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::json;

fn addr(ip: &str) -> std::net::SocketAddr {
    format!("{ip}:8080").parse().expect("addr")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_fields_reach_the_container() {
    let env = Env::new("prspec");
    let tar = testbed::image::busybox_oci_tar(&env.dir.path().join("images"));
    let out = env.pod_runner(&[
        "image",
        "import",
        &tar.to_string_lossy(),
        "--name",
        "localhost/busybox",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let host_dir = env.dir.path().join("from-host");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    std::fs::write(host_dir.join("in.txt"), "from-host\n").expect("write");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "spec-test", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": "localhost/busybox:latest", "imagePullPolicy": "Never",
                "command": ["sh", "-c"],
                "args": ["echo POD=$POD_NAME NS=$POD_NS IP=$POD_IP GREETING=$GREETING; pwd; cat /etc/hostname; \
                          echo written > /data/out.txt; cat /host/in.txt; grep -q ' /mem tmpfs' /proc/mounts && echo mem-ok; \
                          echo ready; exec sleep 3600"],
                "workingDir": "/tmp",
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "GREETING", "value": "hello-$(POD_NAME)"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "host", "mountPath": "/host", "readOnly": true},
                    {"name": "mem", "mountPath": "/mem"}],
                "livenessProbe": {"exec": {"command": ["true"]}}
            }],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": host_dir.display().to_string(), "type": "Directory"}},
                {"name": "mem", "emptyDir": {"medium": "Memory"}}]
        }
    }))
    .expect("pod");
    let made = env.create_pod_object(pod, Some("inajob")).await;
    let uid = made.metadata.uid.clone().expect("uid");
    let out = env.pod_runner(&["create", "spec-test"]);
    assert!(out.status.success(), "{}", text(&out));
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        warned.contains("spec.containers[0].livenessProbe is not supported"),
        "{warned}"
    );

    let st = env
        .pod("spec-test")
        .await
        .and_then(|p| p.status)
        .expect("status");
    let ip = st.pod_ip.clone().expect("ip");
    let cid = st.container_statuses.expect("cs")[0]
        .container_id
        .clone()
        .expect("id")
        .trim_start_matches("containerd://")
        .to_string();
    let mut log = String::new();
    wait_for("the container's output", || {
        log = stdout(&env.pod_runner(&["logs", "spec-test"]));
        log.contains("ready")
    });
    assert!(
        log.contains(&format!(
            "POD=spec-test NS=default IP={ip} GREETING=hello-spec-test\n"
        )),
        "{log}"
    );
    assert!(log.contains("\n/tmp\n"), "workingDir: {log}");
    assert!(log.contains("\nspec-test\n"), "hostname: {log}");
    assert!(log.contains("from-host\n"), "hostPath: {log}");
    assert!(log.contains("mem-ok\n"), "memory emptyDir: {log}");
    let data = env
        .state_dir()
        .join(format!("pods/default_spec-test_{uid}/volumes/data/out.txt"));
    assert_eq!(
        std::fs::read_to_string(&data).expect("emptyDir file"),
        "written\n"
    );
    // Limits land in the container's cgroup (v1 here).
    let cg = format!("pod-runner/pod{uid}/{cid}");
    let mem = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes"))
        .expect("memory cgroup");
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/{cg}/cpu.cfs_quota_us"))
        .expect("cpu cgroup");
    assert_eq!(quota.trim(), "25000");

    // sh as PID 1 ignores SIGTERM: SIGKILL after the 1 s grace period.
    let t = Instant::now();
    let del = env.pod_runner(&["delete", "spec-test"]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(stdout(&del).contains("main exited 137"), "{}", text(&del));
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    env.assert_clean();
    assert!(!data.exists(), "emptyDir left");
    assert!(
        host_dir.join("in.txt").exists(),
        "hostPath content must stay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_on_one_node_reach_each_other() {
    let env = Env::new("prtwo");
    let mut uids = Vec::new();
    let mut ips = Vec::new();
    for (file, name) in [
        ("pod-web-001.yaml", "web-001"),
        ("pod-web-002.yaml", "web-002"),
    ] {
        let made = env.create_pod(file, Some("inajob")).await;
        uids.push(made.metadata.uid.clone().expect("uid"));
        let out = env.pod_runner(&["create", name]);
        assert!(out.status.success(), "{}", text(&out));
        ips.push(
            env.pod(name)
                .await
                .and_then(|p| p.status)
                .and_then(|s| s.pod_ip)
                .expect("ip"),
        );
    }
    assert_ne!(ips[0], ips[1]);
    let a = testbed::http::get_in(&Env::netns_of(&uids[0]), addr(&ips[1]));
    assert!(a.ends_with("\nweb-002\n"), "{a}");
    let b = testbed::http::get_in(&Env::netns_of(&uids[1]), addr(&ips[0]));
    assert!(b.ends_with("\nweb-001\n"), "{b}");
    let list = stdout(&env.pod_runner(&["list"]));
    assert!(
        list.contains("web-001") && list.contains("web-002"),
        "{list}"
    );
    for name in ["web-001", "web-002"] {
        let del = env.pod_runner(&["delete", name]);
        assert!(del.status.success(), "{}", text(&del));
    }
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_finishes_a_pod_the_api_is_deleting() {
    let env = Env::new("prgone");
    env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let out = env.pod_runner(&["create", "web-002"]);
    assert!(out.status.success(), "{}", text(&out));
    let pods: Api<Pod> = Api::namespaced(env.admin().await, "default");
    // The pod's own grace period, 30 s: the API keeps the object that
    // long at least, and past it until the node's final delete.
    let t = Instant::now();
    pods.delete("web-002", &DeleteParams::default())
        .await
        .expect("delete");
    let pending = env
        .pod("web-002")
        .await
        .expect("kept until the node is done");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(30));
    let del = env.pod_runner(&["delete", "web-002"]);
    assert!(del.status.success(), "{}", text(&del));
    // web exits on SIGTERM: long before the grace period is over, so the
    // object went by pod-runner's final delete, not by any expiry.
    assert!(stdout(&del).contains("web exited 0"), "{}", text(&del));
    assert!(env.pod("web-002").await.is_none(), "the API object is gone");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    env.assert_clean();

    // A pod being deleted that never ran here, bound to this node: delete
    // finishes it in the API too, as the kubelet does.
    env.create_pod("pod-web-001.yaml", Some("inajob")).await;
    pods.delete("web-001", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(env.pod("web-001").await.is_some(), "kept for the node");
    let del = env.pod_runner(&["delete", "web-001"]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(stdout(&del).contains("nothing to do"), "{}", text(&del));
    assert!(env.pod("web-001").await.is_none(), "the API object is gone");
    // Gone from the API, the node's identity may not even read it: a
    // second delete still has nothing to do, and nothing to warn about.
    let del = env.pod_runner(&["delete", "web-001"]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(stdout(&del).contains("nothing to do"), "{}", text(&del));
    assert!(del.stderr.is_empty(), "{}", text(&del));
}
