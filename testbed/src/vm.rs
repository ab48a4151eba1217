//! A throw-away VM with Debian's kernel, for what this host's kernel lacks
//! (IPVS, dummy interfaces, bridge VLAN filtering). qemu runs it under TCG
//! (KVM does not work here) with an initramfs of busybox, iproute2 (`ip`,
//! `bridge`), ipset, iptables (nft and legacy), ipvsadm, conntrack, nft and
//! the needed modules; a test adds its own files and a script, and gets the
//! script's stdout, stderr and exit status back.
//!
//! ```no_run
//! use std::time::Duration;
//! let out = testbed::vm::Vm::builder()
//!     .file("/path/to/node-sync", "/usr/local/bin/node-sync")
//!     .script("set -e\nip link add kube-ipvs0 type dummy\nnode-sync --once")
//!     .timeout(Duration::from_secs(120))
//!     .run()?;
//! assert_eq!(out.exit_code, 0, "{out}");
//! # Ok::<(), testbed::vm::VmError>(())
//! ```
//!
//! The guest: `/init` (`testbed/vm/init.sh`) mounts proc, sys, dev and a
//! tmpfs on `/run`, loads the modules, and runs the script with busybox
//! `sh` in `/root`, stdin from `/dev/null`. `PATH` starts with
//! `/usr/local/sbin:/usr/local/bin`. busybox ash runs its own applets
//! before anything on `PATH`, and so do busybox `timeout`, `env`, `xargs`
//! and the like: the script gets a function `ip` that calls iproute2's
//! `/usr/sbin/ip` (busybox's has no netns), but `timeout 5 ip ...` needs
//! the full path. Programs run by other programs (`ip netns exec`) are
//! found on `PATH` normally. Files passed in must not go under `/run`
//! (mounted over) or `/proc`, `/sys`, `/dev`.
//!
//! Cache (see [`cache_dir`]): the kernel package and its unpacked tree
//! (module `kernel`), the base initramfs keyed by kernel version and a
//! hash of what goes in (module `initramfs`), and under `logs/` each
//! run's console (`<name>.console.log`) and result channel
//! (`<name>.result`), `<name>` being the run's name (default: the test's
//! thread name). Preparation takes a file lock, so parallel tests and
//! test binaries share one download and one build.

mod initramfs;
mod kernel;

use std::fmt;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A guest script fragment: a bridge `cni0` (10.244.1.1/24, forwarding on)
/// and three pods on it, netns `pod1`..`pod3` at 10.244.1.2-4 with a
/// default route through the bridge; pod1 and pod2 answer `backend-1` and
/// `backend-2` on :8080 (busybox httpd).
pub const PODS_ON_A_BRIDGE: &str = r#"ip link add cni0 type bridge
ip addr add 10.244.1.1/24 dev cni0
ip link set cni0 up
sysctl -qw net.ipv4.ip_forward=1
for i in 1 2 3; do
  ip netns add pod$i
  ip link add veth$i type veth peer name eth0 netns pod$i
  ip link set veth$i master cni0 up
  ip -n pod$i addr add 10.244.1.$((i+1))/24 dev eth0
  ip -n pod$i link set eth0 up
  ip -n pod$i link set lo up
  ip -n pod$i route add default via 10.244.1.1
done
for i in 1 2; do
  mkdir -p /www$i
  echo "backend-$i" > /www$i/index.html
  ip netns exec pod$i httpd -p 8080 -h /www$i
done
"#;

/// Why a VM run failed. The script's own failure is not an error: see
/// [`VmOutput::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Finding, downloading or unpacking the kernel package.
    #[error("VM kernel: {0}")]
    Kernel(String),
    /// Building the base or the per-run initramfs.
    #[error("VM initramfs: {0}")]
    Initramfs(String),
    /// The cache directory or a run's working files.
    #[error("VM cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A host file passed with [`VmBuilder::file`].
    #[error("file for the VM {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A guest path that is not absolute.
    #[error("guest path {0:?} is not absolute")]
    GuestPath(String),
    #[error("qemu-system-x86_64 not found (Debian package qemu-system-x86): {0}")]
    QemuMissing(std::io::Error),
    #[error("running qemu: {0}")]
    Qemu(std::io::Error),
    /// qemu was killed after `after`; `tail` is the end of the console.
    #[error("the VM did not finish within {after:?}, qemu killed; console {}:\n{tail}", log.display())]
    Timeout {
        after: Duration,
        log: PathBuf,
        tail: String,
    },
    /// qemu exited without the script's exit status (kernel panic, `/init`
    /// died, qemu refused its arguments, ...).
    #[error("the VM stopped ({status}) without the script's exit status; console {}:\n{tail}", log.display())]
    Crashed {
        status: String,
        log: PathBuf,
        tail: String,
    },
}

