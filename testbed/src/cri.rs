//! The kubelet's CNI path without a kubelet: a private containerd whose CRI
//! plugin runs the CNI plugins of a given directory with the tutorial's
//! conflist, inside an emulated node's netns, driven by `crictl` (from
//! `KUBEBUILDER_ASSETS`, as `runp`, `stopp` and `rmp` of pod sandboxes).
//! The same node with the Go reference plugins is the other side of a
//! differential test or a benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Netns;
use crate::cluster::{Cluster, Node};
use crate::containerd::Containerd;

/// One node: its netns, its containerd with the CRI plugin, the plugins it
/// runs and where host-local keeps the leases.
pub struct CriNode {
    // Dropped first: containerd goes before its node's netns.
    ctrd: Containerd,
    pub cluster: Cluster,
    dir: tempfile::TempDir,
    crictl: PathBuf,
    /// host-local's dataDir.
    pub data: PathBuf,
    /// The plugins' directory (CRI's `cni.bin_dir`).
    pub bin: PathBuf,
}

/// The tutorial's conflist (`deploy/10-bridge.conflist`) with `data` as
/// host-local's dataDir.
pub fn tutorial_conflist(data: &Path) -> Value {
    let path = crate::testdata::dir().join("../deploy/10-bridge.conflist");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut c: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    c["plugins"][0]["ipam"]["dataDir"] = json!(data.display().to_string());
    c
}

impl CriNode {
    /// A node `tag` (its netns named after it) whose containerd runs the
    /// plugins in `plugins` (bridge, host-local, loopback: copied, so both
    /// sides pay the same exec cost) with the tutorial's conflist, and has
    /// our static `pause` imported as `localhost/pause:latest`.
    pub fn start(tag: &str, plugins: &Path, pause: &Path, crictl: &Path) -> CriNode {
        let dir = tempfile::Builder::new()
            .prefix("tb-ctrd-")
            .tempdir_in("/var/tmp")
            .expect("state dir");
        let mut cluster = Cluster::new(tag);
        cluster.add_node(crate::cluster::INAJOB.0, crate::cluster::INAJOB.1);
        let bin = dir.path().join("cni-bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        for p in ["bridge", "host-local", "loopback"] {
            std::fs::copy(plugins.join(p), bin.join(p))
                .unwrap_or_else(|e| panic!("copying {p} from {}: {e}", plugins.display()));
        }
        let data = dir.path().join("ipam");
        let conf = dir.path().join("cni/net.d");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(
            conf.join("10-bridge.conflist"),
            tutorial_conflist(&data).to_string(),
        )
        .expect("conflist");
        let ctrd = Containerd::start(dir.path(), Some(&cluster.node("inajob").ns), &bin);
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).expect("mkdir");
        let tar = crate::image::single_binary_oci_tar(&images, "pause", pause);
        // The CRI plugin's images live in containerd's namespace k8s.io.
        let out = Command::new("ctr")
            .arg("-a")
            .arg(ctrd.socket())
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--base-name",
                "localhost/pause",
            ])
            .arg(&tar)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "importing pause: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        CriNode {
            ctrd,
            cluster,
            dir,
            crictl: crictl.to_path_buf(),
            data,
            bin,
        }
    }

    pub fn node(&self) -> &Node {
        self.cluster.node("inajob")
    }

    pub fn ns(&self) -> &Netns {
        &self.node().ns
    }

    /// `crictl <args>` against this node's containerd.
    pub fn crictl(&self, args: &[&str]) -> Output {
        Command::new(&self.crictl)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.ctrd.socket().display()))
            .args(["--timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("crictl")
    }

    fn crictl_ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?}: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.ctrd.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `crictl runp` of a pod sandbox `name`: its ID and how long the call
    /// took (RunPodSandbox returns once the sandbox is ready).
    pub fn runp(&self, name: &str) -> (String, Duration) {
        let config = self.dir.path().join(format!("{name}.json"));
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n);
        std::fs::write(
            &config,
            json!({
                "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
                "hostname": name,
                "log_directory": self.dir.path().join("logs").join(name).display().to_string(),
                "linux": {}
            })
            .to_string(),
        )
        .expect("sandbox config");
        let t = Instant::now();
        let id = self.crictl_ok(&["runp", &config.to_string_lossy()]);
        (id, t.elapsed())
    }

    /// The sandbox's IP as the CRI plugin reports it.
    pub fn pod_ip(&self, id: &str) -> String {
        let v: Value =
            serde_json::from_str(&self.crictl_ok(&["inspectp", "-o", "json", id])).expect("json");
        v["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the sandbox is `SANDBOX_READY`.
    pub fn ready(&self, id: &str) -> bool {
        let v: Value =
            serde_json::from_str(&self.crictl_ok(&["inspectp", "-o", "json", id])).expect("json");
        v["status"]["state"] == "SANDBOX_READY"
    }

    pub fn stopp(&self, id: &str) -> Duration {
        let t = Instant::now();
        self.crictl_ok(&["stopp", id]);
        t.elapsed()
    }

    pub fn rmp(&self, id: &str) {
        self.crictl_ok(&["rmp", id]);
    }

    /// The leases host-local holds for the tutorial's network: (IP, owner).
    pub fn leases(&self) -> Vec<(String, String)> {
        crate::snapshot(&self.data.join("bridge"))
            .into_iter()
            .filter(|(k, _)| k.starts_with("10."))
            .map(|(k, e)| (k, e.text().unwrap_or_default()))
            .collect()
    }
}

/// `crictl` from `KUBEBUILDER_ASSETS` (cri-tools; not in the official
/// server tarball, so looked up on `PATH` too).
pub fn crictl() -> PathBuf {
    if let Ok(a) = crate::controlplane::Assets::find()
        && a.bin("crictl").is_file()
    {
        return a.bin("crictl");
    }
    PathBuf::from("crictl")
}
