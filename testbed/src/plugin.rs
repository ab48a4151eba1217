//! Running a CNI plugin binary with the protocol's environment, through
//! cni-runtime's executor (both outputs drained, killed at a deadline).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's `containernetworking-plugins` puts the Go reference.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The reference plugin `name`. Panics when it is missing: a differential
/// test that silently compared nothing would pass for the wrong reason.
pub fn reference_plugin(name: &str) -> PathBuf {
    let p = Path::new(REFERENCE_DIR).join(name);
    assert!(
        p.is_file(),
        "reference plugin {} is missing: run ./scripts/deps.sh (apt package containernetworking-plugins)",
        p.display()
    );
    p
}

/// One plugin invocation. The environment is cleared first so nothing from
/// the test runner (a stray CNI_ARGS, say) leaks into the call.
#[derive(Debug, Clone)]
pub struct Call {
    bin: PathBuf,
    env: BTreeMap<String, String>,
    stdin: Vec<u8>,
    cwd: Option<PathBuf>,
    /// Run the plugin with this netns as its host netns.
    host_netns: Option<String>,
    /// The netns set through [`Call::sandbox`], to catch it being the host's.
    sandbox: Option<String>,
    /// How long [`Call::run`] waits before it kills the plugin.
    timeout: Duration,
}

/// A plugin call that takes longer is hung: the test fails, it does not
/// hang with it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished call left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout parsed as JSON; panics with the whole outcome when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The CNI error code of a failed call; panics if stdout is no error JSON.
    pub fn error_code(&self) -> u64 {
        let v = self.json();
        v.get("code")
            .and_then(|c| c.as_u64())
            .unwrap_or_else(|| panic!("no error code in {self:?}"))
    }
}

impl From<netkit::process::Finished> for Outcome {
    fn from(f: netkit::process::Finished) -> Self {
        Outcome {
            code: f.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&f.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&f.stderr).into_owned(),
        }
    }
}

impl From<std::process::Output> for Outcome {
    fn from(out: std::process::Output) -> Self {
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Call {
    /// A call of `bin` with `CNI_COMMAND=command` and the usual defaults
    /// (netns path, ifname eth0, CNI_PATH the binary's directory).
    pub fn new(bin: impl AsRef<Path>, command: &str, container_id: &str) -> Self {
        let bin = bin.as_ref().to_path_buf();
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), command.into());
        env.insert("CNI_CONTAINERID".into(), container_id.into());
        env.insert("CNI_NETNS".into(), "/var/run/netns/testbed".into());
        env.insert("CNI_IFNAME".into(), "eth0".into());
        let dir = bin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        env.insert("CNI_PATH".into(), dir);
        Call {
            bin,
            env,
            stdin: Vec::new(),
            cwd: None,
            host_netns: None,
            sandbox: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long [`Call::run`] waits for the plugin (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn stdin(mut self, s: impl Into<Vec<u8>>) -> Self {
        self.stdin = s.into();
        self
    }

    pub fn ifname(self, name: &str) -> Self {
        self.env("CNI_IFNAME", name)
    }

    pub fn netns(mut self, path: &str) -> Self {
        self.sandbox = None;
        self.env("CNI_NETNS", path)
    }

    pub fn args(self, args: &str) -> Self {
        self.env("CNI_ARGS", args)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs the plugin inside `ns` (through `ip netns exec`), which is then
    /// the "host" netns for everything the plugin does.
    pub fn in_netns(mut self, ns: &crate::Netns) -> Self {
        self.host_netns = Some(ns.name().to_string());
        self
    }

    /// Sets `CNI_NETNS` to `ns`, which must not be the netns the plugin runs
    /// in ([`Call::in_netns`]): a test meaning a container netns would
    /// otherwise act on its "host" without noticing. Use [`Call::netns`] to
    /// name the host's on purpose.
    pub fn sandbox(self, ns: &crate::Netns) -> Self {
        let call = self.netns(&ns.path().display().to_string());
        Call {
            sandbox: Some(ns.name().to_string()),
            ..call
        }
    }

    /// Working directory of the plugin (default: the test's).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    fn command(&self) -> Command {
        assert!(
            self.sandbox.is_none() || self.sandbox != self.host_netns,
            "CNI_NETNS {:?} is the netns the plugin runs in; use Call::netns for that on purpose",
            self.sandbox
        );
        let mut c = match &self.host_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.env_clear()
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c
    }

    /// Starts the plugin and feeds stdin; the caller may kill it.
    pub fn spawn(&self) -> std::io::Result<Child> {
        let mut child = self.command().spawn()?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin killed early closes its end; that is not our error.
            let _ = input.write_all(&self.stdin);
        }
        Ok(child)
    }

    /// Runs the plugin to completion; panics when it cannot start or has
    /// not finished by the deadline.
    pub fn run(&self) -> Outcome {
        let name = self.bin.display().to_string();
        cni_runtime::exec::run(self.command(), &name, &self.stdin, self.timeout)
            .unwrap_or_else(|e| panic!("running {name}: {e}"))
            .into()
    }
}
