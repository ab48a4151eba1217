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

/// Removes the pod's (empty) cgroup parents and what is left under them:
/// a runc killed half-way through a create leaves its container's cgroup
/// behind. Missing ones are fine. A cgroup stays busy for a moment after
/// its last task was reaped, so EBUSY is retried for up to two seconds.
pub fn remove_pod(uid: &str) -> Result<(), String> {
    remove_trees(&places(Path::new(ROOT), uid))
}

fn remove_trees(tops: &[PathBuf]) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut errors = Vec::new();
    for top in tops {
        let mut dirs = Vec::new();
        subtree(top, &mut dirs);
        // Children before their parent.
        for p in dirs.iter().rev() {
            loop {
                match std::fs::remove_dir(p) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => {
                        errors.push(format!("{}: {e}", p.display()));
                        break;
                    }
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

/// `dir` and the directories under it, each after its parent.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // Not through links: only real cgroup directories.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            subtree(&e.path(), out);
        }
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

    #[test]
    fn leftovers_under_a_parent_go_first_and_missing_ones_are_fine() {
        let d = tempfile::tempdir().expect("tmp");
        let top = d.path().join("memory/pod-runner/podu1");
        std::fs::create_dir_all(top.join("c1")).expect("mkdir");
        std::fs::create_dir_all(top.join("c2/inner")).expect("mkdir");
        let gone = d.path().join("cpu/pod-runner/podu1");
        assert_eq!(remove_trees(&[top.clone(), gone]), Ok(()));
        assert!(!top.exists());
        assert!(d.path().join("memory/pod-runner").exists());
    }
}
