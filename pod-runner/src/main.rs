//! `pod-runner`: run one Pod bound to this node, the way the kubelet does,
//! through containerd's API and the CNI plugins.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use containerd_api::Containerd;
use pod_runner::api::KubeApi;
use pod_runner::cni::Runtime;
use pod_runner::logs;
use pod_runner::runner::{Created, Deleted, Paths, PodView, RunError, Runner};
use pod_runner::state::Store;

const AFTER_HELP: &str = "Exit codes: 0 done (or nothing to do), 1 failed, 2 usage, \
3 not found (no such pod in the API or on this node), 4 refused (the pod is bound to \
another node, not bound, being deleted, finished, or asks for what pod-runner cannot do; \
with the node's own identity, the API refuses every pod not bound to this node, missing ones too).";

#[derive(Parser)]
#[command(name = "pod-runner", version, about = "Run a Pod bound to this node through containerd and CNI, as the kubelet does", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    g: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Global {
    /// kubeconfig file (else KUBECONFIG, else ~/.kube/config, as kubectl)
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: the hostname)
    #[arg(long, global = true, env = "NODE_NAME")]
    node: Option<String>,
    /// This node's IP for status.hostIP (default: the Node's InternalIP)
    #[arg(long, global = true)]
    node_ip: Option<String>,
    /// containerd's socket
    #[arg(
        long,
        global = true,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    containerd_socket: PathBuf,
    /// containerd namespace
    #[arg(long, global = true, default_value = "k8s.io")]
    containerd_namespace: String,
    /// CNI network configs
    #[arg(long, global = true, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// CNI plugin directories (colon-separated)
    #[arg(long, global = true, default_value = "/opt/cni/bin")]
    cni_bin_dir: String,
    /// CNI result cache (libcni's layout)
    #[arg(long, global = true, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// How long a CNI ADD (of loopback, of the chain) or one plugin's DEL
    /// may take before the plugin is killed, e.g. 30s or 4m (default: the
    /// kubelet's sandbox budget, twice its 2 min runtime request timeout)
    #[arg(long, global = true, env = "POD_RUNNER_CNI_TIMEOUT", default_value = "4m",
          value_parser = humantime::parse_duration)]
    cni_timeout: std::time::Duration,
    /// Pod records, volumes and hosts files
    #[arg(long, global = true, default_value = "/var/lib/pod-runner")]
    state_dir: PathBuf,
    /// Container logs (the kubelet's /var/log/pods layout)
    #[arg(long, global = true, default_value = "/var/log/pods")]
    log_dir: PathBuf,
    /// The sandbox (pause) image
    #[arg(long, global = true, default_value = "localhost/pause:latest")]
    pause_image: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a pod bound to this node and report it Running
    Create {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Stop a pod (SIGTERM, SIGKILL after its grace period) and remove it from this node
    Delete {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Seconds between SIGTERM and SIGKILL (default: the pod's)
        #[arg(long)]
        grace_period: Option<i64>,
    },
    /// The pods on this node
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One pod on this node: sandbox, network, containers
    Status {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// A container's output
    Logs {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The container (needed when the pod has several)
        #[arg(short, long)]
        container: Option<String>,
        /// Keep printing until the container stops
        #[arg(short, long)]
        follow: bool,
    },
    /// Run every pod bound to this node and keep it true: the daemon
    /// (watches the API, restarts, probes, deletes). Stopping it leaves the
    /// pods running; the next start adopts them.
    Run {
        /// How often each pod is checked against containerd without an
        /// event (the kubelet's --sync-frequency)
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        sync_frequency: std::time::Duration,
        /// The timeoutSeconds of the pod watch
        #[arg(long, default_value_t = 290)]
        watch_timeout_seconds: u32,
    },
    /// Images in containerd
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Run by containerd's shim as a container's logger (not for people)
    #[command(name = "log-shim", hide = true)]
    LogShim { path: PathBuf },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Import an OCI image archive (an OCI layout in a tar)
    Import {
        archive: PathBuf,
        /// Image name before the tag (default: localhost/<archive file name>)
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull from an OCI registry (plain HTTP for registries on localhost)
    Pull { image: String },
    /// List images
    List,
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<RunError>() {
        Some(RunError::NotFound(_)) => 3,
        Some(RunError::Deleting(_)) => 4,
        Some(RunError::NotVisible { .. }) => 4,
        Some(RunError::Finished { .. }) => 4,
        Some(RunError::Pod(_)) => 4,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::LogShim { path } = &cli.cmd {
        // The shim's logger: no runtime, no output of its own.
        return match logs::run_logger(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    // Colour only for a terminal: a log file or the journal gets plain
    // text that grep finds.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    // kube and the registry client share rustls; ring is its provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pod-runner: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-runner: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

async fn runner(g: &Global, needs_api: bool) -> Result<Runner> {
    let (api, api_error) = if needs_api {
        match KubeApi::connect(g.kubeconfig.as_deref()).await {
            Ok(a) => (Some(a), String::new()),
            Err(e) => (None, e.to_string()),
        }
    } else {
        (None, "not needed".to_string())
    };
    let ctrd = Containerd::connect(&g.containerd_socket, &g.containerd_namespace).await?;
    let logger = std::env::current_exe().context("finding our own binary for the log shim")?;
    Ok(Runner {
        api,
        api_error,
        ctrd,
        cni: Runtime {
            conf_dir: g.cni_conf_dir.clone(),
            bin_dirs: std::env::split_paths(&g.cni_bin_dir).collect(),
            cache_dir: g.cni_cache_dir.clone(),
            timeout: g.cni_timeout,
        },
        store: Store::new(&g.state_dir),
        paths: Paths {
            state_dir: g.state_dir.clone(),
            log_dir: g.log_dir.clone(),
            logger,
        },
        node: g.node.clone().unwrap_or_else(hostname),
        node_ip: g.node_ip.clone(),
        pause_image: g.pause_image.clone(),
    })
}

fn print_pods(pods: &[PodView], output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, pods)?;
            writeln!(out)?;
        }
        Output::Table => {
            writeln!(
                out,
                "{:<12} {:<24} {:<9} {:<16} CONTAINERS",
                "NAMESPACE", "NAME", "PHASE", "IP"
            )?;
            for p in pods {
                let cs: Vec<String> = p
                    .containers
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.state))
                    .collect();
                writeln!(
                    out,
                    "{:<12} {:<24} {:<9} {:<16} {}",
                    p.namespace,
                    p.name,
                    p.phase,
                    p.pod_ips.first().map(String::as_str).unwrap_or("-"),
                    cs.join(",")
                )?;
            }
        }
    }
    Ok(())
}

fn default_image_name(archive: &Path) -> String {
    let stem = archive
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "image".into());
    format!("localhost/{stem}")
}

async fn run(cli: Cli) -> Result<()> {
    let g = &cli.g;
    match &cli.cmd {
        Cmd::Create { pod, namespace } => {
            let r = runner(g, true).await?;
            let t = std::time::Instant::now();
            match r.create(namespace, pod).await? {
                Created::Started { pod_ips } => println!(
                    "pod {namespace}/{pod} running, IP {} ({} ms)",
                    pod_ips.join(","),
                    t.elapsed().as_millis()
                ),
                Created::AlreadyRunning { pod_ips } => println!(
                    "pod {namespace}/{pod} is already running, IP {}; nothing changed",
                    pod_ips.join(",")
                ),
            }
        }
        Cmd::Delete {
            pod,
            namespace,
            grace_period,
        } => {
            let r = runner(g, true).await?;
            match r.delete(namespace, pod, *grace_period).await? {
                Deleted::Stopped { exits } => {
                    let e: Vec<String> = exits
                        .iter()
                        .map(|(n, c)| format!("{n} exited {c}"))
                        .collect();
                    println!("pod {namespace}/{pod} deleted ({})", e.join(", "));
                }
                Deleted::NothingHere => {
                    println!("pod {namespace}/{pod} does not run on this node; nothing to do")
                }
            }
        }
        Cmd::Run {
            sync_frequency,
            watch_timeout_seconds,
        } => {
            let r = runner(g, true).await?;
            let api = r.api()?.clone();
            let watch = KubeApi::connect_with(g.kubeconfig.as_deref(), None).await?;
            let opts = pod_runner::daemon::Options {
                resync: *sync_frequency,
                watch_timeout: *watch_timeout_seconds,
            };
            pod_runner::daemon::run(std::sync::Arc::new(r), api, watch, opts).await?;
        }
        Cmd::List { output } => {
            let r = runner(g, false).await?;
            print_pods(&r.list().await?, *output)?;
        }
        Cmd::Status {
            pod,
            namespace,
            output,
        } => {
            let r = runner(g, false).await?;
            let view = r
                .status(namespace, pod)
                .await?
                .ok_or_else(|| RunError::NotFound(format!("{namespace}/{pod} (on this node)")))?;
            match output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                }
                Output::Table => {
                    println!(
                        "pod       {}/{} (uid {})",
                        view.namespace, view.name, view.uid
                    );
                    println!("phase     {}", view.phase);
                    println!("IP        {}", view.pod_ips.join(","));
                    println!("sandbox   {} {}", view.sandbox, view.sandbox_id);
                    println!("netns     {}", view.netns.display());
                    for c in &view.containers {
                        println!(
                            "container {} {} {}{} log {}",
                            c.name,
                            c.state,
                            c.image,
                            c.exit_code
                                .map(|e| format!(" exit {e}"))
                                .unwrap_or_default(),
                            c.log.display()
                        );
                    }
                }
            }
        }
        Cmd::Logs {
            pod,
            namespace,
            container,
            follow,
        } => {
            let r = runner(g, false).await?;
            let (path, id) = r.log_path(namespace, pod, container.as_deref())?;
            let handle = tokio::runtime::Handle::current();
            let ctrd = &r.ctrd;
            let mut out = std::io::stdout().lock();
            tokio::task::block_in_place(|| {
                logs::print(&path, &mut out, *follow, || {
                    !matches!(
                        handle.block_on(ctrd.task(&id)),
                        Ok(Some((containerd_api::TaskState::Running, _)))
                    )
                })
            })
            .with_context(|| format!("reading {}", path.display()))?;
        }
        Cmd::Image { cmd } => {
            let ctrd = Containerd::connect(&g.containerd_socket, &g.containerd_namespace).await?;
            match cmd {
                ImageCmd::Import { archive, name } => {
                    let base = match name {
                        Some(n) => n.clone(),
                        None => default_image_name(archive),
                    };
                    for i in ctrd.import_oci_archive(archive, &base).await? {
                        println!("imported {} {}", i.name, i.digest);
                    }
                }
                ImageCmd::Pull { image } => {
                    let i = ctrd.pull(image).await?;
                    println!("pulled {} {}", i.name, i.digest);
                }
                ImageCmd::List => {
                    for (name, digest) in ctrd.list_images().await? {
                        println!("{name}\t{digest}");
                    }
                }
            }
        }
        Cmd::LogShim { .. } => {}
    }
    Ok(())
}
