//! Pod startup: `pod-runner create` against a shell baseline that does the
//! tutorial's steps by hand (bench/baseline-pod.sh: curl, `ip netns`, the
//! reference CNI plugins, `ctr run`), on one emulated node, in one run.
//!
//! The node is the pod-runner e2e test's: a real control plane (etcd and
//! kube-apiserver with TLS, Node,RBAC authorization and NodeRestriction,
//! from `KUBEBUILDER_ASSETS`), node inajob (192.168.43.111) on a LAN
//! netns, registered with its own identity, a relay so the node reaches
//! the API on its own 127.0.0.1, a private containerd started in the node
//! netns, the pause and web images imported (into containerd namespace
//! `testbed` for pod-runner, `baseline` for the script). Both sides talk
//! to the API as the node, `system:node:inajob`. For each pod a Pod from
//! testdata/pod-web-002.yaml is created by the admin and bound to inajob
//! (untimed, until the node may read it); then the timed part runs: from
//! launching `pod-runner create` (or the script) on the node until it
//! exits successfully, having patched the pod Running. The phase, the
//! node-side state and an HTTP answer from the pod are checked (untimed),
//! then the pod is deleted on the node (timed separately) and in the API
//! (untimed). The two sides take turns pod by pod, so both see the same
//! machine load.
//!
//! Target: our median <= 500 ms and <= 0.5x the baseline's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
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
use crate::stats::{mean, median, ms, percentile, ratio};

#[derive(clap::Args)]
pub struct Options {
    /// Directory with the static pod-runner, pause and web and our bridge,
    /// host-local and loopback (./scripts/build-plugins.sh -p pod-runner -p testbed).
    #[arg(long, value_name = "DIR")]
    ours: PathBuf,
    /// Directory with the reference bridge, host-local and loopback.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    reference: PathBuf,
    /// Directory with baseline-pod.sh and baseline-pod-teardown.sh.
    #[arg(long, value_name = "DIR", default_value = env!("CARGO_MANIFEST_DIR"))]
    scripts: PathBuf,
    /// Timed pods per side.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed pods per side first, so neither side pays for first use
    /// (creating cni0, cold page cache) in the figures.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
}

/// containerd namespaces: pod-runner's (the e2e test's) and the script's.
const OURS_NS: &str = "testbed";
const BASELINE_NS: &str = "baseline";
const BASELINE: &str = "baseline-pod.sh";
const TEARDOWN: &str = "baseline-pod-teardown.sh";
const POD_FILE: &str = "pod-web-002.yaml";
/// The bridge network's name in testdata/cni/10-bridge.conf: host-local
/// keeps its leases in `<dataDir>/<name>`.
const NETWORK: &str = "bridge";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Baseline,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Baseline => "baseline",
        }
    }
    fn pod_prefix(self) -> &'static str {
        match self {
            Side::Ours => "web-bench",
            Side::Baseline => "web-base",
        }
    }
}

