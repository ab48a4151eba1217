//! One timed plugin call through cni-runtime's executor: a clean CNI
//! environment (`PATH` and the `CNI_*` variables), the network
//! configuration on stdin, a deadline.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;

use cni_runtime::{Executor, Invocation};

use nix::sched::{CloneFlags, setns};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A call that takes longer is hung: the run fails rather than hangs.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a successful call took and printed.
pub struct Reply {
    /// From just before the spawn to just after the exit was reaped and
    /// the outputs collected.
    pub took: Duration,
    pub stdout: Vec<u8>,
}

/// Runs `bin` for `command` on container `id`; fails unless it exits 0.
pub fn call(bin: &Path, command: &str, id: &str, conf: &str) -> Result<Reply> {
    call_in(bin, command, id, conf, &Target::default())
}

/// Where a call acts: the plugin's own netns (by fd, entered between fork
/// and exec so the timing holds only the plugin), the container netns path
/// and CNI_PATH.
pub struct Target {
    pub host_netns: Option<RawFd>,
    pub netns: String,
    pub cni_path: String,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            host_netns: None,
            netns: "/var/run/netns/bench".into(),
            cni_path: "/usr/lib/cni".into(),
        }
    }
}

pub fn call_in(bin: &Path, command: &str, id: &str, conf: &str, target: &Target) -> Result<Reply> {
    if let Some(sig) = crate::interrupted() {
        bail!("interrupted by signal {sig}");
    }
    let runtime = Executor::new(std::env::split_paths(&target.cni_path).collect());
    let inv = Invocation {
        command: cni_protocol::Command::parse(command),
        container_id: id.into(),
        netns: target.netns.clone(),
        ifname: "eth0".into(),
        args: String::new(),
    };
    let mut cmd = runtime.command(bin, &inv);
    if let Some(fd) = target.host_netns {
        // SAFETY: setns is async-signal-safe and `fd` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                let ns = std::os::fd::BorrowedFd::borrow_raw(fd);
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
    }
    let name = bin.display().to_string();
    let start = Instant::now();
    let out = cni_runtime::exec::run(cmd, &name, conf.as_bytes(), CALL_TIMEOUT)
        .with_context(|| format!("{name} {command} for container {id}"))?;
    let took = start.elapsed();
    if !out.success() {
        if let Some(sig) = crate::interrupted() {
            bail!("interrupted by signal {sig}");
        }
        bail!(
            "{name} {command} for container {id} failed ({}): stdout {:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    Ok(Reply {
        took,
        stdout: out.stdout,
    })
}
