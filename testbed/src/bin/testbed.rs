//! `testbed`: the test infrastructure by hand and for the demo.
//!
//! `testbed apiserver --dir DIR [--port 6443] [--state FILE] [--node NAME]...`
//! starts the API server stand-in, writes `DIR/admin.kubeconfig` and one
//! kubeconfig per node, prints them, and serves until SIGINT or SIGTERM.
//!
//! `testbed vm SCRIPT [--file HOST:GUEST]...` runs a script in the qemu VM
//! with Debian's kernel.
//!
//! `testbed kube --kubeconfig K apply FILE...` creates (or replaces) the
//! objects of YAML files, and `testbed kube --kubeconfig K delete KIND
//! NAME [-n NS]` deletes one: a tiny kubectl where there is none (the VM).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;

#[derive(Parser)]
#[command(about = "Test infrastructure for heartful-node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server stand-in until interrupted.
    Apiserver {
        /// Where the kubeconfigs go.
        #[arg(long)]
        dir: PathBuf,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// Keep objects in this file across restarts.
        #[arg(long)]
        state: Option<PathBuf>,
        /// A node identity to write a kubeconfig for (repeatable).
        #[arg(long = "node", default_values_t = ["inajob".to_string(), "yuanying".to_string()])]
        nodes: Vec<String>,
    },
    /// The tutorial's story on two emulated nodes, run by our binaries.
    Demo {
        /// Where pod-runner, node-sync, pause, web and the CNI plugins are
        /// (./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed)
        #[arg(long, env = "TESTBED_STATIC_DIR")]
        bin_dir: Option<PathBuf>,
        /// node-sync's --proxy-mode: auto, nftables or ipvs
        #[arg(long, default_value = "auto")]
        proxy_mode: String,
        /// real (KUBEBUILDER_ASSETS), stand-in, or auto: real when the
        /// binaries are found
        #[arg(long, default_value = "auto", value_parser = ["auto", "real", "stand-in"])]
        control_plane: String,
        /// Leave the cluster up until `testbed demo-down` (or a signal)
        #[arg(long)]
        keep: bool,
    },
    /// Takes down a demo kept up with --keep.
    DemoDown,
    /// Runs a script in the qemu VM with Debian's kernel (IPVS, dummy,
    /// VLAN filtering); prints its stdout and stderr, exits with its code.
    Vm {
        /// The guest script (busybox sh).
        script: PathBuf,
        /// HOST:GUEST, a file to put in the guest (repeatable).
        #[arg(long = "file", value_name = "HOST:GUEST")]
        files: Vec<String>,
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
    },
    /// A tiny kubectl: apply YAML files, delete an object.
    Kube {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(subcommand)]
        op: KubeOp,
    },
}

#[derive(Subcommand)]
enum KubeOp {
    /// Create, or replace, every object in the files.
    Apply { files: Vec<PathBuf> },
    /// Delete one object at once (grace period 0).
    Delete {
        /// Service, Endpoints, EndpointSlice, Pod, Node, Namespace, Lease
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The kind's group/version (default: v1; discovery.k8s.io/v1 for
        /// EndpointSlice, coordination.k8s.io/v1 for Lease)
        #[arg(long)]
        api_version: Option<String>,
    },
}

async fn kube_op(kubeconfig: &std::path::Path, op: KubeOp) -> Result<()> {
    use testbed::kubectl;
    let client = kubectl::client(kubeconfig).await?;
    match op {
        KubeOp::Apply { files } => {
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                for what in kubectl::apply(&client, &text).await? {
                    println!("{what} applied");
                }
            }
        }
        KubeOp::Delete {
            kind,
            name,
            namespace,
            api_version,
        } => {
            let av = api_version.unwrap_or_else(|| {
                match kind.as_str() {
                    "EndpointSlice" => "discovery.k8s.io/v1",
                    "Lease" => "coordination.k8s.io/v1",
                    _ => "v1",
                }
                .to_string()
            });
            kubectl::delete(&client, &av, &kind, &namespace, &name).await?;
            println!("{kind}/{name} deleted");
        }
    }
    Ok(())
}

