//! Running `nft`: a whole change as one `nft -f -` transaction (all of it
//! or none), in this netns or another one, with a deadline, shared by the
//! plugins and node-sync.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, ProcessError};
use crate::tool::DEFAULT_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Run(#[from] ProcessError),
    #[error("nft failed: {0}")]
    Failed(String),
}

impl NftError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, NftError::Run(e) if e.is_timeout())
    }
}

/// `nft` from PATH, else where Debian puts it (a plugin's PATH may be bare).
fn path() -> PathBuf {
    crate::tool::locate("nft")
}

/// `nft` in `netns` (None: this process's netns).
pub fn command(netns: Option<&Path>) -> Command {
    match netns {
        None => Command::new(path()),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(path());
            c
        }
    }
}

/// Applies `script` with one `nft -f -` in `netns`.
pub fn apply_in(netns: Option<&Path>, script: &str) -> Result<(), NftError> {
    apply_within(netns, script, DEFAULT_TIMEOUT)
}

/// [`apply_in`] with a deadline of the caller's.
pub fn apply_within(netns: Option<&Path>, script: &str, timeout: Duration) -> Result<(), NftError> {
    let mut cmd = command(netns);
    cmd.args(["-f", "-"]);
    let out = process::run(cmd, Some(script.as_bytes()), timeout)?;
    if out.success() {
        Ok(())
    } else {
        Err(NftError::Failed(out.stderr_text()))
    }
}

/// `nft <args>` in `netns`: its stdout, or `None` when the object listed
/// does not exist.
pub fn list_in(netns: Option<&Path>, args: &[&str]) -> Result<Option<Vec<u8>>, NftError> {
    list_within(netns, args, DEFAULT_TIMEOUT)
}

/// [`list_in`] with a deadline of the caller's.
pub fn list_within(
    netns: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<Option<Vec<u8>>, NftError> {
    let mut cmd = command(netns);
    cmd.args(args);
    let out = process::run(cmd, None, timeout)?;
    if out.success() {
        return Ok(Some(out.stdout));
    }
    let err = out.stderr_text();
    if err.contains("No such file or directory") || err.contains("does not exist") {
        Ok(None)
    } else {
        Err(NftError::Failed(err))
    }
}
