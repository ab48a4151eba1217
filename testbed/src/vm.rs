//! A throw-away VM with Debian's kernel, for what this host's kernel lacks
//! (IPVS, dummy interfaces, bridge VLAN filtering). qemu runs it under TCG
//! (KVM does not work here) with an initramfs of busybox, iproute2, ipset,
//! iptables, ipvsadm, conntrack and the needed modules; a test adds its
//! files and a script, and gets the script's output and exit status back.
//!
//! The kernel package (downloaded with `apt-get download`, never installed)
//! and the base initramfs are cached under `<target dir>/testbed-vm/`; a
//! run appends its own small cpio archive to the cached one, which the
//! kernel unpacks on top.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what}: {detail}")]
    Prepare { what: String, detail: String },
    #[error("qemu: {0}")]
    Qemu(std::io::Error),
    #[error("the VM did not finish within {0:?}; serial log tail:\n{1}")]
    Timeout(Duration, String),
    #[error("the VM stopped without reporting an exit status; serial log tail:\n{0}")]
    NoExit(String),
}

fn prep(what: impl Into<String>, detail: impl std::fmt::Display) -> VmError {
    VmError::Prepare {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// What the guest script printed (stdout and stderr) and its exit status.
#[derive(Debug, Clone)]
pub struct VmOutput {
    pub output: String,
    pub exit_code: i32,
    /// Wall time from qemu start to its exit.
    pub took: Duration,
}

/// Modules loaded at boot, with their dependencies.
const MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_lc",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "dummy",
    "veth",
    "bridge",
    "br_netfilter",
    "8021q",
    "x_tables",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "nf_nat",
    "xt_conntrack",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_set",
    "xt_ipvs",
    "xt_statistic",
    "xt_multiport",
    "xt_nat",
    "xt_physdev",
    "xt_tcpudp",
    "xt_REDIRECT",
    "ipt_REJECT",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "nft_reject_inet",
    "nfnetlink",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
];

/// Host binaries copied into the guest, with their libraries.
const BINARIES: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/ipvsadm",
    "/usr/sbin/ipset",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/conntrack",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/test/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /run; mount -t tmpfs tmp /tmp; mkdir -p /run/netns
for m in $(cat /etc/modules-load); do modprobe $m 2>/dev/null; done
/usr/sbin/ip link set lo up
echo TBVM-OUT-BEGIN
/bin/sh /test/run.sh 2>&1
echo "TBVM-EXIT $?"
sync; poweroff -f
"#;

/// busybox ash runs its own applets before $PATH; these names must reach
/// the real tools (busybox's `ip` has no netns support).
const PRELUDE: &str = "ip() { /usr/sbin/ip \"$@\"; }\nset -e\n";

fn run(cmd: &mut Command, what: &str) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| prep(what, e))?;
    if !out.status.success() {
        return Err(prep(what, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `<target>/testbed-vm`: CARGO_TARGET_DIR, else the `target` directory
/// this test binary lives in, else the system temp dir.
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_path_buf)
        });
    target.unwrap_or_else(std::env::temp_dir).join("testbed-vm")
}

struct Kernel {
    version: String,
    root: PathBuf,
}

fn kernel(cache: &Path) -> Result<Kernel, VmError> {
    let depends = || {
        run(
            Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
            "apt-cache depends",
        )
    };
    // A fresh machine may not have the package lists yet.
    let deps = match depends() {
        Ok(d) if d.contains("Depends: linux-image-") => d,
        _ => {
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            )?;
            depends()?
        }
    };
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| prep("finding the kernel package", deps.clone()))?
        .to_string();
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let debs = cache.join("deb");
    std::fs::create_dir_all(&debs).map_err(|e| prep("cache dir", e))?;
    let have = |d: &Path| {
        std::fs::read_dir(d).ok().and_then(|mut r| {
            r.find_map(|e| {
                let p = e.ok()?.path();
                (p.file_name()?
                    .to_string_lossy()
                    .starts_with(&format!("{pkg}_")))
                .then_some(p)
            })
        })
    };
    let deb = match have(&debs) {
        Some(d) => d,
        None => {
            run(
                Command::new("apt-get")
                    .args(["download", &pkg])
                    .current_dir(&debs),
                "apt-get download",
            )?;
            have(&debs).ok_or_else(|| prep("apt-get download", "no .deb appeared"))?
        }
    };
    let root = cache.join(format!("kx-{version}"));
    if !root.join(format!("boot/vmlinuz-{version}")).exists() {
        let _ = std::fs::remove_dir_all(&root);
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
        )?;
    }
    let mods = root.join(format!("lib/modules/{version}"));
    if !mods.join("modules.dep").exists() {
        run(
            Command::new("busybox")
                .args(["depmod", "-b"])
                .arg(&root)
                .arg(&version),
            "depmod",
        )?;
    }
    Ok(Kernel { version, root })
}

