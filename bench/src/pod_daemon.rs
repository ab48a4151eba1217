//! `pod-runner run`, the daemon, against the one-shot path (`pod-runner
//! create` launched as soon as the pod is bound), on one emulated node, in
//! one run.
//!
//! The node is pod-startup's (and the pod-runner e2e test's): a real
//! control plane (etcd and kube-apiserver with TLS, Node,RBAC authorization
//! and NodeRestriction, from `KUBEBUILDER_ASSETS`), node inajob
//! (192.168.43.111) on a LAN netns, registered with its own identity, a
//! relay so the node reaches the API on its own 127.0.0.1, a private
//! containerd started in the node netns, the pause and web images imported.
//! pod-runner talks to the API as `system:node:inajob`; the bench, as the
//! admin, creates the pods of testdata/pod-web-002.yaml unbound (untimed),
//! then binds them as the scheduler does.
//!
//! Every figure is measured the same way on both sides: from the moment the
//! Binding returns until a watch on the pod (started before the binding)
//! shows phase Running with Ready True. Through the daemon nothing else
//! happens; on the one-shot side `pod-runner create` is launched at once
//! (and launched again while the Node authorizer has not yet learnt of the
//! binding, as a worker script would). Deletion, likewise, is timed from the
//! API delete (graceful, as `kubectl delete`) until the object is gone: the
//! daemon sees it and makes the final DELETE itself; on the one-shot side
//! `pod-runner delete` is launched at once and makes it.
//!
//! Phases: the daemon (sequential pods, then a burst of pods bound at once,
//! its RSS idle with the burst running and its peak at the end), stopped;
//! then the one-shot path (the same two). The node must be clean after
//! each side.
//!
//! Targets: daemon bound → Running+Ready p50 <= 250 ms; the burst all
//! Running+Ready through the daemon <= 5 s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};
use testbed::Netns;
use testbed::api::Apiserver;
use testbed::cluster::Cluster;
use testbed::containerd::Containerd;
use testbed::controlplane::ControlPlane;
use testbed::relay::Relay;

use crate::pod_node::{
    self, NODE, client, loadavg, lossy, on_path, output, register_node, remove_cgroup_parents,
};
use crate::stats::{mean, median, ms, percentile, ratio, secs};

#[derive(clap::Args)]
pub struct Options {
    /// Directory with the static pod-runner, pause and web and our bridge,
    /// host-local and loopback (./scripts/build-plugins.sh -p pod-runner -p testbed).
    #[arg(long, value_name = "DIR")]
    ours: PathBuf,
    /// Timed sequential pods per side.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Pods bound at once, per side.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    burst: u32,
    /// Untimed pods per side first, so neither side pays for first use
    /// (creating cni0, cold page cache) in the figures.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
}

/// pod-runner's containerd namespace (the e2e test's).
const CTR_NS: &str = "testbed";
const POD_FILE: &str = "pod-web-002.yaml";
/// The bridge network's name in testdata/cni/10-bridge.conf.
const NETWORK: &str = "bridge";
/// How long one pod may take to come up or go, before the run fails.
const POD_DEADLINE: Duration = Duration::from_secs(60);
/// How long a one-shot `create` is launched again while the node may not
/// yet read its pod.
const AUTHORIZER_DEADLINE: Duration = Duration::from_secs(10);

const TARGET_P50: Duration = Duration::from_millis(250);
const TARGET_BURST: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Daemon,
    OneShot,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Daemon => "daemon",
            Side::OneShot => "one-shot",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Side::Daemon => "web-d",
            Side::OneShot => "web-o",
        }
    }
}

fn check_interrupted() -> Result<()> {
    if let Some(sig) = crate::interrupted() {
        bail!("interrupted by signal {sig}");
    }
    Ok(())
}

/// The emulated node and everything on it. Fields drop in order: the
/// relay and the control plane, then containerd (its tasks and shims),
/// then the netns, then the directories.
struct Node {
    _relay: Relay,
    server: ControlPlane,
    ctrd: Containerd,
    cluster: Cluster,
    dir: tempfile::TempDir,
    _state: tempfile::TempDir,
    pod_runner: PathBuf,
}

