//! The daemon's acceptance cluster: the real control plane with
//! kube-controller-manager and kube-scheduler, the tutorial's two emulated
//! nodes (inajob 192.168.43.111 podCIDR 10.244.1.0/24, yuanying
//! 192.168.43.112 podCIDR 10.244.2.0/24), each with a private containerd,
//! our CNI plugins, node-sync and `pod-runner run`, each with its own
//! identity `system:node:<name>`. Modelled on testbed's demo
//! (`Demo::up`).
//!
//! [`DaemonCluster`] owns it all. Its Drop deletes the pods through the API
//! (the daemons stop them), stops the daemons (SIGTERM, then SIGKILL),
//! removes what a daemon left with `pod-runner delete`, and the fields
//! then drop in order: node-sync, relays, containerd, the control plane,
//! the namespaces, the directories. A failed test cleans up the same way.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;
use testbed::api::Apiserver;
use testbed::cluster::Cluster;
use testbed::containerd::Containerd;
use testbed::controlplane::{ControlPlane, Options};
use testbed::image::{single_binary_oci_tar, static_bin};
use testbed::relay::Relay;

/// The tutorial's nodes: name, node IP, podCIDR.
pub const NODES: [(&str, &str, &str); 2] = [
    ("inajob", "192.168.43.111", "10.244.1.0/24"),
    ("yuanying", "192.168.43.112", "10.244.2.0/24"),
];

/// The containerd namespace the daemons use (`Containerd::ctr`'s).
pub const CTRD_NS: &str = "testbed";

fn index(node: &str) -> usize {
    NODES
        .iter()
        .position(|n| n.0 == node)
        .unwrap_or_else(|| panic!("no node {node}"))
}

/// A child process stopped with SIGTERM, then SIGKILL after `grace`.
struct Proc {
    child: Child,
    grace: Duration,
}