/// Runs `cmd` to completion; its wall time from spawn to reaped exit.
/// Fails unless it exits 0.
fn timed(what: &str, cmd: &mut Command) -> Result<Duration> {
    if let Some(sig) = crate::interrupted() {
        bail!("interrupted by signal {sig}");
    }
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        if let Some(sig) = crate::interrupted() {
            bail!("interrupted by signal {sig}");
        }
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            lossy(&out.stdout),
            lossy(&out.stderr)
        );
    }
    Ok(took)
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
    scripts: PathBuf,
    reference: PathBuf,
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
        for b in ["bridge", "host-local", "loopback"] {
            let p = o.reference.join(b);
            ensure!(p.is_file(), "{} is missing", p.display());
        }
        for s in [BASELINE, TEARDOWN, "baseline-common.sh"] {
            let p = o.scripts.join(s);
            ensure!(p.is_file(), "{} is missing", p.display());
        }
        for t in [
            "containerd",
            "ctr",
            "nsenter",
            "ip",
            "iptables-save",
            "umoci",
            "curl",
            "jq",
        ] {
            ensure!(on_path(t), "{t} is not on PATH");
        }
        let dir = tempfile::Builder::new()
            .prefix("cni-bench-pod-")
            .tempdir()
            .context("temporary directory")?;
        // containerd's root on a disk, as in the e2e test (overlayfs).
        let state = tempfile::Builder::new()
            .prefix("tb-ctrd-")
            .tempdir_in("/var/tmp")
            .context("containerd state directory")?;
        let mut cluster = Cluster::new("pstart");
        cluster.add_node(NODE.0, NODE.1);
        let ns = &cluster.node(NODE.0).ns;

        // Ours: the static plugins and the tutorial config, a temporary
        // dataDir. The baseline: the same config with its own dataDir.
        let p = dir.path();
        let bin = p.join("cni-bin");
        for d in [
            bin.clone(),
            p.join("net.d"),
            p.join("baseline/work"),
            p.join("baseline/logs"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        for b in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(o.ours.join(b), bin.join(b)).context("linking a plugin")?;
        }
        for (conf, data) in [
            (p.join("net.d/10-bridge.conf"), p.join("ipam")),
            (p.join("baseline/10-bridge.conf"), p.join("baseline-ipam")),
        ] {
            let mut c = testbed::testdata::cni_conf("10-bridge.conf");
            c["ipam"]["dataDir"] = json!(data.display().to_string());
            std::fs::write(&conf, c.to_string())
                .with_context(|| format!("writing {}", conf.display()))?;
        }
        let lo = testbed::testdata::cni_conf("99-loopback.conf");
        std::fs::write(p.join("baseline/99-loopback.conf"), lo.to_string())
            .context("writing the loopback config")?;

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
            scripts: o.scripts.clone(),
            reference: o.reference.clone(),
        };

        // The images, present before anything is timed.
        let images = node.dir.path().join("images");
        std::fs::create_dir_all(&images).context("creating the image directory")?;
        for name in ["pause", "web"] {
            let tar = testbed::image::single_binary_oci_tar(&images, name, &o.ours.join(name));
            output(
                &format!("pod-runner image import {name}"),
                &mut node.pod_runner(&["image", "import", &tar.to_string_lossy()]),
            )?;
            output(
                &format!("ctr images import {name}"),
                node.ctr(BASELINE_NS)
                    .args(["images", "import", "--base-name"])
                    .arg(format!("localhost/{name}"))
                    .arg(&tar),
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

    fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.ctrd.socket())
            .args(["-n", ns, "--timeout", "20s"]);
        c
    }

    /// A command run on the node: in its netns, in the host's mount
    /// namespace (where containerd sees the pinned netns).
    fn on_node(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns().path().display()))
            .arg(program);
        c
    }

    /// `pod-runner <args>` on the node, with the e2e test's flags.
    fn pod_runner(&self, args: &[&str]) -> Command {
        let mut c = self.on_node(&self.pod_runner);
        c.arg("--kubeconfig")
            .arg(self.path(&format!("{}.kubeconfig", NODE.0)))
            .args(["--node", NODE.0, "--node-ip", &NODE.1.to_string()])
            .arg("--containerd-socket")
            .arg(self.ctrd.socket())
            .args(["--containerd-namespace", OURS_NS])
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

    /// The baseline `script` for `pod` on the node.
    fn baseline(&self, script: &str, pod: &str, netns: &str) -> Command {
        let mut c = self.on_node(&self.scripts.join(script));
        c.arg("--kubeconfig")
            .arg(self.path(&format!("{}.kubeconfig", NODE.0)))
            .args(["--node", NODE.0, "--node-ip", &NODE.1.to_string()])
            .arg("--containerd-socket")
            .arg(self.ctrd.socket())
            .args(["--containerd-namespace", BASELINE_NS])
            .arg("--cni-bin-dir")
            .arg(&self.reference)
            .arg("--cni-conf")
            .arg(self.path("baseline/10-bridge.conf"))
            .arg("--loopback-conf")
            .arg(self.path("baseline/99-loopback.conf"))
            .args(["--netns", netns])
            .arg("--work-dir")
            .arg(self.path("baseline/work"))
            .arg("--log-dir")
            .arg(self.path("baseline/logs"))
            .arg(pod);
        c
    }

    /// `GET /` on the pod's port 8080 from the node (see
    /// [`pod_node::expect_answer`]).
    fn expect_answer(&self, ip: &str, pod: &str) -> Result<()> {
        pod_node::expect_answer(self.ns(), ip, pod)
    }

    /// host-local leases (not its lock or last_reserved_ip files).
    fn ip_leases(&self, data: &str) -> Vec<String> {
        std::fs::read_dir(self.path(data).join(NETWORK))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing of any pod left on the node: containers, tasks, leases and
    /// active snapshots in both containerd namespaces, IP leases of both
    /// dataDirs, masquerade chains, pod records and baseline work dirs.
    fn expect_clean(&self) -> Result<()> {
        for ns in [OURS_NS, BASELINE_NS] {
            for what in ["containers", "tasks", "leases"] {
                let left = output(
                    &format!("ctr {what} ls"),
                    self.ctr(ns).args([what, "ls", "-q"]),
                )?;
                ensure!(left.trim().is_empty(), "{ns}: {what} left: {left}");
            }
            let snaps = output("ctr snapshots ls", self.ctr(ns).args(["snapshots", "ls"]))?;
            ensure!(
                !snaps.lines().any(|l| l.contains("Active")),
                "{ns}: active snapshots left:\n{snaps}"
            );
        }
        for data in ["ipam", "baseline-ipam"] {
            let left = self.ip_leases(data);
            ensure!(left.is_empty(), "IP leases left in {data}: {left:?}");
        }
        let nat = self
            .ns()
            .try_sh("iptables-save -t nat")
            .map_err(|e| anyhow!("iptables-save on the node: {e}"))?;
        ensure!(!nat.contains("-A CNI-"), "masquerade chains left:\n{nat}");
        for d in ["state/pods", "baseline/work"] {
            let n = std::fs::read_dir(self.path(d))
                .map(|r| r.flatten().count())
                .unwrap_or(0);
            ensure!(n == 0, "{n} entries left in {d}");
        }
        Ok(())
    }
}

/// The Pods in the API server, through the admin's kubeconfig; the node's
/// own view of them, to wait for a binding to reach the node authorizer.
struct Pods {
    rt: tokio::runtime::Runtime,
    api: Api<Pod>,
    node_api: Api<Pod>,
    template: Pod,
}

impl Pods {
    fn new(admin: &Path, node: &Path) -> Result<Pods> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let (api, node_api) = rt.block_on(async {
            anyhow::Ok((
                Api::namespaced(client(admin).await?, "default"),
                Api::namespaced(client(node).await?, "default"),
            ))
        })?;
        let mut template: Pod = testbed::testdata::load_one(POD_FILE);
        // "Image present": no registry round trip. `:latest` would
        // default to Always, which asks the registry on every start.
        if let Some(spec) = template.spec.as_mut() {
            for c in &mut spec.containers {
                c.image_pull_policy = Some("IfNotPresent".into());
            }
        }
        Ok(Pods {
            rt,
            api,
            node_api,
            template,
        })
    }

    /// Creates the testdata pod as `name` and, as the scheduler does, binds
    /// it to the node. Returns its UID.
    fn create_bound(&self, name: &str) -> Result<String> {
        let mut pod = self.template.clone();
        pod.metadata.name = Some(name.to_string());
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name}, "target": {"kind": "Node", "name": NODE.0}});
        self.rt.block_on(async {
            let made = self
                .api
                .create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod {name}"))?;
            let _: Value = self
                .api
                .create_subresource("binding", name, &PostParams::default(), &binding)
                .await
                .with_context(|| format!("binding pod {name}"))?;
            // The Node authorizer learns of the binding through a watch, a
            // moment later; a kubelet acts only once its own watch shows
            // the pod, so neither side is timed from before that.
            let t = Instant::now();
            loop {
                match self.node_api.get_opt(name).await {
                    Ok(Some(_)) => break,
                    Err(kube::Error::Api(e)) if e.code == 403 => {}
                    Ok(None) => bail!("pod {name} vanished"),
                    Err(e) => return Err(e).with_context(|| format!("node reading pod {name}")),
                }
                ensure!(
                    t.elapsed() < Duration::from_secs(10),
                    "node {} never got to read pod {name}",
                    NODE.0
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            made.metadata
                .uid
                .with_context(|| format!("pod {name} has no UID"))
        })
    }

    /// The pod's phase and first pod IP.
    fn status(&self, name: &str) -> Result<(String, String)> {
        let pod = self
            .rt
            .block_on(self.api.get(name))
            .with_context(|| format!("reading pod {name}"))?;
        let st = pod.status.unwrap_or_default();
        Ok((st.phase.unwrap_or_default(), st.pod_ip.unwrap_or_default()))
    }

    /// Deletes the API object now (grace 0, by the admin: the baseline's
    /// pods are still Running there and would wait for a kubelet).
    fn remove(&self, name: &str) -> Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.rt
            .block_on(self.api.delete(name, &params))
            .with_context(|| format!("deleting pod {name}"))?;
        Ok(())
    }
}

