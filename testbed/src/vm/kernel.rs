//! Debian's cloud kernel, downloaded with `apt-get download` (never
//! installed) and unpacked with `dpkg-deb -x` into the cache.
//!
//! Cache layout: `deb/<package>_<version>_amd64.deb`, `kernel-<abi>/`
//! (the unpacked package, with the `modules.dep` of `busybox depmod`) and
//! `kernel-version` naming the `<abi>` in use. Once that file exists, runs
//! ask apt nothing: delete it to move to a newer kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::VmError;

/// The meta package; its first `linux-image-*` dependency is the kernel.
const META: &str = "linux-image-cloud-amd64";

pub(crate) struct Kernel {
    /// The ABI name, e.g. `6.1.0-48-cloud-amd64` (`uname -r` in the guest).
    pub(crate) version: String,
    root: PathBuf,
}

impl Kernel {
    pub(crate) fn image(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }

    fn at(cache: &Path, version: &str) -> Kernel {
        Kernel {
            version: version.to_string(),
            root: cache.join(format!("kernel-{version}")),
        }
    }

    fn complete(&self) -> bool {
        self.image().is_file() && self.modules_dir().join("modules.dep").is_file()
    }
}

fn err(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> VmError {
    VmError::Kernel(format!("{what}: {detail}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| err(what, e))?;
    if !out.status.success() {
        return Err(err(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_update() -> Result<(), VmError> {
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )
    .map(drop)
}

/// `linux-image-<abi>`, from `apt-cache depends` of the meta package.
fn package() -> Result<String, VmError> {
    let find = || -> Result<String, VmError> {
        let deps = run(
            Command::new("apt-cache").args(["depends", META]),
            "apt-cache depends",
        )?;
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
            .ok_or_else(|| err("apt-cache depends", format!("no kernel among:\n{deps}")))
    };
    // A fresh machine may have no package lists yet.
    find().or_else(|_| {
        apt_update()?;
        find()
    })
}

fn find_deb(dir: &Path, pkg: &str) -> Option<PathBuf> {
    let prefix = format!("{pkg}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    debs.pop()
}

/// The kernel, from the cache or fetched into it. The caller holds the
/// cache lock.
pub(crate) fn kernel(cache: &Path) -> Result<Kernel, VmError> {
    let marker = cache.join("kernel-version");
    if let Ok(v) = std::fs::read_to_string(&marker) {
        let k = Kernel::at(cache, v.trim());
        if k.complete() {
            return Ok(k);
        }
    }
    let pkg = package()?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let debs = cache.join("deb");
    std::fs::create_dir_all(&debs).map_err(|e| err(debs.display(), e))?;
    let deb = match find_deb(&debs, &pkg) {
        Some(d) => d,
        None => {
            let download = || {
                run(
                    Command::new("apt-get")
                        .args(["download", "-qq", &pkg])
                        .current_dir(&debs),
                    "apt-get download",
                )
            };
            // Stale lists name a version the archive no longer has.
            download().or_else(|_| {
                apt_update()?;
                download()
            })?;
            find_deb(&debs, &pkg)
                .ok_or_else(|| err("apt-get download", format!("no {pkg}_*.deb appeared")))?
        }
    };
    let k = Kernel::at(cache, &version);
    if !k.complete() {
        let tmp = cache.join(format!("kernel-{version}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&k.root);
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
            "dpkg-deb -x",
        )?;
        run(
            Command::new("busybox")
                .args(["depmod", "-b"])
                .arg(&tmp)
                .arg(&version),
            "busybox depmod",
        )?;
        std::fs::rename(&tmp, &k.root).map_err(|e| err(k.root.display(), e))?;
        if !k.complete() {
            return Err(err(
                deb.display(),
                "no boot/vmlinuz or modules in the package",
            ));
        }
    }
    std::fs::write(&marker, &version).map_err(|e| err(marker.display(), e))?;
    Ok(k)
}
