//! containerd's runtime v2 shims, seen in `/proc`. A task create whose
//! client died goes on inside its shim (runc create, then containerd's
//! cleanup runs runc delete), so what runc makes, the cgroup parent, can
//! appear after the client's successor has torn everything else down.
//! The shim exits when that work is done: waiting for it orders the two.
//! A shim is started as `<binary> -namespace <ns> -id <id> -address …`
//! (the v2 shim protocol), so its command line names what it serves.
//!
//! containerd 1.6 can also lose a shim: a client gone while the shim
//! starts leaves it running, its bundle directory (its working directory)
//! already deleted by containerd, and nothing will ever tell it to exit.

use std::time::{Duration, Instant};

use crate::Containerd;

/// A shim process serving one of the IDs asked for.
struct Shim {
    pid: i32,
    id: String,
    /// containerd deleted its bundle and no container process is left
    /// under it: nothing will stop it but us.
    abandoned: bool,
}

fn shims(namespace: &str, ids: &[&str]) -> Vec<Shim> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            // Processes only: their directories are numbers.
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let id = shim_id(&cmdline, namespace).filter(|id| ids.contains(&id.as_str()))?;
            let abandoned = bundle_deleted(&e.path()) && no_children(&e.path());
            Some(Shim { pid, id, abandoned })
        })
        .collect()
}

/// The `ids` of `namespace` whose shims are running on this host.
pub fn live_shims(namespace: &str, ids: &[&str]) -> Vec<String> {
    let mut found: Vec<String> = shims(namespace, ids).into_iter().map(|s| s.id).collect();
    found.sort();
    found.dedup();
    found
}

/// The shim's working directory is its bundle; containerd deletes (after
/// renaming) it once it is done with the task, or gave up starting it.
fn bundle_deleted(proc_dir: &std::path::Path) -> bool {
    std::fs::read_link(proc_dir.join("cwd"))
        .is_ok_and(|p| p.to_string_lossy().ends_with(" (deleted)"))
}

fn no_children(proc_dir: &std::path::Path) -> bool {
    std::fs::read_dir(proc_dir.join("task"))
        .into_iter()
        .flatten()
        .flatten()
        .all(|t| {
            std::fs::read_to_string(t.path().join("children")).is_ok_and(|c| c.trim().is_empty())
        })
}

/// The `-id` of a shim's command line, when it is a shim of `namespace`.
fn shim_id(cmdline: &[u8], namespace: &str) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let binary = args.first()?.rsplit(|b| *b == b'/').next()?;
    if !binary.starts_with(b"containerd-shim") {
        return None;
    }
    let value = |flag: &[u8]| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())
    };
    (value(b"-namespace")? == namespace)
        .then(|| value(b"-id"))
        .flatten()
}

/// What waiting for shims came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShimsLeft {
    /// IDs whose shims still ran when the time was up.
    pub running: Vec<String>,
    /// IDs whose abandoned shims were killed.
    pub killed: Vec<String>,
}

impl Containerd {
    /// Waits up to `limit` for the shims of `ids` in our namespace to
    /// exit, killing the abandoned ones (see the module's note): only
    /// shims serving these IDs, whose bundle containerd has deleted and
    /// that have no container process left.
    pub async fn wait_shims_gone(&self, ids: &[&str], limit: Duration) -> ShimsLeft {
        wait_gone(&self.namespace, ids, limit).await
    }
}

async fn wait_gone(namespace: &str, ids: &[&str], limit: Duration) -> ShimsLeft {
    let deadline = Instant::now() + limit;
    let mut left = ShimsLeft::default();
    loop {
        let mut running = Vec::new();
        for s in shims(namespace, ids) {
            if s.abandoned {
                let pid = nix::unistd::Pid::from_raw(s.pid);
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok()
                    && !left.killed.contains(&s.id)
                {
                    left.killed.push(s.id);
                }
            } else if !running.contains(&s.id) {
                running.push(s.id);
            }
        }
        if running.is_empty() || Instant::now() >= deadline {
            left.running = running;
            return left;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut v = args.join("\0").into_bytes();
        v.push(0);
        v
    }

    #[test]
    fn a_shim_names_its_namespace_and_id() {
        let c = cmdline(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            "/run/containerd/containerd.sock",
        ]);
        assert_eq!(shim_id(&c, "k8s.io").as_deref(), Some("abc"));
        assert_eq!(shim_id(&c, "other"), None);
    }

    #[test]
    fn other_processes_are_not_shims() {
        let c = cmdline(&["/usr/bin/runc", "-namespace", "k8s.io", "-id", "abc"]);
        assert_eq!(shim_id(&c, "k8s.io"), None);
        assert_eq!(shim_id(b"", "k8s.io"), None);
        let no_id = cmdline(&["containerd-shim-runc-v2", "-namespace", "k8s.io"]);
        assert_eq!(shim_id(&no_id, "k8s.io"), None);
    }

    #[test]
    fn nothing_is_found_for_ids_nobody_serves() {
        assert!(live_shims("no-such-namespace", &["x"]).is_empty());
    }

    /// A stand-in shim: bash named `containerd-shim-test`, waiting on its
    /// stdin (a builtin, so no child), in `dir`.
    fn fake_shim(namespace: &str, id: &str, dir: &std::path::Path) -> std::process::Child {
        std::process::Command::new("bash")
            .args([
                "-c",
                "exec -a containerd-shim-test bash -c 'read x' _ -namespace \"$0\" -id \"$1\"",
            ])
            .args([namespace, id])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("bash")
    }

    #[tokio::test]
    async fn an_abandoned_shim_is_killed_and_a_working_one_waited_for() {
        let ns = format!("shim-test-{}", std::process::id());
        let gone = tempfile::tempdir().expect("tmp");
        let kept = tempfile::tempdir().expect("tmp");
        let mut abandoned = fake_shim(&ns, "a", gone.path());
        let mut working = fake_shim(&ns, "w", kept.path());
        let t = Instant::now();
        while live_shims(&ns, &["a", "w"]).len() < 2 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(live_shims(&ns, &["a", "w"]), ["a", "w"]);
        // Only the IDs asked for, and an existing bundle is not abandoned.
        let left = wait_gone(&ns, &["w"], Duration::from_millis(100)).await;
        assert_eq!(
            left,
            ShimsLeft {
                running: vec!["w".into()],
                killed: vec![]
            }
        );
        std::fs::remove_dir(gone.path()).expect("rmdir");
        let left = wait_gone(&ns, &["a", "w"], Duration::from_millis(100)).await;
        assert_eq!(
            left,
            ShimsLeft {
                running: vec!["w".into()],
                killed: vec!["a".into()]
            }
        );
        let status = abandoned.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        working.kill().expect("kill");
        working.wait().expect("wait");
        assert!(live_shims(&ns, &["a", "w"]).is_empty());
    }
}
