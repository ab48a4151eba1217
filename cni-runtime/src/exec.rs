//! The one plugin executor: a plugin run with the CNI environment and its
//! config on stdin, stdout and stderr drained together and a deadline
//! after which it is killed (netkit's process runner); its exit turned
//! into its output or its CNI error, and an ADD's output into
//! cni-protocol's result.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cni_protocol::{CniError, CniResult, SpecVersion};
use netkit::process::{Finished, ProcessError};

use crate::lookup::{LookupError, find_plugin};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Not started, or killed at its deadline (the message names the
    /// binary).
    #[error("{source}")]
    Process {
        plugin: String,
        source: ProcessError,
    },
    /// The plugin failed and said why (its error object, or a
    /// description of what it printed instead).
    #[error("CNI plugin {plugin} failed (code {}): {error}", error.code)]
    Plugin { plugin: String, error: CniError },
    #[error("CNI plugin {plugin} returned a result that does not parse: {error}")]
    Result { plugin: String, error: CniError },
}

impl ExecError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ExecError::Process { source, .. } if source.is_timeout())
    }

    /// The error as a plugin passes it on to its runtime (IPAM delegation).
    pub fn into_cni_error(self) -> CniError {
        use cni_protocol::ErrorCode;
        match self {
            ExecError::Plugin { error, .. } | ExecError::Result { error, .. } => error,
            ExecError::Lookup(e @ LookupError::InvalidType(_)) => {
                CniError::new(ErrorCode::InvalidNetworkConfig, e.to_string())
            }
            other => CniError::internal(other.to_string()),
        }
    }
}

/// How a plugin's environment starts before the `CNI_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseEnv {
    /// Nothing of ours but `PATH` (a runtime's choice: a stray variable of
    /// the caller must not change what a plugin does).
    Clean,
    /// Ours whole (a plugin delegating to another, as the reference does).
    Inherit,
}

/// The `CNI_*` variables of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: cni_protocol::Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub args: String,
}

impl Invocation {
    /// A command that acts on no attachment (GC, STATUS, VERSION).
    pub fn global(command: cni_protocol::Command) -> Self {
        Invocation {
            command,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: String::new(),
        }
    }
}

