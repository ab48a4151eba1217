//! The tutorial's two emulated nodes for node-sync against a real control
//! plane (etcd and kube-apiserver with Node,RBAC authorization and
//! NodeRestriction): each node with its own netns, containerd, CNI config,
//! relay to the API and kubeconfig of its own identity
//! (`system:node:<name>`); node-sync run on a node as an operator runs it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::Client;
use kube::api::Api;
use serde_json::json;
use testbed::Netns;
use testbed::api::Apiserver;
use testbed::cluster::Cluster;
use testbed::containerd::Containerd;
use testbed::controlplane::{ControlPlane, Options};
use testbed::image::static_bin;
use testbed::relay::Relay;

/// node-sync's ClusterRole and its binding to `system:nodes`.
/// The binary under test: the static release build the suite ships
/// (`scripts/build-plugins.sh -p node-sync`), run as a node would run it.
pub fn node_sync_bin() -> std::path::PathBuf {
    static_bin("node-sync")
}

pub const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/node-sync-rbac.yaml");

pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct NodeEnv {
    pub name: &'static str,
    pub ip: &'static str,
    pub cidr: &'static str,
    pub ctrd: Option<Containerd>,
    pub relay: Option<Relay>,
    pub conf: PathBuf,
    pub state: tempfile::TempDir,
}

pub struct Env {
    pub nodes: Vec<NodeEnv>,
    pub cluster: Cluster,
    pub cp: ControlPlane,
    pub dir: tempfile::TempDir,
}

pub const NODES: [(&str, &str, &str); 2] = [
    ("inajob", "192.168.43.111", "10.244.1.0/24"),
    ("yuanying", "192.168.43.112", "10.244.2.0/24"),
];

impl Env {
    /// The two nodes and a control plane; node-sync's RBAC applied by the
    /// admin when `rbac`.
    pub fn new(tag: &str, rbac: bool) -> Env {
        let dir = tempfile::tempdir().expect("tmp");
        let cluster = Cluster::tutorial(tag);
        let cp = ControlPlane::start(&Options::default()).expect("control plane");
        eprintln!("control plane ready in {:?}", cp.started_in);
        cp.write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
            .expect("kubeconfigs");
        if rbac {
            cp.kubectl(&["apply", "-f", RBAC]).expect("RBAC");
        }
        let mut nodes = Vec::new();
        for (name, ip, cidr) in NODES {
            let ns = &cluster.node(name).ns;
            let state = tempfile::Builder::new()
                .prefix("tb-ctrd-")
                .tempdir_in("/var/tmp")
                .expect("state");
            let conf = dir.path().join(format!("{name}-net.d"));
            std::fs::create_dir_all(&conf).expect("mkdir");
            let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
            bridge["ipam"]["ranges"] = json!([[{"subnet": cidr}]]);
            bridge["ipam"]["dataDir"] = json!(
                dir.path()
                    .join(format!("{name}-ipam"))
                    .display()
                    .to_string()
            );
            std::fs::write(conf.join("10-bridge.conf"), bridge.to_string()).expect("conf");
            nodes.push(NodeEnv {
                name,
                ip,
                cidr,
                ctrd: Some(Containerd::start(
                    state.path(),
                    Some(ns),
                    Path::new("/usr/lib/cni"),
                )),
                relay: Some(Relay::start(ns, cp.port()).expect("relay")),
                conf,
                state,
            });
        }
        Env {
            nodes,
            cluster,
            cp,
            dir,
        }
    }

    pub fn node(&self, name: &str) -> &NodeEnv {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeEnv {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node")
    }

    pub fn ns(&self, name: &str) -> &Netns {
        &self.cluster.node(name).ns
    }

    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.kubeconfig"))
    }

    /// The node cut off from the API server: its relay closed, with every
    /// connection through it.
    pub fn cut(&mut self, name: &str) {
        drop(self.node_mut(name).relay.take());
    }

    /// The node's relay back (its port may take a moment to be free).
    pub fn reconnect(&mut self, name: &str) {
        let port = self.cp.port();
        let mut tries = 0;
        let relay = loop {
            match Relay::start(self.ns(name), port) {
                Ok(r) => break r,
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("relay: {e}"),
            }
        };
        self.node_mut(name).relay = Some(relay);
    }

    pub fn start(&self, name: &str) -> Agent {
        self.start_with(name, &[])
    }

    /// node-sync on `name` with `extra` flags (the log is appended to).
    pub fn start_with(&self, name: &str, extra: &[&str]) -> Agent {
        self.start_with_env(name, extra, &[])
    }

