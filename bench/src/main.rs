//! `cni-bench`: our CNI plugins against the Go reference plugins, and
//! pod-runner against a shell baseline with `ctr`, in one run; node-sync's
//! routes and Services against their targets.
//!
//! Both sides run on the same machine in the same run, taking turns, so the
//! ratios printed do not depend on how fast or busy the machine is. Every
//! plugin call (every pod) must succeed; a missed target is reported, not an
//! error: the exit status is non-zero only when the benchmark itself could
//! not run.

mod bridge;
mod cri;
mod host_local;
mod node_sync;
mod plugin;
mod pod_daemon;
mod pod_node;
mod pod_startup;
mod services;
mod stats;

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmarks our CNI plugins and pod-runner against the reference tools"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// host-local IPAM: single ADD+DEL latency, filling and emptying a /16,
    /// and how the per-call cost grows with the number of leases.
    HostLocal(host_local::Options),
    /// bridge: sequential tutorial ADD/DEL latency, and concurrent ADDs
    /// then DELs, each side on its own emulated node.
    Bridge(bridge::Options),
    /// The kubelet's CNI path: containerd's CRI plugin with our plugins and
    /// with the reference's, `crictl runp` to a ready sandbox, `stopp`.
    Cri(cri::Options),
    /// pod-runner: pod startup latency (create to Running, image present)
    /// and delete, against a shell baseline with ctr and the reference
    /// plugins, on one emulated node.
    PodStartup(pod_startup::Options),
    /// pod-runner run, the daemon: bound to Running+Ready latency, pods
    /// bound at once, deletion and its RSS, against `pod-runner create`
    /// launched per pod, on one emulated node.
    PodDaemon(pod_daemon::Options),
    /// node-sync: routes from a cold start with 1,000 other Nodes in the
    /// API, single Node changes to the kernel, peak RSS, on one emulated
    /// node.
    NodeSync(node_sync::Options),
    /// node-sync's ClusterIP Services (nftables): the full sync with
    /// 10,000 Services in the API, single endpoint changes to the kernel,
    /// peak RSS, on one emulated node.
    Services(services::Options),
}

/// The signal that asked us to stop, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Whether SIGINT, SIGTERM or SIGHUP arrived; plugin calls check it so the
/// run stops between two calls and removes its data directories on the way
/// out (the release profile aborts on panic, so nothing else would).
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Takes SIGINT, SIGTERM and SIGHUP away from their default (die on the
/// spot, leaving data behind) and hands them to a thread that only records
/// them. They stay blocked in every thread, and `std::process::Command`
/// passes the mask on to children: see [`default_signal_mask`].
fn catch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                INTERRUPTED.store(sig as i32, Ordering::SeqCst);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Starts `cmd`'s child with no signal blocked. Children inherit our
/// mask (SIGINT, SIGTERM and SIGHUP blocked), and a daemon that installs
/// a handler without unblocking the signal (node-sync on tokio) never
/// sees the SIGTERM that asks it to stop.
pub fn default_signal_mask(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use nix::sys::signal::{SigmaskHow, sigprocmask};
    use std::os::unix::process::CommandExt;
    // SAFETY: sigprocmask is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = catch_signals().and_then(|()| match &cli.bench {
        Bench::HostLocal(opts) => host_local::run(opts),
        Bench::Bridge(opts) => bridge::run(opts),
        Bench::Cri(opts) => cri::run(opts),
        Bench::PodStartup(opts) => pod_startup::run(opts),
        Bench::PodDaemon(opts) => pod_daemon::run(opts),
        Bench::NodeSync(opts) => node_sync::run(opts),
        Bench::Services(opts) => services::run(opts),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cni-bench: error: {err:#}");
            match interrupted() {
                Some(sig) => ExitCode::from(128u8.saturating_add(sig as u8)),
                None => ExitCode::FAILURE,
            }
        }
    }
}