impl Node {
    fn new(o: &Options) -> Result<Node> {
        for b in [
            "pod-runner",
            "pause",
            "web",
            "bridge",
            "host-local",
            "loopback",
        ] {
            let p = o.ours.join(b);
            ensure!(p.is_file(), "{} is missing", p.display());
        }
        for t in [
            "containerd",
            "ctr",
            "nsenter",
            "ip",
            "iptables-save",
            "umoci",
        ] {
            ensure!(on_path(t), "{t} is not on PATH");
        }
        let dir = tempfile::Builder::new()
            .prefix("cni-bench-daemon-")
            .tempdir()
            .context("temporary directory")?;
        // containerd's root on a disk, as in the e2e test (overlayfs).
        let state = tempfile::Builder::new()
            .prefix("tb-ctrd-")
            .tempdir_in("/var/tmp")
            .context("containerd state directory")?;
        let mut cluster = Cluster::new("pdaemon");
        cluster.add_node(NODE.0, NODE.1);
        let ns = &cluster.node(NODE.0).ns;

        let p = dir.path();
        let bin = p.join("cni-bin");
        for d in [bin.clone(), p.join("net.d")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        for b in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(o.ours.join(b), bin.join(b)).context("linking a plugin")?;
        }
        let mut c = testbed::testdata::cni_conf("10-bridge.conf");
        c["ipam"]["dataDir"] = json!(p.join("ipam").display().to_string());
        std::fs::write(p.join("net.d/10-bridge.conf"), c.to_string())
            .context("writing the bridge config")?;

        let ctrd = Containerd::start(state.path(), Some(ns), &bin);
        let server = ControlPlane::start(&testbed::controlplane::Options::default())
            .map_err(|e| anyhow!("control plane: {e}"))?;
        server
            .write_kubeconfigs(p, &[NODE.0])
            .map_err(|e| anyhow!("kubeconfigs: {e}"))?;
        register_node(&p.join(format!("{}.kubeconfig", NODE.0)))?;
        let relay = Relay::start(ns, server.port()).context("relay to the API server")?;
        let node = Node {
            _relay: relay,
            server,
            ctrd,
            cluster,
            dir,
            _state: state,
            pod_runner: o.ours.join("pod-runner"),
        };

        // The images, present before anything is timed.
        let images = node.path("images");
        std::fs::create_dir_all(&images).context("creating the image directory")?;
        for name in ["pause", "web"] {
            let tar = testbed::image::single_binary_oci_tar(&images, name, &o.ours.join(name));
            output(
                &format!("pod-runner image import {name}"),
                &mut node.pod_runner(&["image", "import", &tar.to_string_lossy()]),
            )?;
        }
        Ok(node)
    }