    /// [`Env::start_with`] with `env` set for node-sync (a `PATH` with
    /// stand-in tools first, say).
    pub fn start_with_env(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let n = self.node(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        let socket = n
            .ctrd
            .as_ref()
            .map(|c| c.socket())
            .unwrap_or_else(|| self.dir.path().join("no-containerd.sock"));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns(name).path().display()))
            .arg(node_sync_bin())
            .arg("--kubeconfig")
            .arg(self.kubeconfig(name))
            .args(["--node-name", name, "--node-ip", n.ip, "--pod-cidr", n.cidr])
            .arg("--containerd-socket")
            .arg(&socket)
            .arg("--cni-conf-dir")
            .arg(&n.conf)
            .args([
                "--status-interval-seconds",
                "1",
                "--label",
                "tutorial=heartful",
            ])
            .args(extra)
            .arg("run")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node-sync");
        Agent(child)
    }

    /// `node-sync <args>` once on the node with its own identity.
    pub fn node_sync(&self, name: &str, args: &[&str]) -> Output {
        self.node_sync_as(name, &self.kubeconfig(name), args)
    }

    /// `node-sync <args>` once on the node with `kubeconfig`'s identity.
    pub fn node_sync_as(&self, name: &str, kubeconfig: &Path, args: &[&str]) -> Output {
        let n = self.node(name);
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns(name).path().display()))
            .arg(node_sync_bin())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node-name", name, "--node-ip", n.ip])
            .args(args)
            .output()
            .expect("node-sync")
    }

    /// `node-sync <cmd>` once on the node; its stdout (it must succeed).
    pub fn run_once(&self, name: &str, cmd: &str) -> String {
        let out = self.node_sync(name, &[cmd]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub async fn admin(&self) -> Client {
        testbed::kubectl::client(&self.dir.path().join("admin.kubeconfig"))
            .await
            .expect("admin client")
    }

    /// `ip route show proto 200` on the node, one route per line.
    pub fn our_routes(&self, name: &str) -> Vec<String> {
        self.ns(name)
            .sh("ip route show proto 200")
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// `/metrics` from node-sync on the node's loopback.
    pub fn metrics(&self, name: &str) -> String {
        let at = "127.0.0.1:10249".parse().expect("addr");
        testbed::http::get_path_in(&self.ns(name).path(), at, "/metrics")
    }
}

pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn condition(n: &Node, kind: &str) -> Option<NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

pub fn ready(n: &Node) -> Option<(String, String)> {
    condition(n, "Ready").map(|c| (c.status, c.message.unwrap_or_default()))
}

pub async fn is_ready(nodes: &Api<Node>, name: &str, want: &str) -> bool {
    matches!(nodes.get_opt(name).await, Ok(Some(n)) if ready(&n).is_some_and(|(s, _)| s == want))
}

pub async fn renewed(leases: &Api<Lease>, name: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    leases.get(name).await.ok()?.spec?.renew_time.map(|t| t.0)
}

/// A pod on `node`: a netns with our bridge plugin's tutorial config.
pub fn pod(env: &Env, node: &str, id: &str) -> (Netns, String) {
    let ns = Netns::new("nspod");
    let n = env.node(node);
    let conf = std::fs::read_to_string(n.conf.join("10-bridge.conf")).expect("conf");
    let bin_dir = static_bin("bridge").parent().expect("dir").to_path_buf();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", env.ns(node).path().display()))
        .arg(static_bin("bridge"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bridge");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("bridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("result");
    let ip = v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("ip")
        .to_string();
    (ns, ip)
}

/// A TCP echo from pod `b` to pod `a` at `a_ip`.
pub fn echo(a: &Netns, a_ip: &str, b: &Netns) -> String {
    let listener = a.run(|| TcpListener::bind("0.0.0.0:7777")).expect("listen");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(&buf[..n]);
        }
    });
    let addr = format!("{a_ip}:7777").parse().expect("addr");
    let got = b.run(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"across nodes")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    let _ = server.join();
    got.expect("TCP echo")
}

/// The endpoints programmed on `node` for the tutorial VIP's port 80.
pub fn endpoints_on(env: &Env, node: &str) -> Option<Vec<String>> {
    let p = node_sync::services::nft::programmed_in(Some(&env.ns(node).path())).ok()?;
    let s = p
        .iter()
        .find(|s| s.vip.to_string() == "10.254.10.128" && s.port == 80)?;
    Some(s.endpoints.iter().map(|e| e.to_string()).collect())
}