/// Where a kept demo says who it is.
const DEMO_PID: &str = "/run/heartful-demo.pid";

fn demo(bin_dir: Option<PathBuf>, proxy_mode: String, plane: &str, keep: bool) -> Result<()> {
    use std::sync::atomic::Ordering;
    use testbed::demo::{self, INTERRUPTED};
    let bin_dir = bin_dir.context(
        "--bin-dir (or TESTBED_STATIC_DIR) is required: the directory of the static builds",
    )?;
    // A handler, not a blocked mask: what the demo starts (containerd,
    // node-sync) must get SIGTERM as usual.
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &act) }.context("installing a signal handler")?;
    }
    let wait = |how: &str| {
        let _ = std::fs::write(DEMO_PID, std::process::id().to_string());
        println!("\n{how}Take it down with: ./scripts/demo.sh down  (or testbed demo-down)");
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = std::fs::remove_file(DEMO_PID);
    };
    let opts = demo::Options {
        bin_dir,
        proxy_mode,
        plane: match plane {
            "real" => demo::Plane::Real,
            "stand-in" => demo::Plane::StandIn,
            _ => demo::Plane::Auto,
        },
    };
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    demo::run(&opts, &mut out, tty, if keep { Some(&wait) } else { None })
        .map_err(|e| anyhow::anyhow!("the demo failed: {e}"))
}

fn demo_down() -> Result<()> {
    let pid: i32 = std::fs::read_to_string(DEMO_PID)
        .with_context(|| format!("no kept demo ({DEMO_PID} is missing)"))?
        .trim()
        .parse()
        .with_context(|| format!("{DEMO_PID} holds no PID"))?;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, Signal::SIGTERM).context("signalling the demo")?;
    // It deletes its pods and namespaces, then exits.
    let t = std::time::Instant::now();
    while nix::sys::signal::kill(pid, None).is_ok() {
        if t.elapsed() > std::time::Duration::from_secs(120) {
            anyhow::bail!("the demo (pid {pid}) did not stop within 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!("the demo is down");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Demo {
            bin_dir,
            proxy_mode,
            control_plane,
            keep,
        } => demo(bin_dir, proxy_mode, &control_plane, keep),
        Cmd::DemoDown => demo_down(),
        Cmd::Vm {
            script,
            files,
            timeout_seconds,
        } => {
            let text = std::fs::read_to_string(&script)
                .with_context(|| format!("reading {}", script.display()))?;
            let mut b = testbed::vm::Vm::builder()
                .name("testbed-vm")
                .script(text)
                .timeout(std::time::Duration::from_secs(timeout_seconds));
            for f in files {
                let (host, guest) = f
                    .split_once(':')
                    .with_context(|| format!("{f:?} is not HOST:GUEST"))?;
                b = b.file(host, guest);
            }
            let out = b.run().context("running the VM")?;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            std::process::exit(out.exit_code);
        }
        Cmd::Kube { kubeconfig, op } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(kube_op(&kubeconfig, op))
        }
        Cmd::Apiserver {
            dir,
            port,
            state,
            nodes,
        } => {
            let mut set = SigSet::empty();
            set.add(Signal::SIGINT);
            set.add(Signal::SIGTERM);
            // Blocked before the server's threads start, so they inherit it.
            set.thread_block().context("blocking signals")?;
            let server =
                ApiServer::start(port, state).context("starting the API server stand-in")?;
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let written = server
                .write_kubeconfigs(&dir, &names)
                .context("writing kubeconfigs")?;
            println!("serving {}", server.url());
            for p in written {
                println!("kubeconfig {}", p.display());
            }
            let sig = set.wait().context("waiting for a signal")?;
            eprintln!("testbed apiserver: {sig:?}, stopping");
            drop(server);
            Ok(())
        }
    }
}
