//! Running a system tool (`iptables-restore`, `ipset`, `nft`) with its
//! input on stdin: one exec per batch, shared by the plugins and node-sync.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("running {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

/// The tool from PATH, else from the usual sbin directories: runtimes do
/// not always pass a PATH that has them.
pub fn locate(tool: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(|d| Path::new(d).join(tool)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| tool.into())
}

/// Runs `tool args`, feeding `input` on stdin; its stdout when it
/// succeeds, its stderr in the error when it does not.
pub fn run(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<String, ToolError> {
    let spawn = |source| ToolError::Spawn { tool, source };
    let mut child = Command::new(locate(tool))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