/// Pods that may exist on the node: deleted there when this is dropped,
/// whatever stopped the run (before the node goes, so pinned netns and
/// cgroups of pods do not outlive it).
struct Live<'a> {
    node: &'a Node,
    pods: Vec<(Side, String, String)>,
}

impl Live<'_> {
    fn forget(&mut self, name: &str) {
        self.pods.retain(|(_, n, _)| n != name);
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        for (side, name, netns) in self.pods.drain(..).rev() {
            let mut cmd = match side {
                Side::Ours => self.node.pod_runner(&["delete", &name]),
                Side::Baseline => self.node.baseline(TEARDOWN, &name, &netns),
            };
            if let Err(e) = output(&format!("cleaning up pod {name}"), &mut cmd) {
                eprintln!("cni-bench: {e:#}");
            }
        }
    }
}

/// One pod's timings.
struct Sample {
    up: Duration,
    down: Duration,
}

/// One pod of `side`: create and bind it, start it on the node (timed),
/// check it, delete it on the node (timed) and in the API. Our pods' UIDs
/// go to `uids`.
fn one_pod(
    node: &Node,
    pods: &Pods,
    live: &mut Live,
    side: Side,
    name: &str,
    uids: &mut Vec<String>,
) -> Result<Sample> {
    let uid = pods.create_bound(name)?;
    if side == Side::Ours {
        uids.push(uid);
    }
    // The baseline's pinned netns carries the testbed's run prefix, so a
    // later run reaps it if this one is killed.
    let bl_netns = format!("{}bl-{name}", testbed::netns::run_prefix());
    live.pods.push((side, name.to_string(), bl_netns.clone()));
    let up = match side {
        Side::Ours => timed(
            &format!("pod-runner create {name}"),
            &mut node.pod_runner(&["create", name]),
        )?,
        Side::Baseline => timed(
            &format!("{BASELINE} {name}"),
            &mut node.baseline(BASELINE, name, &bl_netns),
        )?,
    };
    let (phase, ip) = pods.status(name)?;
    ensure!(
        phase == "Running",
        "{} pod {name}: phase {phase:?} after create",
        side.label()
    );
    ensure!(
        !ip.is_empty(),
        "{} pod {name}: no podIP after create",
        side.label()
    );
    let netns = match side {
        Side::Ours => {
            let view = output(
                &format!("pod-runner status {name}"),
                &mut node.pod_runner(&["status", name, "-o", "json"]),
            )?;
            let view: Value = serde_json::from_str(&view).context("pod-runner status output")?;
            ensure!(
                view["phase"] == "Running",
                "pod-runner status {name}: {view}"
            );
            PathBuf::from(view["netns"].as_str().unwrap_or_default())
        }
        Side::Baseline => Path::new("/run/netns").join(&bl_netns),
    };
    ensure!(netns.exists(), "pod {name}: no netns {}", netns.display());
    node.expect_answer(&ip, name)?;

    let down = match side {
        Side::Ours => timed(
            &format!("pod-runner delete {name}"),
            &mut node.pod_runner(&["delete", name]),
        )?,
        Side::Baseline => timed(
            &format!("{TEARDOWN} {name}"),
            &mut node.baseline(TEARDOWN, name, &bl_netns),
        )?,
    };
    live.forget(name);
    ensure!(
        !netns.exists(),
        "pod {name}: netns {} left after delete",
        netns.display()
    );
    pods.remove(name)?;
    Ok(Sample { up, down })
}