    fn ns(&self) -> &Netns {
        &self.cluster.node(NODE.0).ns
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.ctrd.socket())
            .args(["-n", CTR_NS, "--timeout", "20s"]);
        c
    }

    /// `pod-runner <args>` on the node (in its netns, in the host's mount
    /// namespace, where containerd sees the pinned netns), as the node.
    /// nsenter execs pod-runner: the child's PID is pod-runner's.
    fn pod_runner(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns().path().display()))
            .arg(&self.pod_runner)
            .arg("--kubeconfig")
            .arg(self.path(&format!("{}.kubeconfig", NODE.0)))
            .args(["--node", NODE.0, "--node-ip", &NODE.1.to_string()])
            .arg("--containerd-socket")
            .arg(self.ctrd.socket())
            .args(["--containerd-namespace", CTR_NS])
            .arg("--cni-conf-dir")
            .arg(self.path("net.d"))
            .arg("--cni-bin-dir")
            .arg(self.path("cni-bin"))
            .arg("--cni-cache-dir")
            .arg(self.path("cni-cache"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--log-dir")
            .arg(self.path("logs"))
            .args(args);
        c
    }

    /// `GET /` on the pod's port 8080 from the node (see
    /// [`pod_node::expect_answer`]).
    fn expect_answer(&self, ip: &str, pod: &str) -> Result<()> {
        pod_node::expect_answer(self.ns(), ip, pod)
    }

    /// Nothing of any pod left on the node: containers, tasks, leases and
    /// active snapshots, IP leases, masquerade chains, pod records.
    fn expect_clean(&self) -> Result<()> {
        for what in ["containers", "tasks", "leases"] {
            let left = output(
                &format!("ctr {what} ls"),
                self.ctr().args([what, "ls", "-q"]),
            )?;
            ensure!(left.trim().is_empty(), "{what} left: {left}");
        }
        let snaps = output("ctr snapshots ls", self.ctr().args(["snapshots", "ls"]))?;
        ensure!(
            !snaps.lines().any(|l| l.contains("Active")),
            "active snapshots left:\n{snaps}"
        );
        let leases: Vec<String> = std::fs::read_dir(self.path("ipam").join(NETWORK))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(leases.is_empty(), "IP leases left: {leases:?}");
        let nat = self
            .ns()
            .try_sh("iptables-save -t nat")
            .map_err(|e| anyhow!("iptables-save on the node: {e}"))?;
        ensure!(!nat.contains("-A CNI-"), "masquerade chains left:\n{nat}");
        let n = std::fs::read_dir(self.path("state/pods"))
            .map(|r| r.flatten().count())
            .unwrap_or(0);
        ensure!(n == 0, "{n} pod records left in state/pods");
        Ok(())
    }
}

/// Phase Running and condition Ready True.
fn running_ready(p: Option<&Pod>) -> bool {
    let Some(st) = p.and_then(|p| p.status.as_ref()) else {
        return false;
    };
    st.phase.as_deref() == Some("Running")
        && st
            .conditions
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

type Watch = tokio::task::JoinHandle<Result<Instant>>;

/// The Pods in the API server, through the admin's kubeconfig, and a
/// runtime whose two workers run the watches while the main thread drives.
struct Pods {
    rt: tokio::runtime::Runtime,
    api: Api<Pod>,
    template: Pod,
}

impl Pods {
    fn new(admin: &Path) -> Result<Pods> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let api =
            rt.block_on(async { anyhow::Ok(Api::namespaced(client(admin).await?, "default")) })?;
        let mut template: Pod = testbed::testdata::load_one(POD_FILE);
        // "Image present": no registry round trip (`:latest` would default
        // to Always).
        if let Some(spec) = template.spec.as_mut() {
            for c in &mut spec.containers {
                c.image_pull_policy = Some("IfNotPresent".into());
            }
        }
        Ok(Pods { rt, api, template })
    }

    /// Creates the testdata pod as `name`, unbound. Returns its UID.
    fn create(&self, name: &str) -> Result<String> {
        let mut pod = self.template.clone();
        pod.metadata.name = Some(name.to_string());
        let made = self
            .rt
            .block_on(self.api.create(&PostParams::default(), &pod))
            .with_context(|| format!("creating pod {name}"))?;
        made.metadata
            .uid
            .with_context(|| format!("pod {name} has no UID"))
    }

    /// A watch on `name` until it is Running and Ready: the moment it saw so.
    fn watch_ready(&self, name: &str) -> Watch {
        let api = self.api.clone();
        let name = name.to_string();
        self.rt.spawn(async move {
            tokio::time::timeout(POD_DEADLINE, await_condition(api, &name, running_ready))
                .await
                .map_err(|_| anyhow!("pod {name} not Running and Ready within {POD_DEADLINE:?}"))?
                .with_context(|| format!("watching pod {name}"))?;
            Ok(Instant::now())
        })
    }

    /// A watch on `name` until the object of `uid` is gone.
    fn watch_gone(&self, name: &str, uid: &str) -> Watch {
        let api = self.api.clone();
        let (name, uid) = (name.to_string(), uid.to_string());
        self.rt.spawn(async move {
            tokio::time::timeout(
                POD_DEADLINE,
                await_condition(api, &name, conditions::is_deleted(&uid)),
            )
            .await
            .map_err(|_| anyhow!("pod {name} not gone within {POD_DEADLINE:?}"))?
            .with_context(|| format!("watching pod {name}"))?;
            Ok(Instant::now())
        })
    }

    /// Binds `names` to the node at once, as the scheduler does; the
    /// moment each Binding returned, in order.
    fn bind(&self, names: &[String]) -> Result<Vec<Instant>> {
        let mut tasks = Vec::new();
        for name in names {
            let api = self.api.clone();
            let name = name.clone();
            tasks.push(self.rt.spawn(async move {
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name}, "target": {"kind": "Node", "name": NODE.0}});
                let _: Value = api
                    .create_subresource("binding", &name, &PostParams::default(), &binding)
                    .await
                    .with_context(|| format!("binding pod {name}"))?;
                anyhow::Ok(Instant::now())
            }));
        }
        self.rt.block_on(async {
            let mut at = Vec::new();
            for t in tasks {
                at.push(t.await.context("a binding task")??);
            }
            Ok(at)
        })
    }

    fn wait(&self, w: Watch) -> Result<Instant> {
        self.rt.block_on(w).context("a watch task")?
    }

    /// The pod's first pod IP.
    fn ip(&self, name: &str) -> Result<String> {
        let pod = self
            .rt
            .block_on(self.api.get(name))
            .with_context(|| format!("reading pod {name}"))?;
        Ok(pod.status.and_then(|s| s.pod_ip).unwrap_or_default())
    }

    /// Deletes the API object as `kubectl delete` does (its grace period);
    /// the moment the API answered.
    fn delete(&self, name: &str) -> Result<Instant> {
        self.rt
            .block_on(self.api.delete(name, &DeleteParams::default()))
            .with_context(|| format!("deleting pod {name}"))?;
        Ok(Instant::now())
    }

    /// Deletes whatever of ours is left in the API now (grace 0).
    fn remove_all(&self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let _ = self
            .rt
            .block_on(self.api.delete_collection(&params, &Default::default()));
    }
}

