//! One timed plugin call: spawned directly, with a clean CNI environment and
//! the network configuration on stdin.

use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What a successful call took and printed.
pub struct Reply {
    /// From just before the spawn to just after the exit was reaped.
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
    let start = Instant::now();
    let mut cmd = Command::new(bin);
    if let Some(fd) = target.host_netns {
        // SAFETY: setns is async-signal-safe and `fd` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                let ns = std::os::fd::BorrowedFd::borrow_raw(fd);
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", &target.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &target.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // The configuration is far smaller than a pipe buffer: this cannot block
    // on a child that does not read. Dropping the handle closes the pipe.
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(conf.as_bytes())
        .with_context(|| format!("writing the configuration to {}", bin.display()))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", bin.display()))?;
    let took = start.elapsed();
    if !out.status.success() {
        if let Some(sig) = crate::interrupted() {
            bail!("interrupted by signal {sig}");
        }
        bail!(
            "{} {command} for container {id} failed ({}): stdout {:?} stderr {:?}",
            bin.display(),
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
