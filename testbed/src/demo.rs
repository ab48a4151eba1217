//! The demo: the tutorial's story replayed by our binaries on one machine.
//! The API server stand-in, the two worker nodes inajob and yuanying as
//! network namespaces on a LAN, a private containerd on each, our CNI
//! plugins with the tutorial's bridge config, node-sync on each node;
//! then the control plane's part played here (binding web-001 to
//! yuanying and web-002 to inajob, writing the Endpoints), `pod-runner
//! create` on each node, and the proofs: Nodes Ready, routes, pods Running,
//! a request across nodes, the Service's rules and four requests to the
//! ClusterIP that alternate between the two pods.
//!
//! Everything is owned by [`Demo`], whose fields drop in order (pods
//! deleted, agents stopped, containerd stopped, the API server, the
//! namespaces, the directory), so a failed step, a panic or an interrupt
//! still cleans up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::api::Apiserver;
use crate::apiserver::ApiServer;
use crate::cluster::Cluster;
use crate::containerd::Containerd;
use crate::relay::Relay;

pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The tutorial's nodes: name, node IP, podCIDR; and which pod each runs.
const NODES: [(&str, &str, &str, &str); 2] = [
    ("inajob", "192.168.43.111", "10.244.1.0/24", "web-002"),
    ("yuanying", "192.168.43.112", "10.244.2.0/24", "web-001"),
];
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

pub struct Options {
    /// Where `pod-runner`, `node-sync`, `pause`, `web` and the CNI plugins are.
    pub bin_dir: PathBuf,
    /// `auto`, `nftables` or `ipvs`.
    pub proxy_mode: String,
}

