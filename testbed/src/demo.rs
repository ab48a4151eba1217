//! The demo: the tutorial's story replayed by our binaries on one machine.
//! The control plane is the real one when its binaries are here
//! (`KUBEBUILDER_ASSETS`): etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, which do their parts themselves. Without them the
//! API server stand-in runs, and the demo plays the scheduler and the
//! endpoints controller, saying so. The two worker nodes inajob and
//! yuanying are network namespaces on a LAN, each with a private
//! containerd, our CNI plugins with the tutorial's bridge config and
//! node-sync with the node's own identity. Then `pod-runner create` runs
//! on each node for the pods bound to it, as the tutorial's worker does,
//! and the proofs follow: Nodes Ready, routes, pods Running, a request
//! across nodes, the EndpointSlice, the Service's rules and four requests
//! to the ClusterIP that alternate between the two pods.
//!
//! Everything is owned by [`Demo`], whose fields drop in order (pods
//! deleted, agents stopped, containerd stopped, the control plane, the
//! namespaces, the directory), so a failed step, a panic or an interrupt
//! still cleans up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::api::Apiserver;
use crate::apiserver::ApiServer;
use crate::cluster::Cluster;
use crate::containerd::Containerd;
use crate::controlplane::{ControlPlane, Options as CpOptions};
use crate::relay::Relay;

pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The tutorial's nodes: name, node IP, podCIDR; and which pod each runs
/// when the demo plays the scheduler.
const NODES: [(&str, &str, &str, &str); 2] = [
    ("inajob", "192.168.43.111", "10.244.1.0/24", "web-002"),
    ("yuanying", "192.168.43.112", "10.244.2.0/24", "web-001"),
];

/// Who plays kube-apiserver (and the controllers and the scheduler).
enum Control {
    Real(Box<ControlPlane>),
    StandIn(ApiServer),
}

impl Control {
    fn api(&self) -> &dyn Apiserver {
        match self {
            Control::Real(c) => c.as_ref(),
            Control::StandIn(s) => s,
        }
    }
}
const VIP: &str = "10.254.10.128:80";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Step(String),
    #[error("interrupted")]
    Interrupted,
}

type Res<T> = Result<T, DemoError>;

fn fail(msg: impl Into<String>) -> DemoError {
    DemoError::Step(msg.into())
}

fn check_interrupt() -> Res<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// Which control plane the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The real one when its binaries are found, else the stand-in.
    Auto,
    Real,
    StandIn,
}

pub struct Options {
    /// Where `pod-runner`, `node-sync`, `pause`, `web` and the CNI plugins are.
    pub bin_dir: PathBuf,
    pub plane: Plane,
    /// `auto`, `nftables` or `ipvs`.
    pub proxy_mode: String,
}