pub fn run(o: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the pod startup benchmark creates network namespaces and containers: run it as root"
        );
    }
    // Absolute: the plugin links and the commands run from other places.
    let abs = |p: &Path| {
        std::fs::canonicalize(p).with_context(|| format!("no directory {}", p.display()))
    };
    let o = &Options {
        ours: abs(&o.ours)?,
        reference: abs(&o.reference)?,
        scripts: abs(&o.scripts)?,
        runs: o.runs,
        warmup: o.warmup,
    };
    let load_before = loadavg();
    let mut uids = Vec::new();
    let result = Node::new(o).and_then(|node| {
        let samples = measure(o, &node, &mut uids)?;
        Ok((samples, node.server.describe()))
    });
    // After the node (containerd and its tasks) is gone.
    let cgroups_left = remove_cgroup_parents(&uids, &[BASELINE_NS]);
    if cgroups_left > 0 {
        println!(
            "note: pod-runner delete left the empty cgroup /pod-runner/pod<uid> of {cgroups_left} \
             of {} pods in each controller; removed",
            uids.len()
        );
    }
    let (samples, api) = result?;
    report(o, &samples, &api, &load_before)
}

type Samples = [Vec<Sample>; 2];

/// Warm-up and timed pods, the sides taking turns; the node must be clean
/// afterwards. Returns the timed samples, ours then baseline.
/// `uids` collects the UIDs of our pods as they are made, also on failure.
fn measure(o: &Options, node: &Node, uids: &mut Vec<String>) -> Result<Samples> {
    let pods = Pods::new(
        &node.path("admin.kubeconfig"),
        &node.path(&format!("{}.kubeconfig", NODE.0)),
    )?;
    let mut live = Live {
        node,
        pods: Vec::new(),
    };
    println!(
        "pod-startup: {} vs {} (ctr, reference plugins in {})",
        o.ours.join("pod-runner").display(),
        o.scripts.join(BASELINE).display(),
        o.reference.display()
    );
    println!(
        "runs {} per side (+{} warm-up), pod {POD_FILE}, node {} {}",
        o.runs, o.warmup, NODE.0, NODE.1
    );
    println!(
        "API: {} (etcd + kube-apiserver, Node,RBAC, NodeRestriction; up in {:.1} s), \
         both sides as system:node:{}",
        node.server.describe(),
        node.server.started_in.as_secs_f64(),
        NODE.0
    );
    let mut samples: Samples = Default::default();
    for i in 0..o.warmup + o.runs {
        let warm = i < o.warmup;
        // Who goes first alternates, so neither side always follows the
        // other's teardown.
        let order = if i % 2 == 0 {
            [Side::Ours, Side::Baseline]
        } else {
            [Side::Baseline, Side::Ours]
        };
        for side in order {
            let name = if warm {
                format!("{}-warm-{}", side.pod_prefix(), i + 1)
            } else {
                format!("{}-{}", side.pod_prefix(), i - o.warmup + 1)
            };
            let s = one_pod(node, &pods, &mut live, side, &name, uids)?;
            if !warm {
                let k = side as usize;
                samples[k].push(s);
            }
        }
        if warm {
            eprintln!("warm-up pod pair {} done", i + 1);
        }
    }
    drop(live);
    node.expect_clean()?;
    Ok(samples)
}

