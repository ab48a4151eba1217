//! `testbed`: the test infrastructure by hand and for the demo.
//!
//! `testbed apiserver --dir DIR [--port 6443] [--state FILE] [--node NAME]...`
//! starts the API server stand-in, writes `DIR/admin.kubeconfig` and one
//! kubeconfig per node, prints them, and serves until SIGINT or SIGTERM.

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
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
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