/// The shared libraries `ldd` lists for `bin`.
fn libs(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn copy_into(root: &Path, src: &Path, dest: &Path) -> Result<(), VmError> {
    let to = root.join(dest.strip_prefix("/").unwrap_or(dest));
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(|e| prep("staging", e))?;
    }
    std::fs::copy(src, &to).map_err(|e| prep(format!("copying {}", src.display()), e))?;
    Ok(())
}

fn with_libs(root: &Path, bin: &Path) -> Result<(), VmError> {
    for lib in libs(bin) {
        if lib.exists() {
            copy_into(root, &lib, &lib)?;
        }
    }
    Ok(())
}

/// Builds (or reuses) the base initramfs for `k`.
fn base_initramfs(cache: &Path, k: &Kernel) -> Result<PathBuf, VmError> {
    let mut key = String::new();
    let _ = write!(
        key,
        "{}|{}|{}|{}",
        k.version,
        MODULES.join(","),
        BINARIES.join(","),
        INIT
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let out = cache.join(format!("base-{}-{hash:016x}.cpio.gz", k.version));
    if out.exists() {
        return Ok(out);
    }
    let root = cache.join("stage");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "test/bin",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| prep("staging", e))?;
    }
    copy_into(&root, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for b in BINARIES {
        copy_into(&root, Path::new(b), Path::new(b))?;
        with_libs(&root, Path::new(b))?;
    }
    for l in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        std::os::unix::fs::symlink("xtables-nft-multi", root.join("usr/sbin").join(l))
            .map_err(|e| prep("staging", e))?;
    }
    for l in [
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-legacy-restore",
    ] {
        std::os::unix::fs::symlink("xtables-legacy-multi", root.join("usr/sbin").join(l))
            .map_err(|e| prep("staging", e))?;
    }
    let xt = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for e in std::fs::read_dir(xt)
        .map_err(|e| prep("xtables", e))?
        .flatten()
    {
        copy_into(&root, &e.path(), &e.path())?;
        with_libs(&root, &e.path())?;
    }
    copy_into(
        &root,
        Path::new("/lib64/ld-linux-x86-64.so.2"),
        Path::new("/lib64/ld-linux-x86-64.so.2"),
    )?;
    // ipset and iptables look protocols up by name.
    copy_into(
        &root,
        Path::new("/etc/protocols"),
        Path::new("/etc/protocols"),
    )?;
    copy_into(
        &root,
        Path::new("/etc/services"),
        Path::new("/etc/services"),
    )?;
    // Modules and their dependency closure, from modules.dep.
    let mods = k.root.join(format!("lib/modules/{}", k.version));
    let dep =
        std::fs::read_to_string(mods.join("modules.dep")).map_err(|e| prep("modules.dep", e))?;
    let mut wanted: Vec<String> = Vec::new();
    for m in MODULES {
        for line in dep.lines() {
            let (ko, deps) = line.split_once(':').unwrap_or((line, ""));
            let base = ko.rsplit('/').next().unwrap_or("");
            if base == format!("{m}.ko") || base.starts_with(&format!("{m}.ko.")) {
                wanted.push(ko.to_string());
                wanted.extend(deps.split_whitespace().map(str::to_string));
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    let guest_mods = Path::new("/lib/modules").join(&k.version);
    for ko in &wanted {
        copy_into(&root, &mods.join(ko), &guest_mods.join(ko))?;
    }
    for f in ["modules.builtin", "modules.order"] {
        copy_into(&root, &mods.join(f), &guest_mods.join(f))?;
    }
    run(
        Command::new("busybox")
            .args(["depmod", "-b"])
            .arg(&root)
            .arg(&k.version),
        "depmod (guest)",
    )?;
    std::fs::write(root.join("etc/modules-load"), MODULES.join("\n"))
        .map_err(|e| prep("staging", e))?;
    std::fs::write(root.join("init"), INIT).map_err(|e| prep("staging", e))?;
    set_exec(&root.join("init"))?;
    let tmp = out.with_extension("tmp");
    run(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
                tmp.display()
            ))
            .current_dir(&root),
        "packing the initramfs",
    )?;
    std::fs::rename(&tmp, &out).map_err(|e| prep("initramfs", e))?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(out)
}