fn report(o: &Options, samples: &Samples, api: &str, load_before: &str) -> Result<()> {
    let runs = o.runs;
    let up: [Vec<Duration>; 2] = [0, 1].map(|k| samples[k].iter().map(|s| s.up).collect());
    let down: [Vec<Duration>; 2] = [0, 1].map(|k| samples[k].iter().map(|s| s.down).collect());
    let load_after = loadavg();
    let (p50, p99) = (
        [median(&up[0]), median(&up[1])],
        [percentile(&up[0], 99.0), percentile(&up[1], 99.0)],
    );
    let r50 = ratio(p50[0], p50[1]);
    let abs_ok = p50[0] <= Duration::from_millis(500);
    let ratio_ok = r50 <= 0.5;
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };

    println!("load average before {load_before}, after {load_after} (2 cores shared)");
    println!();
    println!(
        "{:<34} {:>11} {:>11} {:>7}  target",
        "", "ours", "baseline", "ratio"
    );
    let row = |what: &str, a: Duration, b: Duration, target: &str| {
        println!(
            "{what:<34} {:>8.1} ms {:>8.1} ms {:>7.3}  {target}",
            ms(a),
            ms(b),
            ratio(a, b)
        )
    };
    row(
        &format!("create -> Running p50, {runs} pods"),
        p50[0],
        p50[1],
        &format!(
            "ours <= 500 ms {}, <= 0.5 {}",
            verdict(abs_ok),
            verdict(ratio_ok)
        ),
    );
    row("create -> Running p99", p99[0], p99[1], "");
    row("create -> Running mean", mean(&up[0]), mean(&up[1]), "");
    row("delete p50", median(&down[0]), median(&down[1]), "");
    row(
        "delete p99",
        percentile(&down[0], 99.0),
        percentile(&down[1], 99.0),
        "",
    );
    row("delete mean", mean(&down[0]), mean(&down[1]), "");
    println!("errors: 0");
    let fig = |v: &[Duration]| json!({"p50_ms": ms(median(v)), "p99_ms": ms(percentile(v, 99.0)), "mean_ms": ms(mean(v))});
    let result = json!({
        "bench": "pod-startup", "runs": runs, "warmup": o.warmup, "api": api,
        "create_ms": {"ours": fig(&up[0]), "baseline": fig(&up[1]),
            "ratio_p50": r50, "ratio_p99": ratio(p99[0], p99[1]),
            "ratio_mean": ratio(mean(&up[0]), mean(&up[1]))},
        "delete_ms": {"ours": fig(&down[0]), "baseline": fig(&down[1]),
            "ratio_p50": ratio(median(&down[0]), median(&down[1]))},
        "loadavg": {"before": load_before, "after": load_after},
        "errors": 0,
        "all_pass": abs_ok && ratio_ok,
    });
    println!("RESULT {result}");
    Ok(())
}
