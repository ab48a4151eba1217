//! A private containerd runs the `web` test image in a new netns, and it
//! answers; stopping it leaves no task, shim or mount behind.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use testbed::http::get;

use testbed::Netns;
use testbed::containerd::Containerd;
use testbed::image::{single_binary_oci_tar, static_bin};

#[test]
fn private_containerd_runs_the_web_image_in_a_new_netns() {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = single_binary_oci_tar(work.path(), "web", &static_bin("web"));
    let pause_tar = single_binary_oci_tar(work.path(), "pause", &static_bin("pause"));
    let state = tempfile::Builder::new()
        .prefix("tb-ctrd-")
        .tempdir_in("/var/tmp")
        .expect("state dir");
    let mut ctrd = Containerd::start(state.path(), None, std::path::Path::new("/usr/lib/cni"));
    let tar_s = tar.display().to_string();
    ctrd.ctr_ok(&["images", "import", "--base-name", "localhost/web", &tar_s]);
    let pause_s = pause_tar.display().to_string();
    ctrd.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "localhost/pause",
        &pause_s,
    ]);
    let images = ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.contains("localhost/web:latest"), "{images}");
    assert!(images.contains("localhost/pause:latest"), "{images}");

    let pod = Netns::new("web");
    let with_ns = format!("network:{}", pod.path().display());
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--with-ns",
        &with_ns,
        "localhost/web:latest",
        "web1",
    ]);
    let answer = get(&pod, "127.0.0.1:8080".parse().expect("addr"));
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(!body.is_empty(), "answers with its hostname: {answer}");

    // pause: exits 0 on SIGTERM.
    ctrd.ctr_ok(&["run", "-d", "localhost/pause:latest", "pause1"]);
    ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGTERM", "pause1"]);
    let mut status = String::new();
    for _ in 0..50 {
        status = ctrd.ctr_ok(&["tasks", "ls"]);
        if status
            .lines()
            .any(|l| l.starts_with("pause1") && l.contains("STOPPED"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pause1") && l.contains("STOPPED")),
        "{status}"
    );
    let exit = ctrd.ctr_ok(&["tasks", "delete", "pause1"]);
    assert!(
        !exit.contains("exit status") || exit.contains("exit status 0"),
        "{exit}"
    );

    let socket = ctrd.socket().display().to_string();
    ctrd.stop();
    let shims = Command::new("pgrep")
        .args([
            "-f",
            &format!("containerd-shim-runc-v2 .*-address {socket}"),
        ])
        .output()
        .expect("pgrep");
    assert!(shims.stdout.is_empty(), "shims left: {:?}", shims);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(&*state.path().to_string_lossy()),
        "mounts left"
    );
}

#[test]
fn each_node_runs_its_own_containerd_and_serves_across_the_lan() {
    use testbed::cluster::{Cluster, INAJOB, YUANYING};
    let cluster = Cluster::tutorial("ctrd");
    let work = tempfile::tempdir().expect("tempdir");
    let tar = single_binary_oci_tar(work.path(), "web", &static_bin("web"));
    let tar_s = tar.display().to_string();
    let inajob = cluster.node(INAJOB.0);
    let state = tempfile::Builder::new()
        .prefix("tb-ctrd-")
        .tempdir_in("/var/tmp")
        .expect("state");
    let ctrd = Containerd::start(
        state.path(),
        Some(&inajob.ns),
        std::path::Path::new("/usr/lib/cni"),
    );
    // containerd itself runs in the node's netns.
    let pid = ctrd.pid();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    let node_ns = inajob
        .run(|| std::fs::read_link("/proc/thread-self/ns/net"))
        .expect("ns link");
    assert_eq!(theirs, node_ns);
    ctrd.ctr_ok(&["images", "import", "--base-name", "localhost/web", &tar_s]);
    let with_ns = format!("network:{}", inajob.ns.path().display());
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--with-ns",
        &with_ns,
        "localhost/web:latest",
        "web-on-inajob",
    ]);
    let answer = get(
        &cluster.node(YUANYING.0).ns,
        SocketAddr::from((INAJOB.1, 8080)),
    );
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
}