/// Pods created on nodes: deleted with `pod-runner delete` when dropped.
struct Pods<'a> {
    demo: &'a Demo,
    made: Vec<(&'static str, String)>,
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for (node, pod) in self.made.drain(..).rev() {
            let _ = self
                .demo
                .pod_runner(node, &["delete", &pod, "--grace-period", "0"]);
        }
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: node-sync leaves what it programmed (the netns goes
        // with it anyway); SIGKILL if it does not stop.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the demo owns; fields drop in this order.
pub struct Demo {
    agents: Vec<Agent>,
    _relays: Vec<Relay>,
    ctrds: Vec<Containerd>,
    control: Control,
    /// The pods run on the nodes: (node, pod).
    pods: Vec<(&'static str, String)>,
    cluster: Cluster,
    _states: Vec<tempfile::TempDir>,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// One line per step: a check mark or a cross, what, the detail, the time.
pub struct Steps<'w> {
    out: &'w mut dyn std::io::Write,
    started: Instant,
    /// A terminal sees "… step" while it runs, overwritten by its result.
    tty: bool,
}

impl<'w> Steps<'w> {
    pub fn new(out: &'w mut dyn std::io::Write, tty: bool) -> Self {
        Steps {
            out,
            started: Instant::now(),
            tty,
        }
    }

    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Res<(T, String)>) -> Res<T> {
        check_interrupt()?;
        let t = Instant::now();
        if self.tty {
            let _ = write!(self.out, "  … {what}\r");
            let _ = self.out.flush();
        }
        match f() {
            Ok((v, detail)) => {
                let _ = writeln!(
                    self.out,
                    "  ✓ {what} ({:.1} s){}",
                    t.elapsed().as_secs_f64(),
                    indent(&detail)
                );
                Ok(v)
            }
            Err(e) => {
                let _ = writeln!(self.out, "  ✗ {what}: {e}");
                Err(e)
            }
        }
    }

    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }
}

fn indent(detail: &str) -> String {
    let mut s = String::new();
    for l in detail.lines() {
        let _ = write!(s, "\n      {l}");
    }
    s
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .to_string()
}

impl Demo {
    /// The machinery: API server, nodes, containerd, plugins, images.
    pub fn up(o: &Options, steps: &mut Steps) -> Res<Demo> {
        let bin_dir = std::fs::canonicalize(&o.bin_dir)
            .map_err(|e| fail(format!("{}: {e}", o.bin_dir.display())))?;
        for b in [
            "pod-runner",
            "node-sync",
            "pause",
            "web",
            "bridge",
            "host-local",
            "loopback",
        ] {
            if !bin_dir.join(b).is_file() {
                return Err(fail(format!("{b} is missing from {}", bin_dir.display())));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("heartful-demo-")
            .tempdir_in("/var/tmp")
            .map_err(|e| fail(format!("a directory for the demo: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("a tokio runtime: {e}")))?;
        use crate::controlplane::{Assets, ControlPlaneError};
        let assets = match o.plane {
            Plane::StandIn => Err("--control-plane stand-in".to_string()),
            Plane::Real => Ok(Assets::find().map_err(|e| fail(e.to_string()))?),
            // Binaries named but broken are an error; none at all is the
            // stand-in's case.
            Plane::Auto => match Assets::find() {
                Ok(a) => Ok(a),
                Err(e @ ControlPlaneError::NoAssets(_)) => Err(e.to_string()),
                Err(e) => return Err(fail(e.to_string())),
            },
        };
        let control = match assets {
            Ok(assets) => steps.run(
                "the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
                || {
                    let cp = ControlPlane::start(&CpOptions {
                        controllers: true,
                        scheduler: true,
                        ..CpOptions::default()
                    })
                    .map_err(|e| fail(e.to_string()))?;
                    let version = cp
                        .kubectl(&["version", "-o", "json"])
                        .ok()
                        .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                        .and_then(|v| v["serverVersion"]["gitVersion"].as_str().map(String::from))
                        .unwrap_or_else(|| "?".into());
                    let d = format!(
                        "Kubernetes {version} from {}, up in {:.1} s\n{}: TLS, client certificates, --authorization-mode=Node,RBAC, NodeRestriction, service CIDR 10.254.0.0/16",
                        assets.dir.display(),
                        cp.started_in.as_secs_f64(),
                        cp.url()
                    );
                    Ok((Control::Real(Box::new(cp)), d))
                },
            )?,
            Err(why) => {
                steps.say(&format!(
                    "  (the API server stand-in plays kube-apiserver, and the demo the scheduler and the endpoints controller: {why})"
                ));
                steps.run("the API server stand-in (kube-apiserver's role)", || {
                    let s = ApiServer::start(0, None).map_err(|e| fail(e.to_string()))?;
                    let d = format!("{}, client certificates", s.url());
                    Ok((Control::StandIn(s), d))
                })?
            }
        };
        steps.run("an identity for the admin and for each node", || {
            control
                .api()
                .write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
                .map_err(|e| fail(e.to_string()))?;
            Ok((
                (),
                format!(
                    "{d}/admin.kubeconfig (system:masters)\n{d}/inajob.kubeconfig (system:node:inajob)\n{d}/yuanying.kubeconfig (system:node:yuanying)",
                    d = dir.path().display()
                ),
            ))
        })?;
        let cluster = steps.run("two worker nodes on one LAN (network namespaces)", || {
            let c = Cluster::tutorial("demo");
            for n in c.nodes() {
                // A default route, as a real node has: ClusterIPs are
                // routed through it before they are translated.
                n.sh("ip route add default via 192.168.43.1 dev eth0");
            }
            let d = NODES
                .iter()
                .map(|(n, ip, cidr, _)| {
                    format!("{n} {ip} podCIDR {cidr} (netns {})", c.node(n).ns.name())
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok((c, d))
        })?;
        let bin = dir.path().join("cni-bin");
        steps.run("our CNI plugins with the tutorial's bridge config", || {
            std::fs::create_dir_all(&bin).map_err(|e| fail(e.to_string()))?;
            for p in ["bridge", "host-local", "loopback"] {
                std::fs::copy(bin_dir.join(p), bin.join(p))
                    .map_err(|e| fail(format!("installing {p}: {e}")))?;
            }
            for (name, _, cidr, _) in NODES {
                let conf = dir.path().join(name).join("net.d");
                std::fs::create_dir_all(&conf).map_err(|e| fail(e.to_string()))?;
                let mut bridge = crate::testdata::cni_conf("10-bridge.conf");
                bridge["ipam"]["ranges"] = json!([[{"subnet": cidr}]]);
                bridge["ipam"]["dataDir"] =
                    json!(dir.path().join(name).join("ipam").display().to_string());
                std::fs::write(conf.join("10-bridge.conf"), bridge.to_string())
                    .map_err(|e| fail(e.to_string()))?;
            }
            Ok(((), format!("{}: bridge host-local loopback; net.d/10-bridge.conf: cni0, isGateway, ipMasq, host-local", bin.display())))
        })?;
        let mut states = Vec::new();
        let (ctrds, relays) = steps.run("a private containerd on each node", || {
            let mut ctrds = Vec::new();
            let mut relays = Vec::new();
            for (name, ..) in NODES {
                let state = tempfile::Builder::new()
                    .prefix("tb-ctrd-")
                    .tempdir_in("/var/tmp")
                    .map_err(|e| fail(e.to_string()))?;
                let ns = &cluster.node(name).ns;
                ctrds.push(Containerd::start(state.path(), Some(ns), &bin));
                relays
                    .push(Relay::start(ns, control.api().port()).map_err(|e| fail(e.to_string()))?);
                states.push(state);
            }
            let d = ctrds
                .iter()
                .map(|c| c.socket().display().to_string())
                .collect::<Vec<_>>()
                .join("\n");
            Ok(((ctrds, relays), d))
        })?;
        let demo = Demo {
            agents: Vec::new(),
            _relays: relays,
            ctrds,
            control,
            pods: Vec::new(),
            cluster,
            _states: states,
            dir,
            bin_dir,
            rt,
        };
        steps.run("the pause and web images, imported on each node", || {
            let images = demo.dir.path().join("images");
            std::fs::create_dir_all(&images).map_err(|e| fail(e.to_string()))?;
            let mut d = String::new();
            for name in ["pause", "web"] {
                check_interrupt()?;
                let tar =
                    crate::image::single_binary_oci_tar(&images, name, &demo.bin_dir.join(name));
                for (node, ..) in NODES {
                    let out =
                        demo.pod_runner(node, &["image", "import", &tar.to_string_lossy()])?;
                    if !out.status.success() {
                        return Err(fail(format!("import {name} on {node}: {}", text(&out))));
                    }
                }
                let _ = writeln!(
                    d,
                    "localhost/{name}:latest (OCI archive built from our static {name})"
                );
            }
            Ok(((), d))
        })?;
        Ok(demo)
    }

    fn kubeconfig(&self, who: &str) -> PathBuf {
        self.dir.path().join(format!("{who}.kubeconfig"))
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    fn ns_path(&self, node: &str) -> PathBuf {
        self.cluster.node(node).ns.path()
    }

    /// `pod-runner <args>` on `node`, as an operator runs it there.
    fn pod_runner(&self, node: &str, args: &[&str]) -> Res<Output> {
        let (_, ip, ..) = NODES
            .iter()
            .find(|n| n.0 == node)
            .ok_or_else(|| fail(format!("no node {node}")))?;
        let i = NODES.iter().position(|n| n.0 == node).unwrap_or(0);
        let d = self.node_dir(node);
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path(node).display()))
            .arg(self.bin_dir.join("pod-runner"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(node))
            .args(["--node", node, "--node-ip", ip])
            .arg("--containerd-socket")
            .arg(self.ctrds[i].socket())
            .arg("--cni-conf-dir")
            .arg(d.join("net.d"))
            .arg("--cni-bin-dir")
            .arg(self.dir.path().join("cni-bin"))
            .arg("--cni-cache-dir")
            .arg(d.join("cni-cache"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--log-dir")
            .arg(d.join("logs"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("running pod-runner: {e}")))
    }

    fn node_sync_cmd(&self, node: &str, ip: &str, cidr: &str, proxy: &str) -> Command {
        let i = NODES.iter().position(|n| n.0 == node).unwrap_or(0);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(node).display()))
            .arg(self.bin_dir.join("node-sync"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(node))
            .args(["--node-name", node, "--node-ip", ip, "--pod-cidr", cidr])
            .args(["--proxy-mode", proxy])
            .arg("--containerd-socket")
            .arg(self.ctrds[i].socket())
            .arg("--cni-conf-dir")
            .arg(self.node_dir(node).join("net.d"))
            // The emulated nodes share the host's disk with the build tree,
            // which can hold it under the kubelet's 10% (DiskPressure, and
            // a NoSchedule taint the scheduler honours): each node's nodefs
            // is the host's tmpfs instead.
            .args(["--nodefs", "/dev/shm"])
            .env("NO_COLOR", "1");
        c
    }

    fn admin(&self) -> Res<kube::Client> {
        self.rt
            .block_on(crate::kubectl::client(&self.kubeconfig("admin")))
            .map_err(|e| fail(e.to_string()))
    }

    /// The real kubectl as the admin, when the real control plane runs.
    fn kubectl(&self, args: &[&str]) -> Res<String> {
        match &self.control {
            Control::Real(cp) => cp.kubectl(args).map_err(fail),
            Control::StandIn(_) => Err(fail("no kubectl without the Kubernetes binaries")),
        }
    }

    fn real(&self) -> bool {
        matches!(self.control, Control::Real(_))
    }

    /// Polls `f` every 200 ms until it returns a value, for `secs` at most.
    fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> Res<T> {
        self.wait_because(what, secs, || f().ok_or_else(String::new))
    }

    /// [`Self::wait`] for a check that says why it is not there yet; the
    /// last reason is the error's.
    fn wait_because<T>(
        &self,
        what: &str,
        secs: u64,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> Res<T> {
        let t = Instant::now();
        loop {
            check_interrupt()?;
            let why = match f() {
                Ok(v) => return Ok(v),
                Err(why) => why,
            };
            if t.elapsed() > Duration::from_secs(secs) {
                let why = if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                };
                return Err(fail(format!("{what}: not within {secs} s{why}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tutorial's story; `steps` prints it.
    pub fn story(&mut self, o: &Options, steps: &mut Steps) -> Res<()> {
        let admin = self.admin()?;
        steps.say("\n1. The nodes: node-sync registers each Node, reports its status and routes to the other's pods");
        steps.run(
            "node-sync's permissions: kubectl apply -f deploy/node-sync-rbac.yaml",
            || {
                let rbac = crate::testdata::dir().join("../deploy/node-sync-rbac.yaml");
                let out = if self.real() {
                    self.kubectl(&["apply", "-f", &rbac.to_string_lossy()])?
                } else {
                    let text = std::fs::read_to_string(&rbac)
                        .map_err(|e| fail(format!("{}: {e}", rbac.display())))?;
                    self.rt
                        .block_on(crate::kubectl::apply(&admin, &text))
                        .map_err(|e| fail(e.to_string()))?
                        .join("\n")
                };
                Ok((
                    (),
                    format!(
                        "{}\nlist/watch of nodes, services, endpoints, endpointslices for the group system:nodes",
                        out.trim()
                    ),
                ))
            },
        )?;
        let agents = steps.run("node-sync running on inajob and yuanying", || {
            let mut agents = Vec::new();
            for (node, ip, cidr, _) in NODES {
                let log = std::fs::File::create(self.node_dir(node).join("node-sync.log"))
                    .map_err(|e| fail(e.to_string()))?;
                let child = self
                    .node_sync_cmd(node, ip, cidr, &o.proxy_mode)
                    // Each node its own hostname, as on real machines.
                    .args(["--label", &format!("kubernetes.io/hostname={node}")])
                    .arg("run")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| fail(format!("starting node-sync: {e}")))?;
                agents.push(Agent(child));
            }
            Ok((
                agents,
                format!(
                    "--proxy-mode {}, each with its node's identity; logs in {}/<node>/node-sync.log",
                    o.proxy_mode,
                    self.dir.path().display()
                ),
            ))
        })?;
        self.agents = agents;
        let nodes: Api<Node> = Api::all(admin.clone());
        steps.run("the Nodes are Ready and schedulable", || {
            let lines = self.wait_because("the Nodes Ready", 60, || {
                let mut lines = Vec::new();
                for (name, ..) in NODES {
                    let n = match self.rt.block_on(nodes.get_opt(name)) {
                        Ok(Some(n)) => n,
                        Ok(None) => return Err(format!("no Node {name}")),
                        Err(e) => return Err(format!("reading Node {name}: {e}")),
                    };
                    let st = n.status.clone().unwrap_or_default();
                    let ready = st
                        .conditions
                        .as_ref()
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
                    if ready.is_none_or(|c| c.status != "True") {
                        return Err(format!(
                            "{name} Ready: {}",
                            ready
                                .map(|c| format!(
                                    "{} {}",
                                    c.status,
                                    c.message.clone().unwrap_or_default()
                                ))
                                .unwrap_or_else(|| "not reported".into())
                        ));
                    }
                    // Schedulable too: the node lifecycle controller lifts
                    // the not-ready taint a moment after Ready. (With the
                    // stand-in, the demo is the scheduler.)
                    let taints: Vec<String> = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .into_iter()
                        .flatten()
                        .filter(|t| t.key.starts_with("node.kubernetes.io/"))
                        .map(|t| format!("{}:{}", t.key, t.effect))
                        .collect();
                    if self.real() && !taints.is_empty() {
                        return Err(format!("{name} tainted {}", taints.join(", ")));
                    }
                    let info = st.node_info.clone().unwrap_or_default();
                    let ip = st
                        .addresses
                        .unwrap_or_default()
                        .into_iter()
                        .find(|a| a.type_ == "InternalIP")
                        .map(|a| a.address)
                        .unwrap_or_default();
                    let cidr = n.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
                    lines.push(format!(
                        "{name:<9} Ready  {ip:<15} {cidr:<14} {} {}",
                        info.kernel_version, info.container_runtime_version
                    ));
                }
                Ok(lines.join("\n"))
            })?;
            if self.real() {
                return Ok(((), self.kubectl(&["get", "nodes", "-o", "wide"])?));
            }
            Ok(((), lines))
        })?;
        steps.run(
            "the route table: each node reaches the other's podCIDR",
            || {
                let mut out = String::new();
                let ok = self.wait("the routes", 20, || {
                    out.clear();
                    let mut all = true;
                    for (name, ..) in NODES {
                        let r = self.cluster.node(name).sh("ip route show proto 200");
                        all &= r.lines().count() == 1;
                        let _ = writeln!(out, "{name:<9} {}", r.trim());
                    }
                    all.then_some(())
                });
                ok.map_err(|e| fail(format!("{e}:\n{out}")))?;
                Ok(((), out))
            },
        )?;

        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
        if self.real() {
            steps.say("\n2. The pods: the ReplicaSet controller makes them, the scheduler binds them, pod-runner runs them on their nodes");
            steps.run(
                "kubectl apply -f replicaset-web.yaml -f service-web.yaml",
                || {
                    let d = crate::testdata::dir();
                    let out = self.kubectl(&[
                        "apply",
                        "-f",
                        &d.join("replicaset-web.yaml").to_string_lossy(),
                        "-f",
                        &d.join("service-web.yaml").to_string_lossy(),
                    ])?;
                    Ok(((), out.trim().to_string()))
                },
            )?;
            steps.run(
                "the ReplicaSet controller made two pods, the scheduler bound them",
                || {
                    let lp = ListParams::default().labels("app=web");
                    let bound = self.wait("two bound pods of ReplicaSet web", 60, || {
                        let list = self.rt.block_on(pods.list(&lp)).ok()?;
                        let bound: Vec<String> = list
                            .items
                            .iter()
                            .filter_map(|p| {
                                Some(format!(
                                    "{} -> {}",
                                    p.metadata.name.as_deref()?,
                                    p.spec.as_ref()?.node_name.as_deref()?
                                ))
                            })
                            .collect();
                        (bound.len() == 2).then_some(bound)
                    })?;
                    Ok(((), bound.join("\n")))
                },
            )?;
        } else {
            steps.say(
                "\n2. The pods: the scheduler's part played here, then pod-runner on each node",
            );
            steps.run("web-001 bound to yuanying, web-002 to inajob", || {
                for (node, .., pod) in NODES {
                    let p: Pod = crate::testdata::load_one(&format!("pod-{pod}.yaml"));
                    self.rt
                        .block_on(pods.create(&PostParams::default(), &p))
                        .map_err(|e| fail(format!("creating {pod}: {e}")))?;
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": pod}, "target": {"kind": "Node", "name": node}});
                    self.rt
                        .block_on(pods.create_subresource::<_, serde_json::Value>(
                            "binding",
                            pod,
                            &PostParams::default(),
                            &binding,
                        ))
                        .map_err(|e| fail(format!("binding {pod}: {e}")))?;
                }
                Ok((
                    (),
                    "Pods from testdata/, Bindings through pods/<name>/binding".to_string(),
                ))
            })?;
        }
        // Each node asks, with its own identity, which pods are bound to it.
        let bound = steps.run("each node lists the pods bound to it", || {
            let mut bound = Vec::new();
            let mut d = String::new();
            for (node, ..) in NODES {
                let client = self
                    .rt
                    .block_on(crate::kubectl::client(&self.kubeconfig(node)))
                    .map_err(|e| fail(e.to_string()))?;
                let mine: Api<Pod> = Api::namespaced(client, "default");
                let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
                let list = self
                    .rt
                    .block_on(mine.list(&lp))
                    .map_err(|e| fail(format!("{node}: {e}")))?;
                let names: Vec<String> = list
                    .items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .collect();
                let _ = writeln!(d, "{node:<9} {}", names.join(" "));
                bound.extend(names.into_iter().map(|n| (node, n)));
            }
            Ok((bound, d))
        })?;
        for (node, pod) in &bound {
            steps.run(&format!("pod-runner create {pod} on {node}"), || {
                self.pods.push((node, pod.clone()));
                let out = self.pod_runner(node, &["create", pod])?;
                if !out.status.success() {
                    return Err(fail(text(&out)));
                }
                // Its report; the warnings (unsupported spec fields) are
                // in `pod-runner status`.
                Ok(((), String::from_utf8_lossy(&out.stdout).trim().to_string()))
            })?;
        }
        let ips = steps.run("the pods are Running, with their IPs", || {
            let mut ips = Vec::new();
            let mut d = String::new();
            for (node, pod) in &bound {
                let p = self
                    .rt
                    .block_on(pods.get(pod))
                    .map_err(|e| fail(format!("{pod}: {e}")))?;
                let st = p.status.unwrap_or_default();
                let phase = st.phase.unwrap_or_default();
                let ip = st.pod_ip.unwrap_or_default();
                if phase != "Running" || ip.is_empty() {
                    return Err(fail(format!("{pod}: phase {phase:?}, podIP {ip:?}")));
                }
                let _ = writeln!(d, "{pod}  Running  {ip:<11} on {node}");
                ips.push((*node, pod.clone(), ip));
            }
            if self.real() {
                d = self.kubectl(&["get", "pods", "-o", "wide"])?;
            }
            Ok((ips, d))
        })?;
        // A pod on one node, asked from the other.
        let across = ips
            .iter()
            .find(|(n, ..)| *n == "yuanying")
            .map(|(_, p, ip)| ("inajob", p.clone(), ip.clone()))
            .or_else(|| {
                ips.first()
                    .map(|(_, p, ip)| ("yuanying", p.clone(), ip.clone()))
            });
        if let Some((from, pod, ip)) = across {
            steps.run(
                &format!("a request from {from} to {pod}'s pod IP on the other node"),
                || {
                    let addr: SocketAddr = format!("{ip}:8080")
                        .parse()
                        .map_err(|e| fail(format!("{ip}: {e}")))?;
                    let body = body(&crate::http::get_in(&self.ns_path(from), addr));
                    if body != pod {
                        return Err(fail(format!("answered {body:?}")));
                    }
                    Ok(((), format!("curl http://{addr}/ -> {body}")))
                },
            )?;
        }

        steps.say("\n3. The Service: web-service 10.254.10.128:80 -> the pods' :8080");
        if self.real() {
            steps.run(
                "the EndpointSlice controller wrote web-service's endpoints",
                || {
                    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
                    let lp = ListParams::default().labels("kubernetes.io/service-name=web-service");
                    self.wait("both pods ready in web-service's EndpointSlice", 60, || {
                        let list = self.rt.block_on(slices.list(&lp)).ok()?;
                        let ready: Vec<String> = list
                            .items
                            .iter()
                            .flat_map(|s| s.endpoints.iter())
                            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                            .flat_map(|e| e.addresses.iter().cloned())
                            .collect();
                        ips.iter()
                            .all(|(_, _, ip)| ready.contains(ip))
                            .then_some(())
                    })?;
                    Ok(((), self.kubectl(&["get", "endpointslices"])?))
                },
            )?;
        } else {
            steps.run(
                "web-service and its Endpoints (the endpoints controller's part)",
                || {
                    let svc: Service = crate::testdata::load_one("service-web.yaml");
                    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
                    self.rt
                        .block_on(services.create(&PostParams::default(), &svc))
                        .map_err(|e| fail(format!("creating web-service: {e}")))?;
                    let addresses: Vec<_> = ips
                        .iter()
                        .map(|(node, pod, ip)| {
                            json!({"ip": ip, "nodeName": node,
                        "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
                        })
                        .collect();
                    let ep: Endpoints = serde_json::from_value(json!({
                        "metadata": {"name": "web-service", "namespace": "default"},
                        "subsets": [{"addresses": addresses,
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
                    }))
                    .map_err(|e| fail(e.to_string()))?;
                    let eps: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
                    self.rt
                        .block_on(eps.create(&PostParams::default(), &ep))
                        .map_err(|e| fail(format!("creating the Endpoints: {e}")))?;
                    let list = ips
                        .iter()
                        .map(|(.., ip)| format!("{ip}:8080"))
                        .collect::<Vec<_>>();
                    Ok(((), format!("endpoints {}", list.join(" "))))
                },
            )?;
        }
        steps.run("the service rules node-sync programmed on inajob", || {
            let mut rules = String::new();
            let ok = self.wait("the service rules", 20, || {
                rules = self.service_rules("inajob");
                ips.iter()
                    .all(|(.., ip)| rules.contains(&format!("{ip}:8080")))
                    .then_some(())
            });
            ok.map_err(|e| fail(format!("{e}:\n{rules}")))?;
            Ok(((), rules))
        })?;
        steps.run(
            "four requests to 10.254.10.128 from inajob alternate",
            || {
                let vip: SocketAddr = VIP.parse().map_err(|e| fail(format!("{e}")))?;
                let got: Vec<String> = (0..4)
                    .map(|_| body(&crate::http::get_in(&self.ns_path("inajob"), vip)))
                    .collect();
                let alternates = got[0] != got[1] && got[0] == got[2] && got[1] == got[3];
                let mut sorted = got.clone();
                sorted.sort();
                let mut want: Vec<String> = ips
                    .iter()
                    .flat_map(|(_, pod, _)| [pod.clone(), pod.clone()])
                    .collect();
                want.sort();
                if !alternates || sorted != want {
                    return Err(fail(format!("answers {got:?}")));
                }
                Ok(((), format!("curl http://{vip}/ x4 -> {}", got.join(" "))))
            },
        )?;
        Ok(())
    }

    /// The Service's rules on `node`, as an operator would look at them.
    fn service_rules(&self, node: &str) -> String {
        let n = self.cluster.node(node);
        if let Ok(ipvs) =
            n.ns.try_sh("ipvsadm -Ln 2>/dev/null | grep -A3 10.254.10.128")
            && !ipvs.trim().is_empty()
        {
            return format!("ipvsadm -Ln\n{ipvs}");
        }
        let table =
            n.ns.try_sh("nft list table ip node-sync")
                .unwrap_or_default();
        let lines: Vec<&str> = table
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("10.254.10.128 . tcp . 80") || l.contains("dnat to"))
            .collect();
        format!(
            "nft list table ip node-sync (excerpt)\n{}",
            lines.join("\n")
        )
    }

    /// How to reach the cluster while it is kept up.
    pub fn how_to_reach(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "The cluster is up. Reach it with:");
        let kubectl = match &self.control {
            Control::Real(cp) => cp.assets().bin("kubectl").display().to_string(),
            Control::StandIn(_) => "kubectl".to_string(),
        };
        let _ = writeln!(
            s,
            "  {kubectl} --kubeconfig {} get nodes,pods,endpointslices -o wide",
            self.kubeconfig("admin").display()
        );
        for (node, ..) in NODES {
            let _ = writeln!(
                s,
                "  ip netns exec {} curl -s http://10.254.10.128/    # on {node}",
                self.cluster.node(node).ns.name()
            );
        }
        let _ = writeln!(s, "Files: {}", self.dir.path().display());
        s
    }

    /// Takes the cluster down (pods first) and says what is left.
    pub fn down(mut self) -> String {
        let names: Vec<String> = self
            .cluster
            .nodes()
            .iter()
            .map(|n| n.ns.name().to_string())
            .chain([self.cluster.lan().name().to_string()])
            .collect();
        // The ReplicaSet goes first, its pods orphaned, so that nothing
        // replaces the pods being deleted.
        if self.real() {
            let _ = self.kubectl(&["delete", "replicaset", "web", "--cascade=orphan"]);
        }
        let made = std::mem::take(&mut self.pods);
        drop(Pods { demo: &self, made });
        let procs: Vec<u32> = match &self.control {
            Control::Real(cp) => control_plane_pids(cp),
            Control::StandIn(_) => Vec::new(),
        };
        drop(self);
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut left: Vec<String> = names
            .into_iter()
            .filter(|n| listed.contains(n.as_str()))
            .collect();
        left.extend(
            procs
                .into_iter()
                .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                .map(|p| format!("process {p}")),
        );
        if left.is_empty() {
            "nothing left: pods, containerd, node-sync, the control plane and the namespaces are gone"
                .to_string()
        } else {
            format!("left behind: {left:?}")
        }
    }
}

/// The processes running in the control plane's directory.
fn control_plane_pids(cp: &ControlPlane) -> Vec<u32> {
    let dir = cp.dir().to_path_buf();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

fn body(response: &str) -> String {
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The whole demo: up, the story, down (or kept up until `keep` returns).
pub fn run(
    o: &Options,
    out: &mut dyn std::io::Write,
    tty: bool,
    keep: Option<&dyn Fn(&str)>,
) -> Res<()> {
    let mut steps = Steps::new(out, tty);
    steps.say("The heartful way, automated: the tutorial's worker nodes run by our binaries\n");
    steps.say("0. The machinery");
    let mut demo = Demo::up(o, &mut steps)?;
    let story =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| demo.story(o, &mut steps)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a step panicked".into());
                Err(fail(msg))
            });
    if story.is_ok()
        && let Some(wait) = keep
    {
        wait(&demo.how_to_reach());
    }
    let t = Instant::now();
    let left = demo.down();
    let ok = left.starts_with("nothing left");
    steps.say(&format!(
        "\n  {} cleaned up ({:.1} s): {left}",
        if ok { "✓" } else { "✗" },
        t.elapsed().as_secs_f64()
    ));
    story?;
    if !ok {
        return Err(fail(left));
    }
    steps.say(&format!(
        "\nDone in {:.1} s.",
        steps.started.elapsed().as_secs_f64()
    ));
    Ok(())
}
