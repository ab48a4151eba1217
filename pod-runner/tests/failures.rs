//! Failure injection against a real control plane: a broken CNI config, a
//! missing image, the API server gone in the middle of a create,
//! pod-runner SIGKILLed during creates, and pods it must refuse (the API
//! refuses the node's identity some of them itself). Each ends
//! consistent, with nothing leaked.

mod common;

use std::time::{Duration, Instant};

use common::{Env, stdout, text};
use serde_json::json;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Still Pending in the API: create reported nothing it did not do.
async fn assert_pending(env: &Env, name: &str) {
    let st = env.pod(name).await.and_then(|p| p.status).expect("status");
    assert_eq!(st.phase.as_deref(), Some("Pending"), "{st:?}");
    assert!(st.pod_ip.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_cni_config_rolls_back() {
    let env = Env::new("prfcni");
    std::fs::write(env.conf_dir().join("10-bridge.conf"), "{ not json").expect("write");
    let pod = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let out = env.pod_runner(&["create", "web-002"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("10-bridge.conf") && err.contains("removed again"),
        "{err}"
    );
    env.assert_clean();
    assert!(!Env::netns_of(&uid).exists(), "netns left");
    assert_pending(&env, "web-002").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_before_anything_is_made() {
    let env = Env::new("prfimg");
    let mut pod: k8s_openapi::api::core::v1::Pod = testbed::testdata::load_one("pod-web-002.yaml");
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].image = Some("localhost/nope:v1".into());
    }
    let pod = env.create_pod_object(pod, Some("inajob")).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let out = env.pod_runner(&["create", "web-002"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("localhost/nope:v1"), "{}", text(&out));
    env.assert_clean();
    assert!(!Env::netns_of(&uid).exists());
    assert_pending(&env, "web-002").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_gone_mid_create_rolls_back() {
    let mut env = Env::new("prfapi");
    // The chain holds in the middle of CNI ADD until we let it go.
    let hold = env.dir.path().join("hold");
    std::fs::create_dir_all(&hold).expect("mkdir");
    std::os::unix::fs::symlink(
        testbed::image::static_bin("cni-hold"),
        env.dir.path().join("cni-bin/cni-hold"),
    )
    .expect("symlink");
    let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
    bridge["ipam"]["dataDir"] = json!(env.data.display().to_string());
    std::fs::remove_file(env.conf_dir().join("10-bridge.conf")).expect("rm");
    std::fs::write(
        env.conf_dir().join("10-bridge.conflist"),
        json!({"cniVersion": "0.3.1", "name": "bridge",
               "plugins": [bridge, {"type": "cni-hold", "dir": hold.display().to_string()}]})
        .to_string(),
    )
    .expect("conflist");
    let pod = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let child = env
        .command(&["create", "web-002"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    while !hold.join("held").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "CNI never reached the hold"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The pod has its network, containers come next: stop the API server
    // (etcd and kube-apiserver killed). The relay goes with it, so its
    // address refuses connections as a dead server's does; a relay left
    // up would accept them and hold them open until pod-runner's connect
    // timeout, attempt after attempt.
    drop(env.server.take());
    drop(env.relay.take());
    std::fs::write(hold.join("release"), b"").expect("release");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("removed again"), "{}", text(&out));
    env.assert_clean();
    assert!(!Env::netns_of(&uid).exists(), "netns left");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_create_then_create_and_delete_work() {
    let env = Env::new("prfkill");
    // How long a whole create takes here, so the kill points below spread
    // over one (a few hundred ms with the debug binary).
    env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let t = Instant::now();
    let out = env.pod_runner(&["create", "web-002"]);
    let whole = t.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let del = env.pod_runner(&["delete", "web-002"]);
    assert!(del.status.success(), "{}", text(&del));
    env.assert_clean();
    env.remove_pod("web-002").await;
    eprintln!("a create takes {whole:?}");
    for percent in [1u32, 4, 8, 12, 17, 23, 30, 40, 50, 62, 75, 90] {
        let delay = (whole * percent / 100).max(Duration::from_millis(5));
        let delay_ms = delay.as_millis();
        // A new pod each round: the delete below finishes the pod (phase
        // Succeeded or Failed), and a finished pod is not started again.
        let pod = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
        let uid = pod.metadata.uid.clone().expect("uid");
        let mut child = env.command(&["create", "web-002"]).spawn().expect("spawn");
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let out = env.pod_runner(&["create", "web-002"]);
        assert!(
            out.status.success(),
            "create after kill at {delay_ms} ms: {}",
            text(&out)
        );
        let st = env
            .pod("web-002")
            .await
            .and_then(|p| p.status)
            .expect("status");
        assert_eq!(
            st.phase.as_deref(),
            Some("Running"),
            "after kill at {delay_ms} ms"
        );
        let ip = st.pod_ip.expect("ip");
        let answer =
            testbed::http::get(&env.node().ns, format!("{ip}:8080").parse().expect("addr"));
        assert!(answer.ends_with("\nweb-002\n"), "{answer}");
        assert_eq!(
            env.leases().len(),
            1,
            "one IP lease after kill at {delay_ms} ms"
        );
        let del = env.pod_runner(&["delete", "web-002"]);
        assert!(
            del.status.success(),
            "delete after kill at {delay_ms} ms: {}",
            text(&del)
        );
        env.assert_clean();
        assert!(
            !Env::netns_of(&uid).exists(),
            "netns left after kill at {delay_ms} ms"
        );
        env.remove_pod("web-002").await;
    }
    // And a kill with nothing recreated: delete alone cleans up.
    env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let mut child = env.command(&["create", "web-002"]).spawn().expect("spawn");
    std::thread::sleep(whole / 2);
    let _ = child.kill();
    let _ = child.wait();
    let del = env.pod_runner(&["delete", "web-002"]);
    assert!(del.status.success(), "{}", text(&del));
    env.assert_clean();
}

/// SIGKILL the moment the sandbox's shim appears: containerd goes on with
/// that task create in the shim (runc makes the pod's cgroup there) while
/// `delete` already tears the pod down. The delete waits for the shim, so
/// the cgroup does not outlive it (CI once saw it left behind).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_as_the_sandbox_shim_starts_leaves_nothing() {
    let env = Env::new("prfshim");
    for round in 0..10u64 {
        let pod = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
        let uid = pod.metadata.uid.clone().expect("uid");
        let sandbox = pod_runner::state::derive_id(&["sandbox", &uid]);
        let mut child = env.command(&["create", "web-002"]).spawn().expect("spawn");
        let t = Instant::now();
        while containerd_api::live_shims(common::NS, &[&sandbox]).is_empty()
            && t.elapsed() < Duration::from_secs(10)
        {
            // Different kill points inside the shim's first milliseconds.
            std::thread::sleep(Duration::from_micros(200 + 300 * (round % 5)));
        }
        let _ = child.kill();
        let _ = child.wait();
        let del = env.pod_runner(&["delete", "web-002"]);
        assert!(del.status.success(), "round {round}: {}", text(&del));
        env.assert_clean();
        assert!(!Env::netns_of(&uid).exists(), "netns left");
        env.remove_pod("web-002").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_of_other_nodes_and_unbound_ones_are_refused() {
    let env = Env::new("prfref");
    env.create_pod("pod-web-001.yaml", Some("yuanying")).await;
    env.create_pod("pod-web-002.yaml", None).await;
    // With the node's own identity the API refuses them itself, as it
    // refuses a pod that does not exist: the Node authorizer shows a node
    // only the pods bound to it.
    for name in ["web-001", "web-002", "nope"] {
        let out = env.pod_runner(&["create", name]);
        assert_eq!(out.status.code(), Some(4), "{name}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "pod default/{name}: the API server does not let this identity read it"
            )) && err.contains("no relationship found between node 'inajob' and this object")
                && err.contains("bound to another node, not bound yet, or does not exist"),
            "{name}: {err}"
        );
    }
    // With an identity that may read every pod (an operator's admin
    // kubeconfig), pod-runner refuses them on its own, saying why.
    let admin = env.admin_kubeconfig();
    let out = env.pod_runner_as(&admin, &["create", "web-001"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("bound to node \"yuanying\""),
        "{}",
        text(&out)
    );
    let out = env.pod_runner_as(&admin, &["create", "web-002"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stderr(&out).contains("not bound"), "{}", text(&out));
    let out = env.pod_runner_as(&admin, &["create", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for kc in [env.kubeconfig.clone(), admin] {
        let out = env.pod_runner_as(&kc, &["create", "web-002", "-n", "../etc"]);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    }
    env.assert_clean();
    assert!(stdout(&env.pod_runner(&["list"])).lines().count() == 1);
    // The refused pods are as they were: no status from this node.
    for name in ["web-001", "web-002"] {
        assert_pending(&env, name).await;
    }
}
