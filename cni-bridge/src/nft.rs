//! Running `nft`: a whole change as one `nft -f -` transaction, and reading
//! rules with their handles.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft failed: {0}")]
    Failed(String),
}

fn nft_path() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nft"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin/nft".into(), "/sbin/nft".into()])
        .find(|p| p.is_file())
        .unwrap_or_else(|| "nft".into())
}

/// Applies `script` atomically: all of it or none.
pub fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new(nft_path())
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

/// `nft -a list <what>`; `None` when the object does not exist.
pub fn list(what: &str) -> Result<Option<String>, NftError> {
    let mut args = vec!["-a", "list"];
    args.extend(what.split_whitespace());
    let out = Command::new(nft_path()).args(&args).output()?;
    if out.status.success() {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") || err.contains("does not exist") {
            Ok(None)
        } else {
            Err(NftError::Failed(err.trim().to_string()))
        }
    }
}

/// The handles of rules in an `nft -a list` text whose line contains `needle`.
pub fn handles_with(listing: &str, needle: &str) -> Vec<u64> {
    listing
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .and_then(|(_, h)| h.trim().parse().ok())
        })
        .collect()
}

/// Chain names declared in an `nft list` text.
pub fn chains(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}
