//! Running a system tool (`iptables-restore`, `ipset`, `nft`) with its
//! input on stdin: one exec per batch, with a deadline, shared by the
//! plugins and node-sync.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{self, ProcessError};

/// How long a tool may take when the caller names no deadline: far beyond
/// any batch of ours (a full `nft -f` of 10,000 Services takes about a
/// second), short enough that a hung tool cannot hold a node agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("running {tool}: {source}")]
    Run {
        tool: &'static str,
        source: ProcessError,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
}

impl ToolError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ToolError::Run { source, .. } if source.is_timeout())
    }
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

/// Runs `tool args`, feeding `input` on stdin, within [`DEFAULT_TIMEOUT`];
/// its stdout when it succeeds, its stderr in the error when it does not.
pub fn run(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<String, ToolError> {
    run_within(tool, args, input, DEFAULT_TIMEOUT)
}

/// [`run`] with a deadline of the caller's.
pub fn run_within(
    tool: &'static str,
    args: &[&str],
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, ToolError> {
    let mut cmd = Command::new(locate(tool));
    cmd.args(args);
    let out = process::run(cmd, input.map(str::as_bytes), timeout)
        .map_err(|source| ToolError::Run { tool, source })?;
    if !out.success() {
        return Err(ToolError::Failed {
            tool,
            stderr: out.stderr_text(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
