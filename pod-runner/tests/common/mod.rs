//! One emulated node for pod-runner: the API server stand-in, the node
//! inajob on a LAN netns, its private containerd, our CNI plugins with the
//! tutorial's bridge config, the pause and web images imported; and
//! `pod-runner` run on the node the way an operator runs it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::cluster::{Cluster, INAJOB, Node};
use testbed::containerd::Containerd as PrivateContainerd;
use testbed::image::{single_binary_oci_tar, static_bin};
use testbed::relay::Relay;

pub const NS: &str = "testbed";

pub struct Env {
    pub relay: Option<Relay>,
    pub server: Option<ApiServer>,
    pub ctrd: PrivateContainerd,
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub kubeconfig: PathBuf,
    /// Pods this test made, for the leftover checks.
    pub uids: std::sync::Mutex<Vec<String>>,
    _state: tempfile::TempDir,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let dir = tempfile::tempdir().expect("tmp");
        let state = tempfile::Builder::new()
            .prefix("tb-ctrd-")
            .tempdir_in("/var/tmp")
            .expect("state");
        let mut cluster = Cluster::new(tag);
        cluster.add_node(INAJOB.0, INAJOB.1);
        let bin = dir.path().join("cni-bin");
        let conf = dir.path().join("net.d");
        let data = dir.path().join("ipam");
        for d in [&bin, &conf] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        for p in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(static_bin(p), bin.join(p)).expect("symlink");
        }
        let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
        bridge["ipam"]["dataDir"] = json!(data.display().to_string());
        std::fs::write(conf.join("10-bridge.conf"), bridge.to_string()).expect("conf");
        let ctrd = PrivateContainerd::start(state.path(), Some(&cluster.node("inajob").ns), &bin);
        let server = ApiServer::start(0, None).expect("apiserver");
        server
            .write_kubeconfigs(dir.path(), &["inajob"])
            .expect("kubeconfigs");
        let relay = Relay::start(&cluster.node("inajob").ns, server.port()).expect("relay");
        let env = Env {
            relay: Some(relay),
            kubeconfig: dir.path().join("inajob.kubeconfig"),
            server: Some(server),
            ctrd,
            cluster,
            data,
            dir,
            uids: std::sync::Mutex::new(Vec::new()),
            _state: state,
        };
        let images = env.dir.path().join("images");
        std::fs::create_dir_all(&images).expect("mkdir");
        for name in ["pause", "web"] {
            let tar = single_binary_oci_tar(&images, name, &static_bin(name));
            let out = env.pod_runner(&["image", "import", &tar.to_string_lossy()]);
            assert!(out.status.success(), "import {name}: {}", text(&out));
        }
        env
    }

    pub fn node(&self) -> &Node {
        self.cluster.node("inajob")
    }

    pub fn server(&self) -> &ApiServer {
        self.server.as_ref().expect("server running")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// `pod-runner <args>` on the node, with this node's flags. nsenter
    /// (not `ip netns exec`) keeps the host's mount namespace, where
    /// containerd must see the sandbox's pinned netns.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node().ns.path().display()))
            .arg(env!("CARGO_BIN_EXE_pod-runner"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node", "inajob", "--node-ip", "192.168.43.111"])
            .arg("--containerd-socket")
            .arg(self.ctrd.socket())
            .args(["--containerd-namespace", NS])
            .arg("--cni-conf-dir")
            .arg(self.conf_dir())
            .arg("--cni-bin-dir")
            .arg(self.dir.path().join("cni-bin"))
            .arg("--cni-cache-dir")
            .arg(self.dir.path().join("cni-cache"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--log-dir")
            .arg(self.log_dir())
            .args(args);
        c
    }

    pub fn pod_runner(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pod-runner")
    }

    pub async fn admin(&self) -> Client {
        let kc = Kubeconfig::read_from(self.dir.path().join("admin.kubeconfig")).expect("kc");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }

    /// Creates the testdata pod and, as the scheduler does, binds it to
    /// `node`.
    pub async fn create_pod(&self, file: &str, node: Option<&str>) -> Pod {
        self.create_pod_object(testbed::testdata::load_one(file), node)
            .await
    }

    /// Creates `pod` and binds it to `node`.
    pub async fn create_pod_object(&self, pod: Pod, node: Option<&str>) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, "default");
        let made = pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        if let (Ok(mut u), Some(uid)) = (self.uids.lock(), made.metadata.uid.clone()) {
            u.push(uid);
        }
        let Some(node) = node else {
            return made;
        };
        let name = made.metadata.name.clone().unwrap_or_default();
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
        let _: serde_json::Value = pods
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await
            .expect("bind pod");
        pods.get(&name).await.expect("get pod")
    }

    pub async fn pod(&self, name: &str) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, "default");
        pods.get_opt(name).await.expect("get pod")
    }

    /// Files in the IPAM data dir that are leases (not lock/last_reserved).
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.data.join("bridge"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts nothing of any pod is left: containers, tasks, active
    /// snapshots, leases, pinned netns, IP leases, masquerade chains.
    pub fn assert_clean(&self) {
        let ctr = |args: &[&str]| self.ctrd.ctr_ok(args);
        assert!(
            ctr(&["containers", "ls", "-q"]).trim().is_empty(),
            "containers left"
        );
        assert!(ctr(&["tasks", "ls", "-q"]).trim().is_empty(), "tasks left");
        assert!(
            ctr(&["leases", "ls", "-q"]).trim().is_empty(),
            "leases left"
        );
        let snaps = ctr(&["snapshots", "ls"]);
        assert!(
            !snaps.lines().any(|l| l.contains("Active")),
            "active snapshots left:\n{snaps}"
        );
        assert!(
            self.leases().is_empty(),
            "IP leases left: {:?}",
            self.leases()
        );
        let nat = self.node().sh("iptables-save -t nat");
        assert!(!nat.contains("-A CNI-"), "masquerade chains left:\n{nat}");
        let records = std::fs::read_dir(self.state_dir().join("pods"))
            .map(|r| r.flatten().count())
            .unwrap_or(0);
        assert_eq!(records, 0, "pod records or dirs left");
        let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/memory/pod-runner")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                self.uids
                    .lock()
                    .map(|u| u.iter().any(|u| n == &format!("pod{u}")))
                    .unwrap_or(false)
            })
            .collect();
        assert!(cgroups.is_empty(), "pod cgroups left: {cgroups:?}");
    }

    /// The pinned netns pod-runner makes for the pod with `uid`.
    pub fn netns_of(uid: &str) -> PathBuf {
        let id = pod_runner::state::derive_id(&["sandbox", uid]);
        Path::new("/run/netns").join(pod_runner::state::netns_name(&id))
    }
}

impl Drop for Env {
    /// A failed test still removes its pods (containerd, the API server
    /// and the netns go with the fields after this).
    fn drop(&mut self) {
        let Ok(store) = pod_runner::state::Store::new(&self.state_dir()).all() else {
            return;
        };
        for r in store {
            let _ = self
                .command(&["delete", &r.name, "-n", &r.namespace, "--grace-period", "0"])
                .output();
            let _ = pod_runner::netns::remove(&r.netns);
        }
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
