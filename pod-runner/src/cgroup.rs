//! The pod's cgroup parent, `pod-runner/pod<uid>`: runc makes it for the
//! containers' cgroups and removes only their leaves, so it goes here.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The parent of a pod's containers, relative to a hierarchy's root.
pub fn pod_parent(uid: &str) -> String {
    format!("/pod-runner/pod{uid}")
}

/// Every place that parent can have: the unified hierarchy, or each v1
/// controller (and the hybrid layout's `unified`).
fn places(root: &Path, uid: &str) -> Vec<PathBuf> {
    let rel = pod_parent(uid);
    let rel = rel.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        // `cpu` -> `cpu,cpuacct` and the like are links to the same one.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .collect()
}

/// Removes the pod's (empty) cgroup parents; missing ones are fine. A
/// parent stays busy for a moment after its last task was reaped, so EBUSY
/// is retried for up to two seconds.
pub fn remove_pod(uid: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    for p in places(Path::new(ROOT), uid) {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&p) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 40 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", p.display()));
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("removing cgroups: {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_controllers_and_v2() {
        let d = tempfile::tempdir().expect("tmp");
        for c in ["memory", "cpu,cpuacct", "unified"] {
            std::fs::create_dir(d.path().join(c)).expect("mkdir");
        }
        std::os::unix::fs::symlink("cpu,cpuacct", d.path().join("cpu")).expect("link");
        let mut got = places(d.path(), "u1");
        got.sort();
        assert_eq!(
            got,
            vec![
                d.path().join("cpu,cpuacct/pod-runner/podu1"),
                d.path().join("memory/pod-runner/podu1"),
                d.path().join("unified/pod-runner/podu1"),
            ]
        );
        std::fs::write(d.path().join("cgroup.controllers"), "").expect("v2");
        assert_eq!(
            places(d.path(), "u1"),
            vec![d.path().join("pod-runner/podu1")]
        );
    }
}
