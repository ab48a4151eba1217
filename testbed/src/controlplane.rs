//! A real Kubernetes control plane on the host's loopback, run as a real
//! cluster runs it: etcd, kube-apiserver with TLS and client certificates,
//! `--authorization-mode=Node,RBAC` and `NodeRestriction`, the tutorial's
//! service CIDR; optionally kube-controller-manager and kube-scheduler,
//! each with its own identity. The binaries come from a directory in
//! envtest's layout (`KUBEBUILDER_ASSETS`).
//!
//! Every process is started in a process group of its own with
//! `PR_SET_PDEATHSIG`, and killed by PID when the [`ControlPlane`] drops
//! (a failed assertion or a panic included). The death signal covers a
//! test process killed outright: the processes are forked from one
//! long-lived thread, so the signal follows the process, not the thread
//! that asked for the control plane.

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::api::Apiserver;
use crate::pki::{Pki, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "no Kubernetes binaries: set KUBEBUILDER_ASSETS to a directory holding kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd ({0})"
    )]
    NoAssets(String),
    #[error("{0} is missing from {1}")]
    Missing(&'static str, PathBuf),
    #[error("starting {0}: {1}")]
    Spawn(&'static str, io::Error),
    #[error("{what} did not become ready within {secs} s; the end of {log}:\n{tail}")]
    NotReady {
        what: &'static str,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{0} exited during start; the end of {1}:\n{2}")]
    Exited(&'static str, PathBuf, String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("bootstrapping the cluster: {0}")]
    Bootstrap(String),
}

type Result<T> = std::result::Result<T, ControlPlaneError>;

/// The directory of binaries, envtest's `KUBEBUILDER_ASSETS`.
#[derive(Debug, Clone)]
pub struct Assets {
    pub dir: PathBuf,
}

/// The binaries a control plane needs; kube-proxy and crictl are looked up
/// by the tests that use them.
const NEEDED: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

impl Assets {
    /// `KUBEBUILDER_ASSETS`, or what `scripts/k8s-assets.sh` finds (the
    /// same lookup the test and demo scripts make, for a `cargo test` run
    /// by hand).
    pub fn find() -> Result<Assets> {
        let dir = match std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-assets.sh");
                let out = Command::new(&script)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| {
                        ControlPlaneError::NoAssets(format!("{}: {e}", script.display()))
                    })?;
                if !out.status.success() {
                    return Err(ControlPlaneError::NoAssets(
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let a = Assets { dir };
        for b in NEEDED {
            if !a.bin(b).exists() {
                return Err(ControlPlaneError::Missing(b, a.dir.clone()));
            }
        }
        Ok(a)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// kube-controller-manager (ReplicaSets, EndpointSlices, Endpoints,
    /// ServiceAccounts, node lifecycle, garbage collection).
    pub controllers: bool,
    /// kube-scheduler.
    pub scheduler: bool,
    /// More kube-apiserver flags (a shorter `--min-request-timeout`, say).
    pub apiserver_args: Vec<String>,
}

/// One process of the control plane, killed with its process group.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Nothing of a test cluster needs a graceful end, and
        // kube-apiserver drains for many seconds on SIGTERM.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A running control plane. Dropping it kills every process and removes
/// its files.
pub struct ControlPlane {
    // Stopped in reverse start order: clients before the server, the
    // server before etcd.
    procs: Vec<Proc>,
    pki: Pki,
    port: u16,
    assets: Assets,
    /// How long the start took, until the API served what clients need.
    pub started_in: Duration,
    dir: tempfile::TempDir,
    _etcd_data: tempfile::TempDir,
}

impl ControlPlane {
    /// etcd and kube-apiserver, and what `opts` asks for; returns once the
    /// API answers `/readyz`, the `kube-node-lease` namespace exists and
    /// the namespace `default` has its ServiceAccount (which Pods there
    /// need). Without kube-controller-manager, that ServiceAccount is
    /// created here: the one step of its ServiceAccount controller that
    /// tests depend on.
    pub fn start(opts: &Options) -> Result<ControlPlane> {
        let t = Instant::now();
        reap_stale_dirs();
        let assets = Assets::find()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("tb-{}-cp-", std::process::id()))
            .tempdir()
            .map_err(|e| ControlPlaneError::Io("temporary directory".into(), e))?;
        // etcd fsyncs every write: on tmpfs that costs nothing.
        let etcd_data = tempfile::Builder::new()
            .prefix(&format!("tb-{}-etcd-", std::process::id()))
            .tempdir_in(shm_or_tmp())
            .map_err(|e| ControlPlaneError::Io("etcd data directory".into(), e))?;
        let pki = Pki::new()?;
        let d = dir.path();
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = d.join(name);
            std::fs::write(&p, text)
                .map_err(|e| ControlPlaneError::Io(p.display().to_string(), e))?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        let srv_crt = write("apiserver.crt", &pki.server_cert_pem)?;
        let srv_key = write("apiserver.key", &pki.server_key_pem)?;
        let (sa_key, sa_pub) = crate::pki::signing_key()?;
        let sa_key = write("sa.key", &sa_key)?;
        let sa_pub = write("sa.pub", &sa_pub)?;

        let [client_port, peer_port, port] = free_ports();
        let mut cp = ControlPlane {
            procs: Vec::new(),
            pki,
            port,
            assets,
            started_in: Duration::ZERO,
            dir,
            _etcd_data: etcd_data,
        };
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = cp._etcd_data.path().to_path_buf();
        cp.spawn(
            "etcd",
            &[
                "--name=default".to_string(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
            ],
        )?;
        let p = |x: &Path| x.display().to_string();
        let mut args = vec![
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            "--advertise-address=127.0.0.1".into(),
            // A list: given once, or it names a second etcd.
            format!("--etcd-servers={etcd_url}"),
            "--service-cluster-ip-range=10.254.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--client-ca-file={}", p(&ca)),
            format!("--tls-cert-file={}", p(&srv_crt)),
            format!("--tls-private-key-file={}", p(&srv_key)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&sa_pub)),
            format!("--service-account-signing-key-file={}", p(&sa_key)),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
        ];
        args.extend(opts.apiserver_args.iter().cloned());
        cp.spawn("kube-apiserver", &args)?;
        let admin = cp.write_file("admin.kubeconfig", |cp| {
            cp.kubeconfig("kubernetes-admin", &["system:masters"])
        })?;
        cp.wait_ready(&admin)?;

        if opts.controllers {
            let kc = cp.write_file("kube-controller-manager.kubeconfig", |cp| {
                cp.kubeconfig("system:kube-controller-manager", &[])
            })?;
            cp.spawn(
                "kube-controller-manager",
                &[
                    format!("--kubeconfig={}", p(&kc)),
                    "--leader-elect=false".into(),
                    // No port: parallel clusters would collide on it.
                    "--secure-port=0".into(),
                    format!("--service-account-private-key-file={}", p(&sa_key)),
                    format!("--root-ca-file={}", p(&ca)),
                    "--use-service-account-credentials=true".into(),
                    "--controllers=*".into(),
                ],
            )?;
        }
        if opts.scheduler {
            let kc = cp.write_file("kube-scheduler.kubeconfig", |cp| {
                cp.kubeconfig("system:kube-scheduler", &[])
            })?;
            cp.spawn(
                "kube-scheduler",
                &[
                    format!("--kubeconfig={}", p(&kc)),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                ],
            )?;
        }
        cp.bootstrap(&admin, !opts.controllers)?;
        cp.started_in = t.elapsed();
        Ok(cp)
    }

    fn write_file(
        &self,
        name: &str,
        text: impl FnOnce(&Self) -> std::result::Result<String, PkiError>,
    ) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text(self)?)
            .map_err(|e| ControlPlaneError::Io(p.display().to_string(), e))?;
        Ok(p)
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .map_err(|e| ControlPlaneError::Io(log.display().to_string(), e))?;
        let err = file
            .try_clone()
            .map_err(|e| ControlPlaneError::Io(log.display().to_string(), e))?;
        let mut cmd = Command::new(self.assets.bin(name));
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = spawn_guarded(cmd).map_err(|e| ControlPlaneError::Spawn(name, e))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Polls until the API serves what the tests need, failing early when
    /// a process died.
    fn wait_ready(&mut self, admin: &Path) -> Result<()> {
        let limit = Duration::from_secs(60);
        let log = self.log("kube-apiserver");
        let procs = &mut self.procs;
        crate::kubectl::blocking(async move {
            let t = Instant::now();
            let client = crate::kubectl::client(admin)
                .await
                .map_err(|e| ControlPlaneError::Bootstrap(e.to_string()))?;
            let get = |path: &str| {
                let c = client.clone();
                let req = http::Request::get(path).body(Vec::new());
                async move { c.request_text(req.ok()?).await.ok() }
            };
            loop {
                exited(procs)?;
                if get("/readyz").await.as_deref() == Some("ok")
                    && get("/api/v1/namespaces/kube-node-lease").await.is_some()
                {
                    return Ok(());
                }
                if t.elapsed() > limit {
                    return Err(ControlPlaneError::NotReady {
                        what: "kube-apiserver",
                        secs: limit.as_secs(),
                        tail: tail(&log),
                        log,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The ServiceAccount `default` in `default`: made here when no
    /// controller manager runs, waited for when one does.
    fn bootstrap(&mut self, admin: &Path, make: bool) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::api::{Api, PostParams};
        let limit = Duration::from_secs(60);
        let log = self.log("kube-controller-manager");
        let procs = &mut self.procs;
        crate::kubectl::blocking(async move {
            let t = Instant::now();
            let client = crate::kubectl::client(admin)
                .await
                .map_err(|e| ControlPlaneError::Bootstrap(e.to_string()))?;
            let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
            if make {
                let sa: ServiceAccount =
                    serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))
                        .map_err(|e| ControlPlaneError::Bootstrap(e.to_string()))?;
                return match sas.create(&PostParams::default(), &sa).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(ControlPlaneError::Bootstrap(e.to_string())),
                };
            }
            loop {
                exited(procs)?;
                if let Ok(Some(_)) = sas.get_opt("default").await {
                    return Ok(());
                }
                if t.elapsed() > limit {
                    return Err(ControlPlaneError::NotReady {
                        what: "the ServiceAccount default",
                        secs: limit.as_secs(),
                        tail: tail(&log),
                        log,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Where the certificates, kubeconfigs and logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log of `component` (`etcd`, `kube-apiserver`, ...).
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.path().join(format!("{component}.log"))
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// The admin kubeconfig the control plane was started with.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// `kubectl` with the admin identity; its output, or the error with
    /// kubectl's stderr.
    pub fn kubectl(&self, args: &[&str]) -> std::result::Result<String, String> {
        let out = Command::new(self.assets.bin("kubectl"))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Apiserver for ControlPlane {
    fn describe(&self) -> String {
        format!("kube-apiserver from {}", self.assets.dir.display())
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn kubeconfig(&self, user: &str, groups: &[&str]) -> std::result::Result<String, PkiError> {
        self.pki.kubeconfig(&self.url(), user, groups)
    }
}

/// Removes the directories of control planes whose test process was
/// killed (its processes died with it; its files stayed).
fn reap_stale_dirs() {
    for parent in [shm_or_tmp(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((pid, kind)) = name
                .strip_prefix("tb-")
                .and_then(|r| r.split_once('-'))
                .and_then(|(pid, rest)| Some((pid.parse::<u32>().ok()?, rest)))
            else {
                continue;
            };
            if (kind.starts_with("etcd-") || kind.starts_with("cp-"))
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn shm_or_tmp() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Ports free on loopback now, never handed out twice by this process
/// (parallel tests each start a control plane).
fn free_ports<const N: usize>() -> [u16; N] {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = [0u16; N];
    let mut held = Vec::new();
    for slot in out.iter_mut() {
        loop {
            let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let Ok(a) = l.local_addr() else { continue };
            if !used.contains(&a.port()) {
                *slot = a.port();
                used.push(a.port());
                // Held until all are chosen, so the kernel does not hand
                // the same port out twice in this call.
                held.push(l);
                break;
            }
        }
    }
    out
}

/// An error naming the first process that is no longer running.
fn exited(procs: &mut [Proc]) -> Result<()> {
    for p in procs {
        if p.exited() {
            return Err(ControlPlaneError::Exited(
                p.name,
                p.log.clone(),
                tail(&p.log),
            ));
        }
    }
    Ok(())
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` in a process group of its own, with SIGKILL as its parent
/// death signal, from a thread that lives as long as the process.
pub fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let _ = std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut c, back) in rx {
                    let _ = back.send(c.spawn());
                }
            });
        Mutex::new(tx)
    });
    cmd.process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe; nothing is
    // allocated between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner lock"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}
