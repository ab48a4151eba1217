//! The containerd client against a private containerd: an OCI
//! archive imported over gRPC runs, no lease is left behind, and the
//! task's start and exit come as events.

use std::time::Duration;

use containerd_api::{Containerd, Event};
use futures::StreamExt;
use testbed::Netns;
use testbed::containerd::Containerd as PrivateContainerd;
use testbed::image::{single_binary_oci_tar, static_bin};

/// A private containerd and our client to it (namespace "testbed", as
/// the testbed's `ctr` uses).
async fn private() -> (tempfile::TempDir, PrivateContainerd, Containerd) {
    let state = tempfile::Builder::new()
        .prefix("tb-ctrd-")
        .tempdir_in("/var/tmp")
        .expect("state");
    let ctrd = PrivateContainerd::start(state.path(), None, std::path::Path::new("/usr/lib/cni"));
    let c = Containerd::connect(&ctrd.socket(), "testbed")
        .await
        .expect("connect");
    (state, ctrd, c)
}

// Two workers: the subscription's call runs on one while the test blocks
// on `ctr` on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_image_runs_and_no_lease_is_left() {
    let work = tempfile::tempdir().expect("tmp");
    let tar = single_binary_oci_tar(work.path(), "web", &static_bin("web"));
    let (_state, ctrd, c) = private().await;
    assert!(c.version().await.expect("version").starts_with("1."));
    let imported = c
        .import_oci_archive(&tar, "localhost/web")
        .await
        .expect("import");
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "localhost/web:latest");
    assert!(imported[0].digest.starts_with("sha256:"));
    // Importing again is fine (content is addressed by digest).
    c.import_oci_archive(&tar, "localhost/web")
        .await
        .expect("re-import");
    let images = ctrd.ctr_ok(&["images", "ls"]);
    assert!(
        images.contains("localhost/web:latest") && images.contains(&imported[0].digest),
        "{images}"
    );
    assert!(
        ctrd.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(),
        "leases left"
    );

    // It is complete: containerd unpacks and runs it.
    // containerd sends a subscription's response headers with its first
    // event, so the call resolves only once a task event exists: it runs
    // in a task of its own, given a moment to reach containerd before the
    // container starts.
    let subscription = tokio::spawn(async move { c.subscribe(&["topic~=\"/tasks/\""]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pod = Netns::new("imp");
    let with_ns = format!("network:{}", pod.path().display());
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--with-ns",
        &with_ns,
        "localhost/web:latest",
        "web1",
    ]);
    let answer = testbed::http::get(&pod, "127.0.0.1:8080".parse().expect("addr"));
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "web1"]);
    let mut events = Box::pin(
        tokio::time::timeout(Duration::from_secs(10), subscription)
            .await
            .expect("the subscription answers once a task event exists")
            .expect("subscription task")
            .expect("subscribe"),
    );
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e| matches!(e, Event::TaskExit { container_id, exit_status: 137, .. } if container_id == "web1"))
    {
        let next = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("no exit event within 10 s; saw {seen:?}"))
            .expect("stream open")
            .expect("event");
        assert!(next.topic.starts_with("/tasks/"), "{next:?}");
        assert_eq!(next.namespace, "testbed");
        seen.push(next.event);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::TaskStart { container_id, .. } if container_id == "web1")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_broken_archive_is_a_clear_error() {
    let work = tempfile::tempdir().expect("tmp");
    let bad = work.path().join("bad.tar");
    std::fs::write(&bad, b"not a tar at all").expect("write");
    let (_state, ctrd, c) = private().await;
    let err = c
        .import_oci_archive(&bad, "localhost/bad")
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("bad.tar"), "{err}");
    assert!(
        ctrd.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(),
        "leases left"
    );
}
