//! The CNI runtime side against our plugins in an emulated node: the
//! tutorial network comes up and goes away, with the result cached for DEL,
//! and a failing chain leaves nothing behind.

use std::path::Path;

use pod_runner::cni::{Attachment, Runtime};
use serde_json::json;
use testbed::Netns;
use testbed::image::static_bin;

struct Setup {
    node: Netns,
    pod: Netns,
    rt: Runtime,
    data: tempfile::TempDir,
    _dirs: tempfile::TempDir,
}

fn setup(chain: serde_json::Value) -> Setup {
    let dirs = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("tmp");
    let conf_dir = dirs.path().join("net.d");
    let bin = dirs.path().join("bin");
    std::fs::create_dir_all(&conf_dir).expect("mkdir");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for p in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(static_bin(p), bin.join(p)).expect("symlink");
    }
    let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
    bridge["ipam"]["dataDir"] = json!(data.path().display().to_string());
    let mut plugins = vec![bridge];
    plugins.extend(chain.as_array().cloned().unwrap_or_default());
    // A decoy that sorts after the real one must not be used.
    std::fs::write(
        conf_dir.join("99-other.conf"),
        r#"{"cniVersion":"0.3.1","name":"other","type":"nope"}"#,
    )
    .expect("decoy");
    std::fs::write(
        conf_dir.join("10-bridge.conflist"),
        json!({"cniVersion": "0.3.1", "name": "bridge", "plugins": plugins}).to_string(),
    )
    .expect("conflist");
    Setup {
        node: Netns::new("prn"),
        pod: Netns::new("prp"),
        rt: Runtime {
            conf_dir,
            bin_dirs: vec![bin],
            cache_dir: dirs.path().join("cache"),
            timeout: pod_runner::cni::DEFAULT_TIMEOUT,
        },
        data,
        _dirs: dirs,
    }
}

fn att(netns: &str) -> Attachment<'_> {
    Attachment {
        container_id: "sandbox-web-002",
        netns,
        ifname: "eth0",
        pod_namespace: "default",
        pod_name: "web-002",
        pod_uid: "4a1f0c2e-0000-4000-8000-000000000002",
    }
}

fn leases(data: &Path) -> usize {
    std::fs::read_dir(data.join("bridge"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn add_caches_and_del_cleans_up() {
    // loopback chained after bridge passes the result through.
    let s = setup(json!([{"type": "loopback"}]));
    let netns = s.pod.path().display().to_string();
    let a = att(&netns);
    let result = s.node.run(|| s.rt.add(&a)).expect("add");
    assert_eq!(
        result.ips[0].address.to_string(),
        "10.244.1.2/24",
        "{result:?}"
    );
    assert!(
        s.pod.sh("ip -o link show lo").contains(",UP"),
        "loopback is up"
    );
    assert!(s.pod.sh("ip -o addr show eth0").contains("10.244.1.2/24"));
    let cached = s.rt.cache_dir.join("results/bridge-sandbox-web-002-eth0");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cached).expect("cache")).expect("json");
    assert_eq!(doc["kind"], "cniCacheV1");
    assert_eq!(doc["result"]["ips"][0]["address"], "10.244.1.2/24");
    // The tutorial's 0.3.1 config has no CHECK; libcni refuses it too.
    let err = s
        .node
        .run(|| s.rt.check(&a))
        .expect_err("no CHECK in 0.3.1");
    assert!(
        err.to_string()
            .contains("does not support the CHECK command"),
        "{err}"
    );
    // The conf dir changing does not matter to DEL: the cache has it.
    std::fs::remove_file(s.rt.conf_dir.join("10-bridge.conflist")).expect("rm");
    s.node.run(|| s.rt.del(&a)).expect("del");
    assert!(!cached.exists());
    assert_eq!(leases(s.data.path()), 0);
    assert!(!s.node.sh("ip -o link show").contains("veth"));
    assert!(!s.node.sh("iptables-save -t nat").contains("CNI-"));
    assert!(
        !s.pod.sh("ip -o link show lo").contains(",UP"),
        "loopback DEL"
    );
}

#[test]
fn a_failing_chain_is_rolled_back() {
    let s = setup(json!([{"type": "no-such-plugin"}]));
    let netns = s.pod.path().display().to_string();
    let a = att(&netns);
    let err = s.node.run(|| s.rt.add(&a)).expect_err("fails");
    assert!(err.to_string().contains("no-such-plugin"), "{err}");
    assert_eq!(leases(s.data.path()), 0);
    assert!(!s.node.sh("ip -o link show").contains("veth"));
    assert!(!s.pod.sh("ip -o link show").contains("eth0"));
    assert!(
        !s.rt
            .cache_dir
            .join("results/bridge-sandbox-web-002-eth0")
            .exists()
    );
}

#[test]
fn a_broken_config_is_a_clear_error() {
    // libcni's rule: a broken file is passed over for the next that loads;
    // with none left, the error names each one and why.
    let s = setup(json!([]));
    std::fs::write(s.rt.conf_dir.join("00-broken.conflist"), "{not json").expect("write");
    for f in ["10-bridge.conflist", "99-other.conf"] {
        std::fs::write(s.rt.conf_dir.join(f), "{}").expect("break");
    }
    let netns = s.pod.path().display().to_string();
    let a = att(&netns);
    let err = s.node.run(|| s.rt.add(&a)).expect_err("fails");
    for f in ["00-broken.conflist", "10-bridge.conflist", "99-other.conf"] {
        assert!(err.to_string().contains(f), "{err}");
    }
    assert!(!s.pod.sh("ip -o link show").contains("eth0"));
}
