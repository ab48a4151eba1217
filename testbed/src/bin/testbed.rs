//! `testbed`: the test infrastructure by hand and for the demo.
//!
//! `testbed apiserver --dir DIR [--port 6443] [--state FILE] [--node NAME]...`
//! starts the API server stand-in, writes `DIR/admin.kubeconfig` and one
//! kubeconfig per node, prints them, and serves until SIGINT or SIGTERM.
//!
//! `testbed kube --kubeconfig K apply FILE...` creates (or replaces) the
//! objects of YAML files, and `testbed kube --kubeconfig K delete KIND
//! NAME [-n NS]` deletes one: a tiny kubectl where there is none (the VM).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
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

fn main() -> Result<()> {
    match Cli::parse().cmd {
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