/// What the guest script printed and its exit status.
#[derive(Debug, Clone)]
pub struct VmOutput {
    pub stdout: String,
    pub stderr: String,
    /// As `sh` reports it: 0-255, 128+N for signal N.
    pub exit_code: i32,
    /// From qemu's start to its exit.
    pub took: Duration,
    /// The kernel console (boot, `/init`, a live copy of the script's
    /// output), kept until the next run of the same name.
    pub console_log: PathBuf,
}

impl VmOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// For assertion messages: exit code, stdout, stderr.
impl fmt::Display for VmOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {} after {:.1?} (console: {})\n--- stdout\n{}\n--- stderr\n{}",
            self.exit_code,
            self.took,
            self.console_log.display(),
            self.stdout,
            self.stderr
        )
    }
}

/// `<target dir>/testbed-vm`, the cache of kernel and initramfs, chosen as:
/// 1. `$TESTBED_VM_CACHE` when set;
/// 2. the nearest ancestor of the running executable holding
///    `CACHEDIR.TAG`, which cargo writes at the root of every target dir
///    (default or `CARGO_TARGET_DIR`), so tests, examples and the project's
///    binaries all find the same one;
/// 3. `$CARGO_TARGET_DIR` when it is absolute;
/// 4. the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TESTBED_VM_CACHE") {
        return PathBuf::from(d);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|a| a.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    let target = from_exe.or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    });
    target.unwrap_or_else(std::env::temp_dir).join("testbed-vm")
}

/// The prepared kernel and base initramfs; [`VmBuilder::run`] prepares
/// them itself, [`Vm::prepare`] lets a caller do it ahead (e.g. to time a
/// run without the first download).
pub struct Vm {
    cache: PathBuf,
    kernel: kernel::Kernel,
    base: initramfs::Base,
}

impl Vm {
    pub fn builder() -> VmBuilder {
        VmBuilder {
            files: Vec::new(),
            script: String::new(),
            timeout: Duration::from_secs(180),
            name: None,
        }
    }

    /// Fetches the kernel and builds the base initramfs unless cached.
    pub fn prepare() -> Result<Vm, VmError> {
        let cache = cache_dir();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Cache { path, source }
        };
        std::fs::create_dir_all(&cache).map_err(io(&cache))?;
        let lock_path = cache.join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let kernel = kernel::kernel(&cache)?;
        let base = initramfs::base(&cache, &kernel)?;
        Ok(Vm {
            cache,
            kernel,
            base,
        })
    }

    /// The guest's `uname -r`.
    pub fn kernel_version(&self) -> &str {
        &self.kernel.version
    }
}

pub(crate) enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>, u32),
}

/// One VM run: files, a script, a timeout.
pub struct VmBuilder {
    files: Vec<(Source, String)>,
    script: String,
    timeout: Duration,
    name: Option<String>,
}

/// Run before the script (one line, so line numbers shift by one).
const PRELUDE: &str =
    "ip() { /usr/sbin/ip \"$@\"; } # busybox ash prefers its applets; its ip lacks netns\n";
/// After the script's exit status arrived, how long qemu gets to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(5);

impl VmBuilder {
    /// Copies host file `host` (symlinks followed, mode kept) to the
    /// absolute `guest` path. A dynamically linked program brings the
    /// libraries `ldd` lists.
    pub fn file(mut self, host: impl AsRef<Path>, guest: impl Into<String>) -> Self {
        self.files
            .push((Source::Host(host.as_ref().to_path_buf()), guest.into()));
        self
    }

    /// A file with these contents and mode (e.g. 0o644) at `guest`.
    pub fn contents(
        mut self,
        guest: impl Into<String>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.files
            .push((Source::Bytes(data.into(), mode), guest.into()));
        self
    }

    /// The script, run by busybox `sh` (add `set -e` to stop at the first
    /// failure).
    pub fn script(mut self, script: impl Into<String>) -> Self {
        self.script = script.into();
        self
    }

    /// Wall-clock bound of the qemu run (default 180 s); preparing the
    /// cache is not counted.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names the log files under `<cache>/logs/` (default: the current
    /// thread's name, which is the test's name under the test harness).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Prepares the cache ([`Vm::prepare`]), boots, runs the script.
    pub fn run(self) -> Result<VmOutput, VmError> {
        let vm = Vm::prepare()?;
        self.run_on(&vm)
    }