/// Pods created on nodes: deleted with `pod-runner delete` when dropped.
struct Pods<'a> {
    demo: &'a Demo,
    made: Vec<(&'static str, &'static str)>,
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for (node, pod) in self.made.drain(..).rev() {
            let _ = self
                .demo
                .pod_runner(node, &["delete", pod, "--grace-period", "0"]);
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
    _server: ApiServer,
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
        let server = steps.run("the API server stand-in (kube-apiserver's role)", || {
            let s = ApiServer::start(0, None).map_err(|e| fail(e.to_string()))?;
            s.write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
                .map_err(|e| fail(e.to_string()))?;
            let url = s.url();
            Ok((
                s,
                format!(
                    "{url}, client certificates; kubeconfigs in {}",
                    dir.path().display()
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
                relays.push(Relay::start(ns, server.port()).map_err(|e| fail(e.to_string()))?);
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
            _server: server,
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
            .env("NO_COLOR", "1");
        c
    }

    fn admin(&self) -> Res<kube::Client> {
        self.rt
            .block_on(crate::kubectl::client(&self.kubeconfig("admin")))
            .map_err(|e| fail(e.to_string()))
    }

    /// The tutorial's story; `steps` prints it.
    pub fn story(&mut self, o: &Options, steps: &mut Steps) -> Res<()> {
        let admin = self.admin()?;
        steps.say("\n1. The nodes: node-sync registers each Node, reports its status and routes to the other's pods");
        let agents = steps.run("node-sync running on inajob and yuanying", || {
            let mut agents = Vec::new();
            for (node, ip, cidr, _) in NODES {
                let log = std::fs::File::create(self.node_dir(node).join("node-sync.log"))
                    .map_err(|e| fail(e.to_string()))?;
                let child = self
                    .node_sync_cmd(node, ip, cidr, &o.proxy_mode)
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
                    "--proxy-mode {}; logs in {}/<node>/node-sync.log",
                    o.proxy_mode,
                    self.dir.path().display()
                ),
            ))
        })?;
        self.agents = agents;
        let nodes: Api<Node> = Api::all(admin.clone());
        steps.run("the Nodes are Ready", || {
            let t = Instant::now();
            loop {
                check_interrupt()?;
                let mut lines = Vec::new();
                for (name, ..) in NODES {
                    let n = self.rt.block_on(nodes.get_opt(name)).ok().flatten();
                    let ready = n
                        .as_ref()
                        .and_then(|n| n.status.as_ref()?.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| c.status.clone());
                    if ready.as_deref() == Some("True")
                        && let Some(n) = n
                    {
                        let st = n.status.clone().unwrap_or_default();
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
                }
                if lines.len() == NODES.len() {
                    return Ok(((), lines.join("\n")));
                }
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(fail("the Nodes did not turn Ready within 60 s"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })?;
        steps.run(
            "the route table: each node reaches the other's podCIDR",
            || {
                let t = Instant::now();
                loop {
                    check_interrupt()?;
                    let mut out = String::new();
                    let mut all = true;
                    for (name, ..) in NODES {
                        let r = self.cluster.node(name).sh("ip route show proto 200");
                        all &= r.lines().count() == 1;
                        let _ = writeln!(out, "{name:<9} {}", r.trim());
                    }
                    if all {
                        return Ok(((), out));
                    }
                    if t.elapsed() > Duration::from_secs(20) {
                        return Err(fail(format!("routes missing after 20 s:\n{out}")));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            },
        )?;

        steps.say("\n2. The pods: the scheduler's part played here, then pod-runner on each node");
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
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
        let mut made = Pods {
            demo: self,
            made: Vec::new(),
        };
        for (node, .., pod) in NODES {
            steps.run(&format!("pod-runner create {pod} on {node}"), || {
                let out = made.demo.pod_runner(node, &["create", pod])?;
                made.made.push((node, pod));
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
            for (node, .., pod) in NODES {
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
                ips.push((pod, ip));
            }
            Ok((ips, d))
        })?;
        let web1 = ips
            .iter()
            .find(|(p, _)| *p == "web-001")
            .map(|(_, ip)| ip.clone())
            .unwrap_or_default();
        steps.run(
            "a request from inajob to web-001's pod IP on yuanying",
            || {
                let addr: SocketAddr = format!("{web1}:8080")
                    .parse()
                    .map_err(|e| fail(format!("{web1}: {e}")))?;
                let body = body(&crate::http::get_in(&self.ns_path("inajob"), addr));
                if body != "web-001" {
                    return Err(fail(format!("answered {body:?}")));
                }
                Ok(((), format!("curl http://{addr}/ -> {body}")))
            },
        )?;

        steps.say("\n3. The Service: web-service 10.254.10.128:80 -> the pods' :8080");
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
                    .zip(NODES.iter())
                    .map(|((pod, ip), (node, ..))| {
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
                    .map(|(_, ip)| format!("{ip}:8080"))
                    .collect::<Vec<_>>();
                Ok(((), format!("endpoints {}", list.join(" "))))
            },
        )?;
        steps.run("the service rules node-sync programmed on inajob", || {
            let t = Instant::now();
            loop {
                check_interrupt()?;
                let rules = self.service_rules("inajob");
                if ips
                    .iter()
                    .all(|(_, ip)| rules.contains(&format!("{ip}:8080")))
                {
                    return Ok(((), rules));
                }
                if t.elapsed() > Duration::from_secs(20) {
                    return Err(fail(format!("not programmed after 20 s:\n{rules}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
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
                if !alternates || sorted != ["web-001", "web-001", "web-002", "web-002"] {
                    return Err(fail(format!("answers {got:?}")));
                }
                Ok(((), format!("curl http://{vip}/ x4 -> {}", got.join(" "))))
            },
        )?;
        // Up and proven: the pods stay until [`Demo::down`] deletes them.
        made.made.clear();
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
        let _ = writeln!(
            s,
            "  kubectl --kubeconfig {} get nodes,pods -o wide",
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
    pub fn down(self) -> String {
        let names: Vec<String> = self
            .cluster
            .nodes()
            .iter()
            .map(|n| n.ns.name().to_string())
            .chain([self.cluster.lan().name().to_string()])
            .collect();
        let pods = Pods {
            demo: &self,
            made: NODES.iter().map(|(n, .., p)| (*n, *p)).collect(),
        };
        drop(pods);
        drop(self);
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let left: Vec<&String> = names
            .iter()
            .filter(|n| listed.contains(n.as_str()))
            .collect();
        if left.is_empty() {
            "nothing left: pods, containerd, node-sync, the API server and the namespaces are gone"
                .to_string()
        } else {
            format!("left behind: {left:?}")
        }
    }
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
