//! Network namespaces for tests: created with a unique name, deleted on
//! drop (also when the test fails), so nothing touches the host's network.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named netns under /run/netns.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// The prefix of every netns a test process makes: `tb-<pid>-`. The PID
/// lets a later run find and delete what a killed run left.
pub fn run_prefix() -> String {
    format!("tb-{}-", std::process::id())
}

/// Deletes namespaces left by test processes that are gone (killed runs).
pub fn reap_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("tb-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Netns {
    /// `tb-<pid>-<tag>-<n>`, with `lo` up.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Self::named(&format!("{}{tag}-{n}", run_prefix()))
    }

    /// A netns with exactly this name (which should start with
    /// [`run_prefix`]), with `lo` up.
    pub fn named(name: &str) -> Self {
        let name = name.to_string();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("ip netns add: {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `script` with `sh -c` inside the netns; `Err(stderr)` on failure.
    pub fn try_sh(&self, script: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `f` on a thread inside this netns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netkit::netns::run_in(&self.path(), f)
            .unwrap_or_else(|e| panic!("entering netns {}: {e}", self.name))
    }

    /// Like [`Netns::try_sh`], panicking on failure.
    pub fn sh(&self, script: &str) -> String {
        self.try_sh(script)
            .unwrap_or_else(|e| panic!("in netns {}: {script}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
