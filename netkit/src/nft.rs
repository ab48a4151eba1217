//! Running `nft`: a whole change as one `nft -f -` transaction (all of it
//! or none), in this netns or another one, shared by the plugins and
//! node-sync.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft failed: {0}")]
    Failed(String),
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
    let mut child = command(netns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// `nft <args>` in `netns`: its stdout, or `None` when the object listed
/// does not exist.
pub fn list_in(netns: Option<&Path>, args: &[&str]) -> Result<Option<Vec<u8>>, NftError> {
    let out: Output = command(netns).args(args).output()?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") || err.contains("does not exist") {
        Ok(None)
    } else {
        Err(NftError::Failed(err.trim().to_string()))
    }
}
