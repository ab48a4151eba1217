//! The initramfs: a cached gzip'ed base (busybox, the network tools and
//! their libraries, kernel modules, `/init`) and a small uncompressed cpio
//! archive per run, appended to it. The kernel unpacks concatenated
//! archives in order, each on top of the last.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::VmError;
use super::kernel::Kernel;

/// Loaded at boot (`modprobe -a`), with their dependencies.
pub(crate) const MODULES: &[&str] = &[
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
    "vxlan",
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
    // node-sync's nftables Services: a Service without endpoints in an ip table.
    "nft_reject_ipv4",
    // node-sync's nftables Services: round robin, hairpin lookup.
    "nft_numgen",
    "nft_fib_ipv4",
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

/// Host programs copied to the same path in the guest, with the libraries
/// `ldd` lists. busybox gets no applet link where one of these (or an
/// iptables link) has the name: `/usr/sbin/ip` is iproute2's.
const BINARIES: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/bridge",
    "/usr/sbin/ipvsadm",
    "/usr/sbin/ipset",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/conntrack",
    "/usr/sbin/nft",
];

/// `/usr/sbin/<name>` -> `<multi>`.
const XTABLES_LINKS: &[(&str, &str)] = &[
    ("iptables", "xtables-nft-multi"),
    ("iptables-save", "xtables-nft-multi"),
    ("iptables-restore", "xtables-nft-multi"),
    ("ip6tables", "xtables-nft-multi"),
    ("ip6tables-save", "xtables-nft-multi"),
    ("ip6tables-restore", "xtables-nft-multi"),
    ("iptables-nft", "xtables-nft-multi"),
    ("iptables-nft-save", "xtables-nft-multi"),
    ("iptables-nft-restore", "xtables-nft-multi"),
    ("iptables-legacy", "xtables-legacy-multi"),
    ("iptables-legacy-save", "xtables-legacy-multi"),
    ("iptables-legacy-restore", "xtables-legacy-multi"),
    ("ip6tables-legacy", "xtables-legacy-multi"),
    ("ip6tables-legacy-save", "xtables-legacy-multi"),
    ("ip6tables-legacy-restore", "xtables-legacy-multi"),
];

const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
const BUSYBOX: &str = "/bin/busybox";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// ipset and iptables look protocols and services up by name.
const ETC: &[&str] = &["/etc/protocols", "/etc/services"];
const INIT: &str = include_str!("../../vm/init.sh");
/// This file: a change to how the base is built rebuilds it.
const BUILDER: &str = include_str!("initramfs.rs");

/// The cached base initramfs of one kernel.
pub(crate) struct Base {
    pub(crate) path: PathBuf,
    /// Guest paths it holds (files only), so a run does not add them again.
    pub(crate) files: BTreeSet<String>,
}

