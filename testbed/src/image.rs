//! Test images, built locally (no registry is reachable): an OCI layout
//! with a busybox-static root filesystem, packed by `umoci`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `<dir>/busybox.tar`, an OCI-layout tar with one image tagged
/// `latest`: busybox and its applets in /bin, /www/index.html saying
/// `hello from busybox`, default command `/bin/sh`.
pub fn busybox_oci_tar(dir: &Path) -> PathBuf {
    let (layout, bundle, image) = start_image(dir);
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "httpd", "ip", "hostname", "nc", "wget", "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(root.join("www/index.html"), "hello from busybox\n").expect("index");
    let tar = dir.join("busybox.tar");
    let config = ["--config.cmd", "/bin/sh", "--config.env", "PATH=/bin"];
    finish_image(&layout, &bundle, &image, &config, &tar);
    tar
}

/// A fresh OCI layout with an empty image `latest`, unpacked for editing:
/// (layout, bundle, image reference). Its rootfs is `bundle/rootfs`.
fn start_image(work: &Path) -> (PathBuf, PathBuf, String) {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    (layout, bundle, image)
}

/// Repacks the bundle, applies `config` (umoci config flags) and tars the
/// layout to `tar`.
fn finish_image(layout: &Path, bundle: &Path, image: &str, config: &[&str], tar: &Path) {
    run(Command::new("umoci")
        .args(["repack", "--image", image])
        .arg(bundle));
    run(Command::new("umoci")
        .args(["config", "--image", image])
        .args(config)
        .args(["--architecture", "amd64", "--os", "linux"]));
    run(Command::new("tar")
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(layout)
        .args(["oci-layout", "index.json", "blobs"]));
}

/// Where `./scripts/build-plugins.sh` put the statically linked binaries
/// (`TESTBED_STATIC_DIR`, which `./scripts/test.sh` sets). Panics with the
/// way to build them when `name` is not there.
pub fn static_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TESTBED_STATIC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "TESTBED_STATIC_DIR is not set: run the suite with ./scripts/test.sh, or export \
             TESTBED_STATIC_DIR=$(./scripts/build-plugins.sh -p pod-runner -p testbed)"
            )
        });
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with ./scripts/build-plugins.sh -p pod-runner -p testbed",
        bin.display()
    );
    bin
}

/// An OCI-layout tar at `<dir>/<name>.tar` holding one static binary at
/// `/<name>` as the image's entrypoint, tagged `latest`; `ctr images
/// import` and containerd's import API accept it.
pub fn single_binary_oci_tar(dir: &Path, name: &str, bin: &Path) -> PathBuf {
    let work = dir.join(format!("{name}-build"));
    let (layout, bundle, image) = start_image(&work);
    let root = bundle.join("rootfs");
    std::fs::copy(bin, root.join(name)).expect("copy binary");
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let tar = dir.join(format!("{name}.tar"));
    let entry = format!("/{name}");
    finish_image(
        &layout,
        &bundle,
        &image,
        &["--config.entrypoint", &entry],
        &tar,
    );
    let _ = std::fs::remove_dir_all(&work);
    tar
}
