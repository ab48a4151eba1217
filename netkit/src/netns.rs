//! Running code inside another network namespace.
//!
//! `setns` changes the calling thread only, so the work runs on a fresh
//! thread that enters the namespace and ends with the work; no other
//! thread (and no async runtime worker) ever changes namespace.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("failed to open netns {path:?}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to enter netns {path:?}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("netns thread: {0}")]
    Thread(String),
}

impl NetnsError {
    /// The namespace path does not exist (any more).
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Opens a netns file (for moving links into it by fd).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `path` is the network namespace this process runs in.
pub fn is_own(path: &Path) -> Result<bool, NetnsError> {
    let theirs = std::fs::metadata(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(|source| NetnsError::Open {
        path: PathBuf::from("/proc/self/ns/net"),
        source,
    })?;
    Ok(theirs.dev() == own.dev() && theirs.ino() == own.ino())
}

/// Runs `f` on a dedicated thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Thread("panicked".into()))?
    })
}