fn set_exec(p: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| prep("chmod", e))
}

/// A VM run being prepared.
pub struct Vm {
    files: Vec<(PathBuf, String)>,
    script: String,
    timeout: Duration,
}

impl Default for Vm {
    fn default() -> Self {
        Vm {
            files: Vec::new(),
            script: String::new(),
            timeout: Duration::from_secs(180),
        }
    }
}

impl Vm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies host file `from` to `/test/bin/<name>` in the guest (on PATH),
    /// with the shared libraries it needs.
    pub fn file(mut self, from: impl AsRef<Path>, name: &str) -> Self {
        self.files
            .push((from.as_ref().to_path_buf(), name.to_string()));
        self
    }

    /// The script the guest runs with `sh` (with `set -e`).
    pub fn script(mut self, s: &str) -> Self {
        self.script = s.to_string();
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Boots the VM, runs the script, returns its output and exit status.
    pub fn run(self) -> Result<VmOutput, VmError> {
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).map_err(|e| prep("cache dir", e))?;
        // One preparation at a time: tests may run VMs in parallel.
        let lock = std::fs::File::create(cache.join("lock")).map_err(|e| prep("lock", e))?;
        lock.lock().map_err(|e| prep("lock", e))?;
        let k = kernel(&cache)?;
        let base = base_initramfs(&cache, &k)?;
        drop(lock);
        let work = tempfile::tempdir().map_err(|e| prep("work dir", e))?;
        let stage = work.path().join("stage");
        std::fs::create_dir_all(stage.join("test/bin")).map_err(|e| prep("staging", e))?;
        for (from, name) in &self.files {
            copy_into(&stage, from, &Path::new("/test/bin").join(name))?;
            set_exec(&stage.join("test/bin").join(name))?;
            with_libs(&stage, from)?;
        }
        std::fs::write(
            stage.join("test/run.sh"),
            format!("{PRELUDE}{}\n", self.script),
        )
        .map_err(|e| prep("staging", e))?;
        let extra = work.path().join("extra.cpio");
        run(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
                    extra.display()
                ))
                .current_dir(&stage),
            "packing the test files",
        )?;
        let initrd = work.path().join("initrd");
        let mut bytes = std::fs::read(&base).map_err(|e| prep("initramfs", e))?;
        bytes.extend(std::fs::read(&extra).map_err(|e| prep("initramfs", e))?);
        std::fs::write(&initrd, bytes).map_err(|e| prep("initramfs", e))?;
        self.boot(&k, &initrd, &cache)
    }

    fn boot(&self, k: &Kernel, initrd: &Path, cache: &Path) -> Result<VmOutput, VmError> {
        let serial = cache.join(format!("serial-{}.log", std::process::id()));
        let log = std::fs::File::create(&serial).map_err(VmError::Qemu)?;
        let start = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "1",
                "-nographic",
                "-no-reboot",
                "-nic",
                "none",
            ])
            .arg("-kernel")
            .arg(k.root.join(format!("boot/vmlinuz-{}", k.version)))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(VmError::Qemu)?)
            .stderr(log)
            .spawn()
            .map_err(VmError::Qemu)?;
        let deadline = start + self.timeout;
        let status = loop {
            if let Some(st) = child.try_wait().map_err(VmError::Qemu)? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = start.elapsed();
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&serial) {
            let _ = f.read_to_string(&mut text);
        }
        let text = text.replace('\r', "");
        let tail = || {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        if status.is_none() {
            return Err(VmError::Timeout(self.timeout, tail()));
        }
        let out = text
            .split_once("TBVM-OUT-BEGIN\n")
            .map(|(_, rest)| rest)
            .ok_or_else(|| VmError::NoExit(tail()))?;
        let (output, code) = out
            .rsplit_once("TBVM-EXIT ")
            .ok_or_else(|| VmError::NoExit(tail()))?;
        let exit_code = code
            .lines()
            .next()
            .and_then(|c| c.trim().parse().ok())
            .ok_or_else(|| VmError::NoExit(tail()))?;
        let _ = std::fs::remove_file(&serial);
        Ok(VmOutput {
            output: output.to_string(),
            exit_code,
            took,
        })
    }
}
