//! One emulated node for pod-runner: a real control plane (etcd and
//! kube-apiserver with Node,RBAC authorization and NodeRestriction), the
//! node inajob on a LAN netns, registered as a kubelet registers, its
//! private containerd, our CNI plugins with the tutorial's bridge config,
//! the pause and web images imported; and `pod-runner` run on the node the
//! way an operator runs it, with the node's own identity
//! `system:node:inajob`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use testbed::api::Apiserver;
use testbed::cluster::{Cluster, INAJOB, Node};
use testbed::containerd::Containerd as PrivateContainerd;
use testbed::controlplane::{ControlPlane, Options};
use testbed::image::{single_binary_oci_tar, static_bin};
use testbed::relay::Relay;

pub const NS: &str = "testbed";

pub struct Env {
    pub relay: Option<Relay>,
    pub server: Option<ControlPlane>,
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
        let server = ControlPlane::start(&Options::default()).expect("control plane");
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
        env.register_node();
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

    pub fn server(&self) -> &ControlPlane {
        self.server.as_ref().expect("server running")
    }

    /// The Node object, made with the node's own identity and its
    /// InternalIP in the status, as the kubelet registers (NodeRestriction
    /// lets a node create only itself). pod-runner reads the IP from it.
    fn register_node(&self) {
        let node: NodeObject = serde_json::from_value(json!({
            "metadata": {"name": INAJOB.0, "labels": {"kubernetes.io/hostname": INAJOB.0}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": INAJOB.1.to_string()},
                {"type": "Hostname", "address": INAJOB.0}]}
        }))
        .expect("node");
        testbed::kubectl::blocking(async {
            let nodes: Api<NodeObject> = Api::all(self.client(&self.kubeconfig).await);
            nodes
                .create(&PostParams::default(), &node)
                .await
                .expect("register node inajob");
        });
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
        self.command_as(&self.kubeconfig, args)
    }

    /// [`Env::command`] with another identity than the node's (an
    /// operator's admin kubeconfig, say).
    pub fn command_as(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node().ns.path().display()))
            .arg(env!("CARGO_BIN_EXE_pod-runner"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            // No --node-ip: hostIP comes from the Node's InternalIP.
            .args(["--node", "inajob"])
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

    pub fn pod_runner_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.command_as(kubeconfig, args)
            .output()
            .expect("run pod-runner")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    async fn client(&self, kubeconfig: &Path) -> Client {
        let kc = Kubeconfig::read_from(kubeconfig).expect("kc");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }

    pub async fn admin(&self) -> Client {
        self.client(&self.admin_kubeconfig()).await
    }

    /// The node's own identity, the one pod-runner runs with.
    pub async fn node_client(&self) -> Client {
        self.client(&self.kubeconfig).await
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
        if node == INAJOB.0 {
            self.wait_visible(&name).await;
        }
        pods.get(&name).await.expect("get pod")
    }

    /// Waits until the node's identity may read the pod: the Node
    /// authorizer learns of the binding through a watch, a moment after
    /// the binding returns. A kubelet acts on a pod only once its own
    /// watch shows it, so it never sees that moment; a test that runs
    /// pod-runner right after binding would.
    async fn wait_visible(&self, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.node_client().await, "default");
        let t = Instant::now();
        loop {
            match pods.get_opt(name).await {
                Ok(Some(_)) => return,
                Err(kube::Error::Api(e)) if e.code == 403 => {}
                other => panic!("node reading pod {name}: {other:?}"),
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the node never got to read its pod {name}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Removes the pod from the API at once (the admin, grace 0), as its
    /// controller's cleanup would; waits until it is gone.
    pub async fn remove_pod(&self, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, "default");
        let params = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match pods.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => panic!("deleting pod {name}: {e}"),
        }
        let t = Instant::now();
        while pods.get_opt(name).await.expect("get pod").is_some() {
            assert!(t.elapsed() < Duration::from_secs(10), "pod {name} stays");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            let _ = netkit::pinned::remove(&r.netns);
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