    /// Boots `vm` and runs the script.
    pub fn run_on(self, vm: &Vm) -> Result<VmOutput, VmError> {
        if let Some((_, g)) = self.files.iter().find(|(_, g)| !g.starts_with('/')) {
            return Err(VmError::GuestPath(g.clone()));
        }
        let script = format!("{PRELUDE}{}\n", self.script);
        let archive = initramfs::run_archive(&vm.base, &script, &self.files)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Cache { path, source }
        };
        let runs = vm.cache.join("runs");
        let logs = vm.cache.join("logs");
        for d in [&runs, &logs] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        sweep(&runs);
        let work = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&runs)
            .map_err(io(&runs))?;
        let initrd = work.path().join("initrd");
        std::fs::copy(&vm.base.path, &initrd).map_err(io(&initrd))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&initrd)
            .and_then(|mut f| f.write_all(&archive))
            .map_err(io(&initrd))?;
        let name = self.name.clone().unwrap_or_else(default_name);
        let console = logs.join(format!("{name}.console.log"));
        let result = logs.join(format!("{name}.result"));
        let _ = std::fs::remove_file(&result);
        let log = std::fs::File::create(&console).map_err(io(&console))?;
        let log2 = log.try_clone().map_err(io(&console))?;

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "1"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nic",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-kernel")
            .arg(vm.kernel.image())
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
            // ttyS0: the console; ttyS1: the result channel.
            .args(["-serial", "stdio", "-serial"])
            .arg(format!("file:{}", result.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: prctl is async-signal-safe; the closure touches nothing
        // else. qemu dies with this thread even if the process is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let start = Instant::now();
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmError::QemuMissing(e),
            _ => VmError::Qemu(e),
        })?;
        let mut qemu = Qemu(child);
        let deadline = start + self.timeout;
        let mut reported: Option<Instant> = None;
        let status = loop {
            if let Some(st) = qemu.0.try_wait().map_err(VmError::Qemu)? {
                break st.to_string();
            }
            let now = Instant::now();
            if reported.is_none() && parse(&std::fs::read(&result).unwrap_or_default()).is_some() {
                reported = Some(now);
            }
            if reported.is_some_and(|t| now >= t + POWEROFF_GRACE) {
                break "killed after reporting".to_string();
            }
            if now >= deadline {
                drop(qemu);
                return Err(VmError::Timeout {
                    after: self.timeout,
                    tail: tail(&console),
                    log: console,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(qemu);
        let took = start.elapsed();
        let bytes = std::fs::read(&result).unwrap_or_default();
        let Some((stdout, stderr, exit_code)) = parse(&bytes) else {
            return Err(VmError::Crashed {
                status,
                tail: tail(&console),
                log: console,
            });
        };
        Ok(VmOutput {
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            exit_code,
            took,
            console_log: console,
        })
    }
}

/// qemu, killed (and reaped) when dropped: no VM outlives its run, even
/// when the caller panics.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn default_name() -> String {
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(str::to_string)
        .unwrap_or_else(|| format!("vm-{}", std::process::id()));
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes run directories a killed process left, after an hour.
fn sweep(runs: &Path) {
    let Ok(dir) = std::fs::read_dir(runs) else {
        return;
    };
    for e in dir.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The last lines of the console log, without the serial line's `\r` and
/// the firmware's terminal escapes.
fn tail(log: &Path) -> String {
    let raw = std::fs::read(log).unwrap_or_default();
    let mut clean = Vec::with_capacity(raw.len());
    let mut chars = raw.into_iter();
    while let Some(c) = chars.next() {
        match c {
            b'\r' => {}
            0x1b => {
                // ESC [ ... letter, or ESC and one character.
                if chars.next() == Some(b'[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            _ => clean.push(c),
        }
    }
    let text = String::from_utf8_lossy(&clean);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The result channel: `TBVM-STDOUT <n>\n<n bytes>TBVM-STDERR <n>\n<n
/// bytes>TBVM-EXIT <code>\n`; `None` until it is complete.
fn parse(b: &[u8]) -> Option<(&[u8], &[u8], i32)> {
    fn frame<'a>(b: &'a [u8], tag: &str) -> Option<(&'a [u8], &'a [u8])> {
        let b = b.strip_prefix(tag.as_bytes())?;
        let nl = b.iter().position(|c| *c == b'\n')?;
        let n: usize = std::str::from_utf8(&b[..nl]).ok()?.trim().parse().ok()?;
        let body = b.get(nl + 1..nl + 1 + n)?;
        Some((body, &b[nl + 1 + n..]))
    }
    let (out, rest) = frame(b, "TBVM-STDOUT ")?;
    let (err, rest) = frame(rest, "TBVM-STDERR ")?;
    let rest = rest.strip_prefix(b"TBVM-EXIT ")?;
    let nl = rest.iter().position(|c| *c == b'\n')?;
    let code = std::str::from_utf8(&rest[..nl]).ok()?.trim().parse().ok()?;
    Some((out, err, code))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn result_frames() {
        let b = b"TBVM-STDOUT 6\na\nb\nc\nTBVM-STDERR 0\nTBVM-EXIT 3\n";
        assert_eq!(parse(b), Some((&b"a\nb\nc\n"[..], &b""[..], 3)));
        // Incomplete: no exit line yet, or a body cut short.
        assert_eq!(parse(&b[..b.len() - 1]), None);
        assert_eq!(parse(b"TBVM-STDOUT 9\nab"), None);
        // Bodies may hold anything, markers included.
        let b = b"TBVM-STDOUT 12\nTBVM-EXIT 0\nTBVM-STDERR 1\nxTBVM-EXIT 255\n";
        assert_eq!(parse(b), Some((&b"TBVM-EXIT 0\n"[..], &b"x"[..], 255)));
    }
}