/// Runs a prepared command: `stdin` fed, both outputs drained, killed after
/// `timeout`. Whatever the exit, what it left (for callers that judge the
/// exit themselves, as the differential tests do).
pub fn run(
    cmd: Command,
    plugin: &str,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Finished, ExecError> {
    netkit::process::run(cmd, Some(stdin), timeout).map_err(|source| ExecError::Process {
        plugin: plugin.to_string(),
        source,
    })
}

#[derive(serde::Deserialize)]
struct PluginError {
    code: Option<u32>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// A finished plugin's stdout on success; on failure its error object, or
/// as libcni words it when it printed none.
pub fn outcome(plugin: &str, f: Finished) -> Result<Vec<u8>, ExecError> {
    if f.success() {
        return Ok(f.stdout);
    }
    let error = if f.stdout.is_empty() {
        let msg = if f.stderr.is_empty() {
            format!("netplugin failed with no error message: {}", f.status)
        } else {
            format!("netplugin failed: {:?}", String::from_utf8_lossy(&f.stderr))
        };
        CniError::internal(msg)
    } else {
        match serde_json::from_slice::<PluginError>(&f.stdout) {
            Ok(e) => CniError {
                code: e.code.unwrap_or(cni_protocol::ErrorCode::Internal as u32),
                msg: e.msg,
                details: e.details,
            },
            Err(e) => CniError::internal(format!(
                "netplugin failed but error parsing its diagnostic message {:?}: {e}",
                String::from_utf8_lossy(&f.stdout)
            )),
        }
    };
    Err(ExecError::Plugin {
        plugin: plugin.to_string(),
        error,
    })
}

/// An ADD's output as a result; one without `cniVersion` is read as
/// `version`, the config's (libcni's rule for old plugins).
pub fn parse_result(
    plugin: &str,
    out: &[u8],
    version: SpecVersion,
) -> Result<CniResult, ExecError> {
    CniResult::parse(out, version).map_err(|error| ExecError::Result {
        plugin: plugin.to_string(),
        error,
    })
}

/// Plugins found in `bin_dirs` and run with a clean environment, as a
/// runtime runs them.
#[derive(Debug, Clone)]
pub struct Executor {
    pub bin_dirs: Vec<PathBuf>,
    pub env: BaseEnv,
}

impl Executor {
    pub fn new(bin_dirs: Vec<PathBuf>) -> Self {
        Executor {
            bin_dirs,
            env: BaseEnv::Clean,
        }
    }

    pub fn find(&self, plugin: &str) -> Result<PathBuf, ExecError> {
        Ok(find_plugin(plugin, &self.bin_dirs)?)
    }

    /// `bin` with the environment of `inv`; `CNI_PATH` is the bin dirs.
    pub fn command(&self, bin: &Path, inv: &Invocation) -> Command {
        let mut cmd = Command::new(bin);
        if self.env == BaseEnv::Clean {
            cmd.env_clear().env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            );
        }
        let path: OsString = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        cmd.env("CNI_COMMAND", inv.command.as_str())
            .env("CNI_CONTAINERID", &inv.container_id)
            .env("CNI_NETNS", &inv.netns)
            .env("CNI_IFNAME", &inv.ifname)
            .env("CNI_ARGS", &inv.args)
            .env("CNI_PATH", path);
        cmd
    }

    /// Runs plugin `plugin` and returns its stdout.
    pub fn exec(
        &self,
        plugin: &str,
        inv: &Invocation,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ExecError> {
        let bin = self.find(plugin)?;
        outcome(
            plugin,
            run(self.command(&bin, inv), plugin, stdin, timeout)?,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// A bin dir holding `name`, a shell script.
    pub(crate) fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn inv() -> Invocation {
        Invocation {
            command: cni_protocol::Command::Add,
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1".into(),
        }
    }

    #[test]
    fn a_hung_plugin_is_killed_at_its_timeout() {
        let d = tempfile::tempdir().expect("tmp");
        let pidfile = d.path().join("pid");
        script(
            d.path(),
            "hang",
            &format!("echo $$ > {}\nexec sleep 1000", pidfile.display()),
        );
        let x = Executor::new(vec![d.path().to_path_buf()]);
        let t = Instant::now();
        let e = x
            .exec("hang", &inv(), b"{}", Duration::from_millis(500))
            .expect_err("timeout");
        assert!(e.is_timeout(), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let pid = std::fs::read_to_string(&pidfile).expect("pid");
        // Killed and reaped: no such process any more.
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "plugin {pid} still there"
        );
    }

    #[test]
    fn outputs_larger_than_a_pipe_are_drained_together() {
        let d = tempfile::tempdir().expect("tmp");
        // 1 MiB on stderr before anything on stdout: a runner reading
        // stdout first would deadlock on the full stderr pipe.
        script(
            d.path(),
            "loud",
            "head -c 1048576 /dev/zero >&2\nhead -c 1048576 /dev/zero | tr '\\0' x",
        );
        let x = Executor::new(vec![d.path().to_path_buf()]);
        let bin = x.find("loud").expect("find");
        let f = run(
            x.command(&bin, &inv()),
            "loud",
            b"{}",
            Duration::from_secs(20),
        )
        .expect("run");
        assert_eq!((f.stdout.len(), f.stderr.len()), (1 << 20, 1 << 20));
    }

    #[test]
    fn the_environment_is_the_cni_one() {
        let d = tempfile::tempdir().expect("tmp");
        script(d.path(), "env", "cat >/dev/null; env | sort");
        let x = Executor::new(vec![d.path().to_path_buf(), "/nowhere".into()]);
        let out = x
            .exec("env", &inv(), b"{}", Duration::from_secs(10))
            .expect("env");
        let text = String::from_utf8(out).expect("utf8");
        for want in [
            "CNI_COMMAND=ADD",
            "CNI_CONTAINERID=c1",
            "CNI_IFNAME=eth0",
            "CNI_NETNS=/run/netns/x",
            "CNI_ARGS=IgnoreUnknown=1",
            &format!("CNI_PATH={}:/nowhere", d.path().display()),
        ] {
            assert!(text.lines().any(|l| l == want), "{want} in {text}");
        }
        assert!(!text.contains("CARGO"), "a clean environment: {text}");
    }

    #[test]
    fn failures_carry_the_plugins_error() {
        let d = tempfile::tempdir().expect("tmp");
        script(
            d.path(),
            "e7",
            r#"echo '{"code":7,"msg":"bad conf","details":"x"}'; exit 1"#,
        );
        script(d.path(), "quiet", "echo oops >&2; exit 2");
        script(d.path(), "garbage", "echo 'not json'; exit 1");
        let x = Executor::new(vec![d.path().to_path_buf()]);
        let err = |p| match x.exec(p, &inv(), b"{}", Duration::from_secs(10)) {
            Err(e) => e.into_cni_error(),
            Ok(o) => panic!("{p} succeeded: {o:?}"),
        };
        let e = err("e7");
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (7, "bad conf", "x")
        );
        let e = err("quiet");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (999, "netplugin failed: \"oops\\n\"")
        );
        assert!(
            err("garbage")
                .msg
                .contains("error parsing its diagnostic message")
        );
        assert_eq!(err("../e7").code, 7, "an invalid type is a config error");
        assert_eq!(err("missing").code, 999);
    }

    #[test]
    fn results_parse_into_the_protocol_types() {
        let out = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}"#;
        let r = parse_result("p", out, SpecVersion::V0_3_1).expect("result");
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.2/24");
        // No version: the config's.
        let old = br#"{"ips":[{"version":"4","address":"10.1.0.3/24"}]}"#;
        assert_eq!(
            parse_result("p", old, SpecVersion::V0_3_1)
                .expect("0.3.1")
                .ips
                .len(),
            1
        );
        assert!(matches!(
            parse_result("p", b"nope", SpecVersion::V1_0_0),
            Err(ExecError::Result { .. })
        ));
    }
}
