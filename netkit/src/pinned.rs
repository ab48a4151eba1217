//! Pinned network namespaces: a bind mount of a new netns on a file under
//! `/run/netns`, as CRI runtimes and `ip netns add` do, so the namespace
//! outlives its processes (a pod sandbox's CNI DEL still has it after the
//! pause process is gone).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("creating netns {path}: {msg}")]
    Create { path: PathBuf, msg: String },
    #[error("removing netns {path}: {msg}")]
    Remove { path: PathBuf, msg: String },
}

pub const DIR: &str = "/run/netns";

/// Creates `<DIR>/<name>` holding a new network namespace. An existing
/// one (from an interrupted create) is kept and returned.
pub fn create(name: &str) -> Result<PathBuf, PinError> {
    let path = Path::new(DIR).join(name);
    let err = |msg: String| PinError::Create {
        path: path.clone(),
        msg,
    };
    if is_mounted(&path) {
        return Ok(path);
    }
    std::fs::create_dir_all(DIR).map_err(|e| err(e.to_string()))?;
    std::fs::File::create(&path).map_err(|e| err(e.to_string()))?;
    // unshare changes the calling thread only: do it on a thread of its
    // own, which ends right after the bind mount pinned the namespace.
    let target = path.clone();
    let pinned = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .map_err(|_| err("netns thread panicked".into()))?;
    if let Err(msg) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(err(msg));
    }
    Ok(path)
}

/// Whether a namespace is bind-mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*want))
}

/// Unmounts and removes the namespace file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), PinError> {
    let err = |msg: String| PinError::Remove {
        path: path.to_path_buf(),
        msg,
    };
    // Stacked mounts (two interrupted creates) all go.
    while is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|e| err(format!("umount: {e}")))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e.to_string())),
    }
}