impl Proc {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < self.grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct DaemonCluster {
    /// `pod-runner run` per node (None while stopped).
    daemons: Mutex<Vec<Option<Proc>>>,
    agents: Vec<Proc>,
    _relays: Vec<Relay>,
    ctrds: Vec<Containerd>,
    cp: ControlPlane,
    cluster: Cluster,
    /// Every pod UID seen, for the leftover checks.
    seen: Mutex<BTreeMap<String, String>>,
    /// The container IDs (sandbox included) seen of each pod UID.
    ctr_ids: Mutex<BTreeMap<String, Vec<String>>>,
    _states: Vec<tempfile::TempDir>,
    dir: tempfile::TempDir,
    admin: kube::Client,
    rt: tokio::runtime::Runtime,
}

impl DaemonCluster {
    /// Everything up: Nodes Ready and schedulable, daemons running.
    pub fn start(tag: &str) -> DaemonCluster {
        let t = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("daemon-test-")
            .tempdir_in("/var/tmp")
            .expect("a directory");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cp = ControlPlane::start(&Options {
            controllers: true,
            scheduler: true,
            ..Default::default()
        })
        .expect("the control plane");
        cp.write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
            .expect("kubeconfigs");
        let cluster = Cluster::tutorial(tag);
        for n in cluster.nodes() {
            // A default route, as a real node has: ClusterIPs are routed
            // through it before they are translated.
            n.sh("ip route add default via 192.168.43.1 dev eth0");
        }
        let bin = dir.path().join("cni-bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for p in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(static_bin(p), bin.join(p)).expect("symlink");
        }
        for (name, _, cidr) in NODES {
            let conf = dir.path().join(name).join("net.d");
            std::fs::create_dir_all(&conf).expect("mkdir");
            let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
            bridge["ipam"]["ranges"] = json!([[{"subnet": cidr}]]);
            bridge["ipam"]["dataDir"] =
                json!(dir.path().join(name).join("ipam").display().to_string());
            std::fs::write(conf.join("10-bridge.conf"), bridge.to_string()).expect("conf");
        }
        let mut ctrds = Vec::new();
        let mut relays = Vec::new();
        let mut states = Vec::new();
        for (name, ..) in NODES {
            let state = tempfile::Builder::new()
                .prefix("tb-ctrd-")
                .tempdir_in("/var/tmp")
                .expect("state");
            let ns = &cluster.node(name).ns;
            ctrds.push(Containerd::start(state.path(), Some(ns), &bin));
            relays.push(Relay::start(ns, cp.port()).expect("relay"));
            states.push(state);
        }
        let admin = rt
            .block_on(testbed::kubectl::client(
                &dir.path().join("admin.kubeconfig"),
            ))
            .expect("admin client");
        let mut c = DaemonCluster {
            daemons: Mutex::new(NODES.iter().map(|_| None).collect()),
            agents: Vec::new(),
            _relays: relays,
            ctrds,
            cp,
            cluster,
            seen: Mutex::new(BTreeMap::new()),
            ctr_ids: Mutex::new(BTreeMap::new()),
            _states: states,
            dir,
            admin,
            rt,
        };
        let rbac = testbed::testdata::dir().join("../deploy/node-sync-rbac.yaml");
        c.kubectl(&["apply", "-f", &rbac.to_string_lossy()]);
        let images = c.dir.path().join("images");
        std::fs::create_dir_all(&images).expect("mkdir");
        for name in ["pause", "web"] {
            let tar = single_binary_oci_tar(&images, name, &static_bin(name));
            for (node, ..) in NODES {
                let out = c
                    .pod_runner(node, &["image", "import", &tar.to_string_lossy()])
                    .output()
                    .expect("pod-runner");
                assert!(
                    out.status.success(),
                    "import {name} on {node}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for (node, ip, cidr) in NODES {
            let log = std::fs::File::create(c.node_dir(node).join("node-sync.log")).expect("log");
            let child = Command::new("nsenter")
                .arg(format!("--net={}", c.ns_path(node).display()))
                .arg(static_bin("node-sync"))
                .arg("--kubeconfig")
                .arg(c.kubeconfig(node))
                .args(["--node-name", node, "--node-ip", ip, "--pod-cidr", cidr])
                .args(["--proxy-mode", "nftables"])
                .arg("--containerd-socket")
                .arg(c.ctrds[index(node)].socket())
                .arg("--cni-conf-dir")
                .arg(c.node_dir(node).join("net.d"))
                // The host's disk holds the build tree: the nodefs is the
                // host's tmpfs, so no DiskPressure taint.
                .args(["--nodefs", "/dev/shm"])
                .args(["--label", &format!("kubernetes.io/hostname={node}")])
                .arg("run")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("node-sync");
            c.agents.push(Proc {
                child,
                grace: Duration::from_secs(5),
            });
        }
        for (node, ..) in NODES {
            c.start_daemon(node);
        }
        let nodes: Api<Node> = Api::all(c.admin.clone());
        c.wait("the Nodes Ready and schedulable", 90, || {
            for (name, ..) in NODES {
                let n =
                    c.rt.block_on(nodes.get_opt(name))
                        .map_err(|e| e.to_string())?
                        .ok_or(format!("no Node {name}"))?;
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.status.clone());
                if ready.as_deref() != Some("True") {
                    return Err(format!("{name} Ready {ready:?}"));
                }
                let taints: Vec<String> = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|t| t.key.clone())
                    .collect();
                if !taints.is_empty() {
                    return Err(format!("{name} tainted {taints:?}"));
                }
            }
            Ok(())
        });
        // node-sync's routes to the other node's podCIDR.
        c.wait("each node's route to the other's podCIDR", 30, || {
            for (name, ..) in NODES {
                let r = c.cluster.node(name).sh("ip route show proto 200");
                if r.lines().count() != 1 {
                    return Err(format!("{name}: {r:?}"));
                }
            }
            Ok(())
        });
        eprintln!(
            "[{tag}] cluster up in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            c.dir.path().display()
        );
        c
    }

    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        self.dir.path().join(format!("{who}.kubeconfig"))
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    pub fn ns_path(&self, node: &str) -> PathBuf {
        self.cluster.node(node).ns.path()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn containerd(&self, node: &str) -> &Containerd {
        &self.ctrds[index(node)]
    }

    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("state")
    }

    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ipam").join("bridge")
    }