/// `pod-runner run` on the node, its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(node: &Node) -> Result<Daemon> {
        let log = node.path("daemon.log");
        let file = std::fs::File::create(&log).context("creating the daemon's log")?;
        let mut cmd = node.pod_runner(&["run"]);
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().context("the daemon's log")?)
            .stderr(file);
        crate::default_signal_mask(&mut cmd);
        let child = cmd.spawn().context("starting pod-runner run")?;
        Ok(Daemon { child, log })
    }

    /// The field of /proc/<pid>/status, in kB.
    fn status_kb(&self, field: &str) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the daemon's /proc status")?;
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in the daemon's /proc status"))
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait().context("the daemon")? {
            bail!("pod-runner run exited ({st}):\n{}", self.tail());
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The log's WARN and ERROR lines: how many name a spec field that
    /// pod-runner ignores (what the API's admission adds to every pod:
    /// `enableServiceLinks`, the service-account token volume), and the
    /// others.
    fn complaints(&self) -> (usize, Vec<String>) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let (spec, other): (Vec<&str>, Vec<&str>) = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .partition(|l| {
                l.contains("WARN")
                    && (l.contains("is not supported by pod-runner")
                        || l.contains("only emptyDir and hostPath volumes are supported"))
            });
        (spec.len(), other.into_iter().map(str::to_string).collect())
    }

    /// SIGTERM; how long it took to exit, and its status.
    fn stop(&mut self) -> Result<(Duration, std::process::ExitStatus)> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let t = Instant::now();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        loop {
            if let Some(st) = self.child.try_wait().context("the daemon")? {
                return Ok((t.elapsed(), st));
            }
            ensure!(
                t.elapsed() < Duration::from_secs(15),
                "pod-runner run still running 15 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pod-runner create <name>`, launched again while the node may not yet
/// read the pod (the Node authorizer learns of a binding through a watch,
/// a moment later). Returns how many launches were refused so.
fn one_shot_create(node: &Node, name: &str) -> Result<u32> {
    let t = Instant::now();
    let mut refused = 0;
    loop {
        check_interrupted()?;
        let out = node
            .pod_runner(&["create", name])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting pod-runner create {name}"))?;
        if out.status.success() {
            return Ok(refused);
        }
        let err = lossy(&out.stderr);
        let forbidden = err.contains("forbidden") || err.contains("403");
        if !forbidden || t.elapsed() > AUTHORIZER_DEADLINE {
            bail!(
                "pod-runner create {name} failed ({}):\nstdout: {}\nstderr: {err}",
                out.status,
                lossy(&out.stdout)
            );
        }
        refused += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn one_shot_delete(node: &Node, name: &str) -> Result<()> {
    output(
        &format!("pod-runner delete {name}"),
        &mut node.pod_runner(&["delete", name]),
    )
    .map(|_| ())
}

/// Figures of one side.
#[derive(Default)]
struct Figures {
    /// Sequential: bound → Running+Ready, API delete → gone.
    up: Vec<Duration>,
    down: Vec<Duration>,
    /// The burst: from the first Binding sent to the last Binding back, to
    /// all Running+Ready; each pod's own bound → Running+Ready; API delete
    /// of all → all gone.
    burst_bound: Duration,
    burst_all: Duration,
    burst_each: Vec<Duration>,
    burst_down: Duration,
    /// One-shot creates refused while the authorizer lagged.
    refused: u32,
}

/// Runs the burst's one-shot commands, one thread each, at once; the
/// first error.
fn in_parallel(names: &[String], f: impl Fn(&str) -> Result<u32> + Sync) -> Result<u32> {
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = names.iter().map(|n| s.spawn(move || f(n))).collect();
        let mut total = 0;
        let mut first = None;
        for h in hs {
            match h
                .join()
                .map_err(|_| anyhow!("a one-shot thread panicked"))?
            {
                Ok(n) => total += n,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

/// One sequential pod: created unbound, watched, bound (timed from the
/// Binding's return to Running+Ready), checked, deleted in the API
/// (timed until gone).
fn sequential(
    node: &Node,
    pods: &Pods,
    side: Side,
    name: &str,
    uids: &mut Vec<String>,
) -> Result<(Duration, Duration, u32)> {
    check_interrupted()?;
    let uid = pods.create(name)?;
    uids.push(uid.clone());
    let ready = pods.watch_ready(name);
    let bound = pods.bind(&[name.to_string()])?[0];
    let mut refused = 0;
    if side == Side::OneShot {
        refused = one_shot_create(node, name)?;
    }
    let up = pods.wait(ready)?.saturating_duration_since(bound);
    let ip = pods.ip(name)?;
    ensure!(
        !ip.is_empty(),
        "{} pod {name}: Ready without a podIP",
        side.label()
    );
    node.expect_answer(&ip, name)?;

    let gone = pods.watch_gone(name, &uid);
    let deleted = pods.delete(name)?;
    if side == Side::OneShot {
        one_shot_delete(node, name)?;
    }
    let down = pods.wait(gone)?.saturating_duration_since(deleted);
    Ok((up, down, refused))
}

/// `n` pods bound at once; with `rss`, reads the daemon's VmRSS once all
/// run and have idled 2 s.
fn burst(
    node: &Node,
    pods: &Pods,
    side: Side,
    n: u32,
    uids: &mut Vec<String>,
    daemon: Option<&Daemon>,
    f: &mut Figures,
) -> Result<Option<u64>> {
    let names: Vec<String> = (1..=n)
        .map(|i| format!("{}-burst-{i}", side.prefix()))
        .collect();
    let mut ids = Vec::new();
    for name in &names {
        check_interrupted()?;
        let uid = pods.create(name)?;
        uids.push(uid.clone());
        ids.push(uid);
    }
    let watches: Vec<Watch> = names.iter().map(|n| pods.watch_ready(n)).collect();
    // Let the watches reach the server before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let bound = pods.bind(&names)?;
    if side == Side::OneShot {
        f.refused += in_parallel(&names, |n| one_shot_create(node, n))?;
    }
    let mut ready = Vec::new();
    for w in watches {
        ready.push(pods.wait(w)?);
    }
    let last_bound = bound.iter().max().copied().unwrap_or(t0);
    let last_ready = ready.iter().max().copied().unwrap_or(t0);
    f.burst_bound = last_bound - t0;
    f.burst_all = last_ready.saturating_duration_since(t0);
    f.burst_each = ready
        .iter()
        .zip(&bound)
        .map(|(r, b)| r.saturating_duration_since(*b))
        .collect();
    for name in &names {
        let ip = pods.ip(name)?;
        node.expect_answer(&ip, name)?;
    }
    let rss = match daemon {
        Some(d) => {
            std::thread::sleep(Duration::from_secs(2));
            Some(d.status_kb("VmRSS")?)
        }
        None => None,
    };

    let gone: Vec<Watch> = names
        .iter()
        .zip(&ids)
        .map(|(n, u)| pods.watch_gone(n, u))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    for name in &names {
        pods.delete(name)?;
    }
    if side == Side::OneShot {
        in_parallel(&names, |n| one_shot_delete(node, n).map(|()| 0))?;
    }
    let mut last = t0;
    for w in gone {
        last = last.max(pods.wait(w)?);
    }
    f.burst_down = last - t0;
    Ok(rss)
}

/// What the daemon side measured beyond the figures.
struct DaemonFacts {
    rss_idle_kb: u64,
    hwm_kb: u64,
    stop: Duration,
    spec_warnings: usize,
    complaints: Vec<String>,
}

pub fn run(o: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the daemon benchmark creates network namespaces and containers: run it as root");
    }
    let o = &Options {
        ours: std::fs::canonicalize(&o.ours)
            .with_context(|| format!("no directory {}", o.ours.display()))?,
        runs: o.runs,
        burst: o.burst,
        warmup: o.warmup,
    };
    let load_before = loadavg();
    let mut uids = Vec::new();
    let result = Node::new(o).and_then(|node| {
        let pods = Pods::new(&node.path("admin.kubeconfig"))?;
        let r = measure(o, &node, &pods, &mut uids);
        if r.is_err() {
            pods.remove_all();
            // Whatever runs on the node goes before containerd does.
            // (The daemon is stopped by then.)
            let list = output(
                "pod-runner list",
                &mut node.pod_runner(&["list", "-o", "json"]),
            );
            if let Ok(list) = list
                && let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&list)
            {
                for n in items.iter().filter_map(|p| p["name"].as_str()) {
                    let _ = one_shot_delete(&node, n);
                }
            }
        }
        let (figs, facts) = r?;
        Ok((figs, facts, node.server.describe()))
    });
    // After the node (containerd and its tasks) is gone.
    let cgroups_left = remove_cgroup_parents(&uids, &[]);
    if cgroups_left > 0 {
        println!(
            "note: {cgroups_left} of {} pods left their empty cgroup /pod-runner/pod<uid> \
             in each controller; removed",
            uids.len()
        );
    }
    let (figs, facts, api) = result?;
    report(o, &figs, &facts, &api, &load_before)
}

fn measure(
    o: &Options,
    node: &Node,
    pods: &Pods,
    uids: &mut Vec<String>,
) -> Result<([Figures; 2], DaemonFacts)> {
    println!(
        "pod-daemon: {} run against create per pod",
        node.pod_runner.display()
    );
    println!(
        "{} sequential pods per side (+{} warm-up), {} bound at once, pod {POD_FILE}, node {} {}",
        o.runs, o.warmup, o.burst, NODE.0, NODE.1
    );
    println!(
        "API: {} (etcd + kube-apiserver, Node,RBAC, NodeRestriction; up in {:.1} s), \
         pod-runner as system:node:{}",
        node.server.describe(),
        node.server.started_in.as_secs_f64(),
        NODE.0
    );
    let mut figs: [Figures; 2] = Default::default();

    // The daemon.
    let mut daemon = Daemon::start(node)?;
    let facts = (|| {
        let f = &mut figs[0];
        for i in 0..o.warmup + o.runs {
            let warm = i < o.warmup;
            let name = if warm {
                format!("web-d-warm-{}", i + 1)
            } else {
                format!("web-d-{}", i - o.warmup + 1)
            };
            let (up, down, _) = sequential(node, pods, Side::Daemon, &name, uids)
                .with_context(|| format!("daemon pod {name}"))?;
            daemon.alive()?;
            if !warm {
                f.up.push(up);
                f.down.push(down);
            }
        }
        eprintln!("daemon: {} sequential pods done", o.runs);
        let rss =
            burst(node, pods, Side::Daemon, o.burst, uids, Some(&daemon), f)?.unwrap_or_default();
        daemon.alive()?;
        eprintln!("daemon: burst of {} done", o.burst);
        // The records go once the final DELETE is made; give the workers
        // a moment to finish.
        let t = Instant::now();
        while node.expect_clean().is_err() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        node.expect_clean().context("after the daemon's pods")?;
        let hwm = daemon.status_kb("VmHWM")?;
        let (stop, status) = daemon.stop()?;
        ensure!(
            status.success(),
            "pod-runner run exited {status} on SIGTERM:\n{}",
            daemon.tail()
        );
        let (spec_warnings, complaints) = daemon.complaints();
        anyhow::Ok(DaemonFacts {
            rss_idle_kb: rss,
            hwm_kb: hwm,
            stop,
            spec_warnings,
            complaints,
        })
    })()
    .map_err(|e| anyhow!("{e:#}\ndaemon log, last lines:\n{}", daemon.tail()))?;
    drop(daemon);

    // The one-shot path.
    let f = &mut figs[1];
    for i in 0..o.warmup + o.runs {
        let warm = i < o.warmup;
        let name = if warm {
            format!("web-o-warm-{}", i + 1)
        } else {
            format!("web-o-{}", i - o.warmup + 1)
        };
        let (up, down, refused) = sequential(node, pods, Side::OneShot, &name, uids)
            .with_context(|| format!("one-shot pod {name}"))?;
        if !warm {
            f.up.push(up);
            f.down.push(down);
            f.refused += refused;
        }
    }
    eprintln!("one-shot: {} sequential pods done", o.runs);
    burst(node, pods, Side::OneShot, o.burst, uids, None, f)?;
    eprintln!("one-shot: burst of {} done", o.burst);
    node.expect_clean().context("after the one-shot pods")?;
    Ok((figs, facts))
}

fn report(
    o: &Options,
    figs: &[Figures; 2],
    facts: &DaemonFacts,
    api: &str,
    load_before: &str,
) -> Result<()> {
    let load_after = loadavg();
    let [d, s] = figs;
    let p50_ok = median(&d.up) <= TARGET_P50;
    let burst_ok = d.burst_all <= TARGET_BURST;
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };

    println!("load average before {load_before}, after {load_after} (2 cores shared)");
    println!();
    println!(
        "{:<40} {:>11} {:>11} {:>7}  target",
        "", "daemon", "one-shot", "ratio"
    );
    let row = |what: &str, a: Duration, b: Duration, target: &str| {
        println!(
            "{what:<40} {:>8.1} ms {:>8.1} ms {:>7.3}  {target}",
            ms(a),
            ms(b),
            ratio(a, b)
        )
    };
    let runs = o.runs;
    row(
        &format!("bound -> Running+Ready p50, {runs} pods"),
        median(&d.up),
        median(&s.up),
        &format!("daemon <= 250 ms {}", verdict(p50_ok)),
    );
    row(
        "bound -> Running+Ready p99",
        percentile(&d.up, 99.0),
        percentile(&s.up, 99.0),
        "",
    );
    row("bound -> Running+Ready mean", mean(&d.up), mean(&s.up), "");
    row(
        "API delete -> gone p50",
        median(&d.down),
        median(&s.down),
        "",
    );
    row(
        "API delete -> gone p99",
        percentile(&d.down, 99.0),
        percentile(&s.down, 99.0),
        "",
    );
    let b = o.burst;
    row(
        &format!("{b} bound at once -> all Running+Ready"),
        d.burst_all,
        s.burst_all,
        &format!("daemon <= 5 s {}", verdict(burst_ok)),
    );
    row("  the last Binding back", d.burst_bound, s.burst_bound, "");
    row(
        "  each bound -> Running+Ready p50",
        median(&d.burst_each),
        median(&s.burst_each),
        "",
    );
    row(
        "  each bound -> Running+Ready p99",
        percentile(&d.burst_each, 99.0),
        percentile(&s.burst_each, 99.0),
        "",
    );
    row(
        &format!("{b} API deletes -> all gone"),
        d.burst_down,
        s.burst_down,
        "",
    );
    println!(
        "daemon RSS: peak (VmHWM) {:.1} MiB, idle with {b} pods (VmRSS) {:.1} MiB; \
         SIGTERM -> exit {:.0} ms",
        facts.hwm_kb as f64 / 1024.0,
        facts.rss_idle_kb as f64 / 1024.0,
        ms(facts.stop)
    );
    println!(
        "one-shot creates refused while the Node authorizer lagged (launched again): {}",
        s.refused
    );
    println!(
        "daemon log: {} other WARN/ERROR lines ({} warnings of ignored spec fields \
         the API adds to every pod)",
        facts.complaints.len(),
        facts.spec_warnings
    );
    for l in facts.complaints.iter().take(20) {
        println!("  {l}");
    }
    println!("errors: 0");
    let fig = |v: &[Duration]| json!({"p50_ms": ms(median(v)), "p99_ms": ms(percentile(v, 99.0)), "mean_ms": ms(mean(v))});
    let result = json!({
        "bench": "pod-daemon", "runs": runs, "burst": b, "warmup": o.warmup, "api": api,
        "bound_to_ready_ms": {"daemon": fig(&d.up), "one_shot": fig(&s.up),
            "ratio_p50": ratio(median(&d.up), median(&s.up)),
            "ratio_p99": ratio(percentile(&d.up, 99.0), percentile(&s.up, 99.0))},
        "delete_to_gone_ms": {"daemon": fig(&d.down), "one_shot": fig(&s.down),
            "ratio_p50": ratio(median(&d.down), median(&s.down))},
        "burst_all_ready_s": {"daemon": secs(d.burst_all), "one_shot": secs(s.burst_all),
            "ratio": ratio(d.burst_all, s.burst_all)},
        "burst_each_ms": {"daemon": fig(&d.burst_each), "one_shot": fig(&s.burst_each)},
        "burst_all_gone_s": {"daemon": secs(d.burst_down), "one_shot": secs(s.burst_down)},
        "daemon_rss_mib": {"peak_vmhwm": facts.hwm_kb as f64 / 1024.0,
            "idle_vmrss_with_burst": facts.rss_idle_kb as f64 / 1024.0},
        "daemon_log_warnings": facts.complaints.len(),
        "one_shot_refused": s.refused,
        "loadavg": {"before": load_before, "after": load_after},
        "errors": 0,
        "p50_pass": p50_ok, "burst_pass": burst_ok,
        "all_pass": p50_ok && burst_ok,
    });
    println!("RESULT {result}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(phase: &str, ready: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_ready_needs_both() {
        assert!(running_ready(Some(&pod("Running", "True"))));
        assert!(!running_ready(Some(&pod("Running", "False"))));
        assert!(!running_ready(Some(&pod("Pending", "True"))));
        assert!(!running_ready(None));
    }
}
