//! A hung CNI plugin against the real control plane: `create` fails once
//! the CNI timeout has passed, the plugin is killed, and everything the
//! create made is removed again (netns, containers, IP lease, veth,
//! masquerade chain, cached result); the Pod stays Pending with the reason
//! in its status.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Env, text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_cni_plugin_fails_create_after_its_timeout_and_rolls_back() {
    let env = Env::new("prfhang");
    // `hang` never answers, on any command; each call leaves its pid.
    let pids = env.dir.path().join("hang-pids");
    let hang = env.dir.path().join("cni-bin/hang");
    std::fs::write(
        &hang,
        format!(
            "#!/bin/sh\necho $$ >> {}\nexec sleep 1000\n",
            pids.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // After the bridge, so there is a veth and a lease to roll back.
    let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
    bridge["ipam"]["dataDir"] = json!(env.data.display().to_string());
    std::fs::remove_file(env.conf_dir().join("10-bridge.conf")).expect("rm");
    std::fs::write(
        env.conf_dir().join("10-bridge.conflist"),
        json!({"cniVersion": "0.3.1", "name": "bridge", "plugins": [bridge, {"type": "hang"}]})
            .to_string(),
    )
    .expect("conflist");
    let pod = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let uid = pod.metadata.uid.clone().expect("uid");

    let t = Instant::now();
    let out = env.pod_runner(&["--cni-timeout", "2s", "create", "web-002"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("type=\"hang\" failed (add)")
            && err.contains("did not finish within 2s and the plugin was killed")
            && err.contains("removed again"),
        "{err}"
    );
    // The ADD's deadline, then the DELs of the rollback (hung as well).
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    env.assert_clean();
    assert!(!Env::netns_of(&uid).exists(), "netns left");
    let links = env.node().sh("ip -o link show");
    assert!(!links.contains("veth"), "veth left:\n{links}");
    let cached: Vec<_> = std::fs::read_dir(env.dir.path().join("cni-cache/results"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "cached results left: {cached:?}");
    // Every hung call was killed, not left behind.
    let pids = std::fs::read_to_string(&pids).expect("hang ran");
    for pid in pids.lines() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "hung plugin {pid} still running"
        );
    }

    let st = env
        .pod("web-002")
        .await
        .and_then(|p| p.status)
        .expect("status");
    assert_eq!(st.phase.as_deref(), Some("Pending"), "{st:?}");
    assert!(st.pod_ip.is_none(), "{st:?}");
    assert_eq!(
        st.reason.as_deref(),
        Some("FailedCreatePodSandBox"),
        "{st:?}"
    );
    let msg = st.message.unwrap_or_default();
    assert!(msg.contains("did not finish within 2s"), "{msg}");
}