    /// `pod-runner <global flags of node> <args>`, under the node's netns.
    pub fn pod_runner(&self, node: &str, args: &[&str]) -> Command {
        let (_, ip, _) = NODES[index(node)];
        let d = self.node_dir(node);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(node).display()))
            .arg(env!("CARGO_BIN_EXE_pod-runner"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(node))
            .args(["--node", node, "--node-ip", ip])
            .arg("--containerd-socket")
            .arg(self.ctrds[index(node)].socket())
            .args(["--containerd-namespace", CTRD_NS])
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
            .stdin(Stdio::null());
        c
    }

    pub fn daemon_log_path(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("daemon.log")
    }

    /// Starts `pod-runner run` on `node`; its stderr goes (appended) to
    /// `<node>/daemon.log`.
    pub fn start_daemon(&self, node: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log_path(node))
            .expect("daemon log");
        let child = self
            .pod_runner(node, &["run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pod-runner run");
        let mut d = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        assert!(d[index(node)].is_none(), "a daemon runs on {node} already");
        d[index(node)] = Some(Proc {
            child,
            grace: Duration::from_secs(15),
        });
    }

    /// SIGKILLs the daemon of `node` and reaps it.
    pub fn kill_daemon(&self, node: &str) {
        let mut d = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = d[index(node)].take().expect("a daemon to kill");
        let _ = p.child.kill();
        let _ = p.child.wait();
        // Nothing more to stop.
        p.grace = Duration::ZERO;
    }

    /// Whether the daemon of `node` still runs.
    pub fn daemon_running(&self, node: &str) -> bool {
        let mut d = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        d[index(node)]
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of each daemon's log.
    pub fn daemon_logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for (node, ..) in NODES {
            let text = std::fs::read_to_string(self.daemon_log_path(node)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let _ = writeln!(s, "--- {node} daemon log (last {lines} lines) ---");
            for l in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    pub fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), "default")
    }

    /// `text` as the file `name` in the test's directory.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// The real kubectl as the admin; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.cp.kubectl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        let p = self
            .rt
            .block_on(self.pods().get_opt(name))
            .unwrap_or_else(|e| panic!("get pod {name}: {e}"));
        if let Some(p) = &p {
            self.note(p);
        }
        p
    }

    /// The pods with `labels` (all with ""), remembered for the leftover
    /// checks.
    pub fn list(&self, labels: &str) -> Vec<Pod> {
        let lp = if labels.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(labels)
        };
        let list = self
            .rt
            .block_on(self.pods().list(&lp))
            .unwrap_or_else(|e| panic!("list pods: {e}"))
            .items;
        for p in &list {
            self.note(p);
        }
        list
    }

    /// Remembers a pod's UID (and name) for the leftover checks.
    pub fn note(&self, p: &Pod) {
        if let (Some(uid), Some(name)) = (&p.metadata.uid, &p.metadata.name) {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid.clone(), name.clone());
        }
    }

    pub fn seen(&self) -> BTreeMap<String, String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The core/v1 Events' reasons about the pod `name`.
    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), "default");
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
        self.rt
            .block_on(events.list(&lp))
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|e| e.reason)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }

    /// Waits until the Events of pod `name` hold each of `reasons`.
    pub fn wait_events(&self, name: &str, reasons: &[&str]) {
        self.wait(&format!("events {reasons:?} for {name}"), 15, || {
            let got = self.event_reasons(name);
            if reasons.iter().all(|r| got.iter().any(|g| g == r)) {
                Ok(())
            } else {
                Err(format!("events: {got:?}"))
            }
        });
    }

    /// Polls `f` every 200 ms until it returns Ok, for `secs` at most;
    /// panics with its last reason and the daemons' logs.
    pub fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
        let t = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(why) if t.elapsed() > Duration::from_secs(secs) => {
                    panic!(
                        "{what}: not within {secs} s ({why})\n{}",
                        self.daemon_logs(40)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `GET <path>` to `addr` from `node`'s netns: status code and body.
    pub fn get(&self, node: &str, addr: SocketAddr, path: &str) -> (u16, String) {
        let r = testbed::http::get_path_in(&self.ns_path(node), addr, path);
        let code = r
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
        (code, body)
    }

    /// The Service's rules node-sync programmed on `node` (nftables).
    pub fn service_rules(&self, node: &str) -> String {
        self.cluster
            .node(node)
            .ns
            .try_sh("nft list table ip node-sync")
            .unwrap_or_default()
    }

    /// containerd's tasks on `node`: container ID -> PID.
    pub fn task_pids(&self, node: &str) -> BTreeMap<String, u32> {
        self.containerd(node)
            .ctr_ok(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let id = f.next()?.to_string();
                let pid = f.next()?.parse().ok()?;
                Some((id, pid))
            })
            .collect()
    }

    /// The IDs of the containers (sandbox included) of pod `uid` on `node`.
    pub fn containers_of(&self, node: &str, uid: &str) -> Vec<String> {
        let filter = format!("labels.\"io.kubernetes.pod.uid\"=={uid}");
        self.containerd(node)
            .ctr_ok(&["containers", "ls", "-q", &filter])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Asserts what a running pod has on `node` is where the leftover
    /// checks look: its containers (remembered for the mount checks), its
    /// IP lease held by its sandbox, its pinned netns, its cgroup.
    pub fn assert_present(&self, node: &str, uid: &str, ip: &str) {
        let ctrs = self.containers_of(node, uid);
        assert!(ctrs.len() >= 2, "sandbox and containers of {uid}: {ctrs:?}");
        let sandbox = pod_runner::state::derive_id(&["sandbox", uid]);
        assert!(
            ctrs.contains(&sandbox),
            "sandbox {sandbox} of {uid}: {ctrs:?}"
        );
        self.ctr_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid.to_string())
            .or_default()
            .extend(ctrs);
        let leases = self.ip_leases(node);
        assert_eq!(
            leases.get(ip),
            Some(&sandbox),
            "{uid}'s IP lease {ip} on {node}: {leases:?}"
        );
        let netns = Path::new("/run/netns").join(pod_runner::state::netns_name(&sandbox));
        assert!(netns.exists(), "{uid}'s netns {}", netns.display());
        let cg = Path::new("/sys/fs/cgroup/memory").join(format!("pod-runner/pod{uid}"));
        assert!(cg.exists(), "{uid}'s cgroup {}", cg.display());
    }

    /// Host-local's lease files on `node`: IP -> the container ID in it.
    pub fn ip_leases(&self, node: &str) -> BTreeMap<String, String> {
        std::fs::read_dir(self.ipam_dir(node))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("10.").then(|| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (name, text.lines().next().unwrap_or("").trim().to_string())
                })
            })
            .collect()
    }

    /// The veths in `node`'s netns besides its LAN cable eth0.
    pub fn veths(&self, node: &str) -> Vec<String> {
        self.cluster
            .node(node)
            .sh("ip -o link show type veth")
            .lines()
            .filter_map(|l| {
                let name = l.split(": ").nth(1)?.split('@').next()?.to_string();
                (name != "eth0").then_some(name)
            })
            .collect()
    }

    /// What is left on `node` of the pods with these UIDs: containers,
    /// IP leases (host-local holds the sandbox ID), pinned netns, pod
    /// cgroups, mounts, pod records. Empty when nothing is.
    pub fn leftovers_of(&self, node: &str, uids: &BTreeMap<String, String>) -> Vec<String> {
        let mut left = Vec::new();
        let leases = self.ip_leases(node);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let records: Vec<String> = pod_runner::state::Store::new(&self.state_dir(node))
            .all()
            .map(|r| r.into_iter().map(|r| r.uid).collect())
            .unwrap_or_default();
        let cgroup_root = Path::new("/sys/fs/cgroup");
        for (uid, name) in uids {
            for c in self.containers_of(node, uid) {
                left.push(format!("{name}: container {c}"));
            }
            let sandbox = pod_runner::state::derive_id(&["sandbox", uid]);
            for (ip, holder) in &leases {
                if holder == &sandbox {
                    left.push(format!("{name}: IP lease {ip}"));
                }
            }
            let netns = Path::new("/run/netns").join(pod_runner::state::netns_name(&sandbox));
            if netns.exists() {
                left.push(format!("{name}: netns {}", netns.display()));
            }
            for ctl in ["memory", "cpu,cpuacct", "pids", "unified"] {
                let cg = cgroup_root.join(ctl).join(format!("pod-runner/pod{uid}"));
                if cg.exists() {
                    left.push(format!("{name}: cgroup {}", cg.display()));
                }
            }
            let ids = self
                .ctr_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(uid)
                .cloned()
                .unwrap_or_default();
            for m in mounts
                .lines()
                .filter(|m| m.contains(uid.as_str()) || ids.iter().any(|i| m.contains(i.as_str())))
            {
                left.push(format!("{name}: mount {m}"));
            }
            if records.contains(uid) {
                left.push(format!("{name}: pod record"));
            }
        }
        left
    }

    /// Asserts nothing of any pod is left on any node: containers, tasks,
    /// containerd leases, active snapshots, IP leases, pod veths, pod
    /// records, and the netns, cgroups and mounts of every pod seen.
    pub fn assert_clean(&self) {
        let seen = self.seen();
        let mut left = Vec::new();
        for (node, ..) in NODES {
            let ctr = self.containerd(node);
            for (what, args) in [
                ("containers", &["containers", "ls", "-q"][..]),
                ("tasks", &["tasks", "ls", "-q"][..]),
                ("containerd leases", &["leases", "ls", "-q"][..]),
            ] {
                let out = ctr.ctr_ok(args);
                if !out.trim().is_empty() {
                    left.push(format!("{node}: {what}: {}", out.trim()));
                }
            }
            let snaps = ctr.ctr_ok(&["snapshots", "ls"]);
            for l in snaps.lines().filter(|l| l.contains("Active")) {
                left.push(format!("{node}: active snapshot {l}"));
            }
            for (ip, holder) in self.ip_leases(node) {
                left.push(format!("{node}: IP lease {ip} ({holder})"));
            }
            for v in self.veths(node) {
                left.push(format!("{node}: veth {v}"));
            }
            let records = pod_runner::state::Store::new(&self.state_dir(node))
                .all()
                .map(|r| r.len())
                .unwrap_or(0);
            if records > 0 {
                left.push(format!("{node}: {records} pod records"));
            }
            left.extend(
                self.leftovers_of(node, &seen)
                    .into_iter()
                    .map(|l| format!("{node}: {l}")),
            );
        }
        assert!(
            left.is_empty(),
            "left on the nodes:\n{}\n{}",
            left.join("\n"),
            self.daemon_logs(40)
        );
    }

    /// Deletes every pod through the API (ReplicaSets first) and waits
    /// until the daemons have removed them: the API empty of pods.
    pub fn delete_all(&self, secs: u64) -> Result<(), String> {
        let _ = self
            .cp
            .kubectl(&["delete", "replicasets", "--all", "--wait=false"]);
        let _ = self
            .cp
            .kubectl(&["delete", "pods", "--all", "--wait=false"]);
        let t = Instant::now();
        loop {
            let left = self
                .rt
                .block_on(self.pods().list(&ListParams::default()))
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|p| p.metadata.name)
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.to_string())?;
            if left.is_empty() {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(secs) {
                return Err(format!("pods still in the API: {left:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end of a test: every pod deleted through the API and removed
    /// by the daemons, nothing left on the nodes, the daemons still up.
    pub fn finish(&self) {
        if let Err(e) = self.delete_all(60) {
            panic!("deleting every pod: {e}\n{}", self.daemon_logs(60));
        }
        // The API object goes with the daemon's final DELETE, after the
        // node is clean of the pod.
        self.wait("the nodes clean", 15, || {
            let left: Vec<String> = NODES
                .iter()
                .flat_map(|(n, ..)| self.leftovers_of(n, &self.seen()))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join("; "))
            }
        });
        self.assert_clean();
        for (node, ..) in NODES {
            assert!(self.daemon_running(node), "the daemon on {node} died");
        }
    }
}

impl Drop for DaemonCluster {
    fn drop(&mut self) {
        // The pods first, as an operator would, while the daemons run;
        // then the daemons; then whatever they left.
        let _ = self.delete_all(45);
        let daemons: Vec<Option<Proc>> =
            std::mem::take(&mut *self.daemons.lock().unwrap_or_else(|e| e.into_inner()));
        drop(daemons);
        for (node, ..) in NODES {
            let Ok(records) = pod_runner::state::Store::new(&self.state_dir(node)).all() else {
                continue;
            };
            for r in records {
                let _ = self
                    .pod_runner(
                        node,
                        &["delete", &r.name, "-n", &r.namespace, "--grace-period", "0"],
                    )
                    .output();
                let _ = netkit::pinned::remove(&r.netns);
            }
        }
        // The remaining fields drop in order: node-sync, relays,
        // containerd (tasks and shims), the control plane, the netns.
    }
}
