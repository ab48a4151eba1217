//! containerd's runtime v2 shims, seen in `/proc`. A task create whose
//! client died goes on inside its shim (runc create, then containerd's
//! cleanup runs runc delete), so what runc makes, the cgroup parent, can
//! appear after the client's successor has torn everything else down.
//! The shim exits when that work is done: waiting for it orders the two.
//! A shim is started as `<binary> -namespace <ns> -id <id> -address …`
//! (the v2 shim protocol), so its command line names what it serves.

use std::time::{Duration, Instant};

use crate::Containerd;

/// The `ids` of `namespace` whose shims are running on this host.
pub fn live_shims(namespace: &str, ids: &[&str]) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<String> = procs
        .flatten()
        // Processes only: their directories are numbers.
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter_map(|cmdline| shim_id(&cmdline, namespace))
        .filter(|id| ids.contains(&id.as_str()))
        .collect();
    found.sort();
    found.dedup();
    found
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

impl Containerd {
    /// Waits up to `limit` for the shims of `ids` in our namespace to exit;
    /// the ones still running then.
    pub async fn wait_shims_gone(&self, ids: &[&str], limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let live = live_shims(&self.namespace, ids);
            if live.is_empty() || Instant::now() >= deadline {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
}