fn err(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> VmError {
    VmError::Initramfs(format!("{what}: {detail}"))
}

fn read(p: &Path) -> Result<Vec<u8>, VmError> {
    std::fs::read(p).map_err(|e| err(p.display(), e))
}

/// The cache key: kernel version, this source file (lists, `/init` path,
/// layout), `/init`, and the size and mtime of every host file copied in
/// (an upgraded package rebuilds).
fn key(k: &Kernel, host_files: &[PathBuf]) -> String {
    let mut h = Fnv::default();
    for s in [BUILDER, &k.version, INIT] {
        h.write(s.as_bytes());
    }
    for f in host_files {
        h.write(f.as_os_str().as_encoded_bytes());
        if let Ok(m) = std::fs::metadata(f) {
            h.write(&m.len().to_le_bytes());
            h.write(&m.mtime().to_le_bytes());
            h.write(&m.mtime_nsec().to_le_bytes());
        }
    }
    format!("{:016x}", h.0)
}

/// 64-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().chain([0xffu8].iter()) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Host files of the base, without libraries (found later with ldd).
fn host_files() -> Result<Vec<PathBuf>, VmError> {
    let mut v: Vec<PathBuf> = [BUSYBOX, LOADER]
        .iter()
        .chain(BINARIES)
        .chain(ETC)
        .map(PathBuf::from)
        .collect();
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(XTABLES_DIR)
        .map_err(|e| err(XTABLES_DIR, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    plugins.sort();
    v.extend(plugins);
    Ok(v)
}

/// The base initramfs for `k`, built when the cache has none for the
/// current key. The caller holds the cache lock.
pub(crate) fn base(cache: &Path, k: &Kernel) -> Result<Base, VmError> {
    let hosts = host_files()?;
    let stem = format!("base-{}-{}", k.version, key(k, &hosts));
    let path = cache.join(format!("{stem}.cpio.gz"));
    let list = cache.join(format!("{stem}.files"));
    if let (true, Ok(text)) = (path.exists(), std::fs::read_to_string(&list)) {
        let files = text.lines().map(str::to_string).collect();
        return Ok(Base { path, files });
    }
    // Other keys are stale.
    if let Ok(dir) = std::fs::read_dir(cache) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("base-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut a = Cpio::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "etc/tbvm",
        "usr/local/bin",
    ] {
        a.dir(d, 0o755);
    }
    a.dir("tmp", 0o1777);
    a.file("init", 0o755, INIT.as_bytes());
    // busybox and its applets, except where a real program is installed.
    a.file(BUSYBOX, 0o755, &read(Path::new(BUSYBOX))?);
    let real: BTreeSet<&str> = BINARIES
        .iter()
        .filter_map(|b| b.rsplit('/').next())
        .chain(XTABLES_LINKS.iter().map(|(l, _)| *l))
        .collect();
    let applets = run(
        Command::new(BUSYBOX).arg("--list-full"),
        "busybox --list-full",
    )?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if applet != "bin/busybox" && !real.contains(name) {
            a.symlink(applet, BUSYBOX);
        }
    }
    let mut programs: Vec<PathBuf> = BINARIES.iter().map(PathBuf::from).collect();
    for b in BINARIES {
        a.host_file(Path::new(b), b)?;
    }
    for (l, target) in XTABLES_LINKS {
        a.symlink(&format!("/usr/sbin/{l}"), target);
    }
    for p in hosts.iter().filter(|p| p.starts_with(XTABLES_DIR)) {
        let guest = p.to_string_lossy().into_owned();
        a.host_file(p, &guest)?;
        programs.push(p.clone());
    }
    a.host_file(Path::new(LOADER), LOADER)?;
    for p in ETC {
        a.file(p, 0o644, &read(Path::new(p))?);
    }
    let mut libs = BTreeSet::new();
    for p in &programs {
        libs.extend(ldd(p));
    }
    for lib in &libs {
        let guest = lib.to_string_lossy();
        if !a.files.contains(guest.trim_start_matches('/')) {
            a.host_file(lib, &guest)?;
        }
    }
    modules(&mut a, cache, k)?;
    a.file("etc/tbvm/modules", 0o644, MODULES.join("\n").as_bytes());
    let files = a.files.clone();
    let bytes = a.finish();
    let tmp = cache.join(format!("{stem}.tmp"));
    gzip(&bytes, &tmp)?;
    let text: String = files.iter().map(|f| format!("{f}\n")).collect();
    std::fs::write(&list, text).map_err(|e| err(list.display(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(path.display(), e))?;
    Ok(Base { path, files })
}

/// The modules of [`MODULES`] and their dependency closure, with the
/// modules.dep/alias/symbols `busybox depmod` writes for them.
fn modules(a: &mut Cpio, cache: &Path, k: &Kernel) -> Result<(), VmError> {
    let src = k.modules_dir();
    let dep_path = src.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(|e| err(dep_path.display(), e))?;
    let mut wanted = BTreeSet::new();
    for m in MODULES {
        let line = dep.lines().find(|l| {
            let ko = l.split(':').next().unwrap_or("");
            let base = ko.rsplit('/').next().unwrap_or("");
            base.split('.').next() == Some(*m) && base.contains(".ko")
        });
        let line = line.ok_or_else(|| err("module not found", m))?;
        let (ko, deps) = line.split_once(':').unwrap_or((line, ""));
        wanted.insert(ko.to_string());
        wanted.extend(deps.split_whitespace().map(str::to_string));
    }
    // busybox depmod needs a tree; stage just the chosen modules.
    let stage = tempfile::Builder::new()
        .prefix("modstage-")
        .tempdir_in(cache)
        .map_err(|e| err("staging modules", e))?;
    let dst = stage.path().join("lib/modules").join(&k.version);
    for rel in wanted
        .iter()
        .map(String::as_str)
        .chain(["modules.builtin", "modules.order"])
    {
        let to = dst.join(rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).map_err(|e| err(p.display(), e))?;
        }
        std::fs::copy(src.join(rel), &to).map_err(|e| err(src.join(rel).display(), e))?;
    }
    run(
        Command::new(BUSYBOX)
            .args(["depmod", "-b"])
            .arg(stage.path())
            .arg(&k.version),
        "busybox depmod",
    )?;
    a.tree(stage.path(), Path::new("lib/modules"))
}

/// A run's own archive: `/etc/tbvm/script.sh` and the files a test passes
/// in, with the libraries of those that are dynamically linked programs
/// (unless the base has them).
pub(crate) fn run_archive(
    base: &Base,
    script: &str,
    files: &[(super::Source, String)],
) -> Result<Vec<u8>, VmError> {
    let mut a = Cpio::default();
    a.file("etc/tbvm/script.sh", 0o644, script.as_bytes());
    let mut libs = BTreeSet::new();
    for (src, guest) in files {
        match src {
            super::Source::Host(p) => {
                let data = std::fs::read(p).map_err(|e| VmError::File {
                    path: p.clone(),
                    source: e,
                })?;
                let mode = std::fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o644);
                if mode & 0o111 != 0 && data.starts_with(b"\x7fELF") {
                    libs.extend(ldd(p));
                }
                a.file(guest, mode, &data);
            }
            super::Source::Bytes(data, mode) => a.file(guest, *mode, data),
        }
    }
    for lib in libs {
        let guest = lib.to_string_lossy().into_owned();
        if !base.files.contains(guest.trim_start_matches('/')) {
            a.host_file(&lib, &guest)?;
        }
    }
    Ok(a.finish())
}

/// The libraries (and loader) `ldd` lists for `bin`; none for a static
/// program or a non-ELF file.
fn ldd(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).stderr(Stdio::null()).output() else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

fn run(cmd: &mut Command, what: &str) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| err(what, e))?;
    if !out.status.success() {
        return Err(err(what, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `gzip -1` of `bytes` into `to`, padded with zeros to a multiple of 4:
/// the kernel expects the next (uncompressed) archive 4-byte aligned.
fn gzip(bytes: &[u8], to: &Path) -> Result<(), VmError> {
    let file = std::fs::File::create(to).map_err(|e| err(to.display(), e))?;
    let mut child = Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .map_err(|e| err("gzip", e))?;
    let written = child
        .stdin
        .take()
        .ok_or_else(|| err("gzip", "no stdin"))
        .and_then(|mut w| w.write_all(bytes).map_err(|e| err("gzip", e)));
    let status = child.wait().map_err(|e| err("gzip", e))?;
    written?;
    if !status.success() {
        return Err(err("gzip", status));
    }
    let len = std::fs::metadata(to)
        .map_err(|e| err(to.display(), e))?
        .len();
    let pad = (4 - len % 4) % 4;
    if pad > 0 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(to)
            .map_err(|e| err(to.display(), e))?;
        f.write_all(&[0u8; 3][..pad as usize])
            .map_err(|e| err(to.display(), e))?;
    }
    Ok(())
}

/// A cpio archive in the "newc" format the kernel unpacks, built in
/// memory. Parent directories are added on the way.
#[derive(Default)]
pub(crate) struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            0,
            0,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn parents(&mut self, name: &str) {
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let d = &name[..at + i];
            if !self.dirs.contains(d) {
                self.dirs.insert(d.to_string());
                self.entry(d, S_IFDIR | 0o755, &[]);
            }
            at += i + 1;
        }
    }

    /// Guest paths are stored relative to `/`.
    fn norm(path: &str) -> String {
        path.trim_start_matches('/').to_string()
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        let name = Self::norm(path);
        self.parents(&name);
        if self.dirs.insert(name.clone()) {
            self.entry(&name, S_IFDIR | mode, &[]);
        }
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let name = Self::norm(path);
        self.parents(&name);
        self.entry(&name, S_IFREG | (mode & 0o7777), data);
        self.files.insert(name);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        let name = Self::norm(path);
        self.parents(&name);
        self.entry(&name, S_IFLNK | 0o777, target.as_bytes());
    }

    /// A host file (symlinks followed) at `guest`, keeping its mode.
    fn host_file(&mut self, host: &Path, guest: &str) -> Result<(), VmError> {
        let data = read(host)?;
        let mode = std::fs::metadata(host)
            .map_err(|e| err(host.display(), e))?
            .permissions()
            .mode();
        self.file(guest, mode, &data);
        Ok(())
    }

    /// Everything under `root/sub`, at `/sub/...` in the guest.
    fn tree(&mut self, root: &Path, sub: &Path) -> Result<(), VmError> {
        let dir = root.join(sub);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(dir.display(), e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = sub.join(e.file_name());
            let guest = rel.to_string_lossy().into_owned();
            let ft = e.file_type().map_err(|x| err(e.path().display(), x))?;
            if ft.is_dir() {
                self.dir(&guest, 0o755);
                self.tree(root, &rel)?;
            } else {
                self.host_file(&e.path(), &guest)?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Cpio::default();
        a.file("/a/b", 0o644, b"hi");
        let out = a.finish();
        // dir "a", file "a/b", trailer; every header 4-byte aligned.
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("070701").count(), 3);
        assert!(out.len().is_multiple_of(4));
        let file = text.find("a/b\0").unwrap();
        assert_eq!(&out[file - 110..file - 104], b"070701");
        assert_eq!(&out[file - 110 + 54..file - 110 + 62], b"00000002");
    }
}
