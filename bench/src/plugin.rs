//! One timed plugin call: spawned directly, with a clean CNI environment and
//! the network configuration on stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
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
    if let Some(sig) = crate::interrupted() {
        bail!("interrupted by signal {sig}");
    }
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
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
