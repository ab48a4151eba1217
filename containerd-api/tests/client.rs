//! The containerd client against a private containerd: an OCI
//! archive imported over gRPC runs, no lease is left behind, and the
//! task's start and exit come as events; processes exec'd into a
//! running task report their exit and output, and are killed and
//! removed when they run out of time.

use std::time::Duration;

use containerd_api::{Containerd, Event, TaskState};
use futures::StreamExt;
use testbed::Netns;
use testbed::containerd::Containerd as PrivateContainerd;
use testbed::image::{busybox_oci_tar, single_binary_oci_tar, static_bin};

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

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn exec_reports_exit_and_output_and_kills_on_timeout() {
    let work = tempfile::tempdir().expect("tmp");
    let tar = busybox_oci_tar(work.path());
    let (_state, ctrd, c) = private().await;
    c.import_oci_archive(&tar, "localhost/busybox")
        .await
        .expect("import");
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "localhost/busybox:latest",
        "ex1",
        "sleep",
        "3600",
    ]);
    let limit = Duration::from_secs(10);

    let hi = c
        .exec("ex1", "hi", &args(&["echo", "hi"]), limit)
        .await
        .expect("exec echo");
    assert_eq!(hi.exit, Some(0), "{hi:?}");
    assert!(hi.output.contains("hi"), "{hi:?}");

    // stderr is in the output too, and the exit status is the process's.
    let err = c
        .exec(
            "ex1",
            "err",
            &args(&["sh", "-c", "echo err >&2; exit 3"]),
            limit,
        )
        .await
        .expect("exec sh");
    assert_eq!(err.exit, Some(3), "{err:?}");
    assert!(err.output.contains("err"), "{err:?}");

    // The same exec ID again: the first was deleted.
    let again = c
        .exec("ex1", "hi", &args(&["echo", "again"]), limit)
        .await
        .expect("exec again");
    assert_eq!(again.exit, Some(0), "{again:?}");
    assert!(again.output.contains("again"), "{again:?}");

    // Out of time: killed, and gone from the task.
    let started = std::time::Instant::now();
    let slow = c
        .exec(
            "ex1",
            "slow",
            &args(&["sleep", "30"]),
            Duration::from_secs(1),
        )
        .await
        .expect("exec sleep");
    assert_eq!(slow.exit, None, "{slow:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let ps = ctrd.ctr_ok(&["tasks", "ps", "ex1"]);
    let processes: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(processes.len(), 1, "{ps}");

    // A command that cannot start is an error, promptly, and its exec
    // is gone.
    let started = std::time::Instant::now();
    let bad = c
        .exec("ex1", "bad", &args(&["/no/such/command"]), limit)
        .await
        .expect_err("nothing to run");
    assert!(started.elapsed() < Duration::from_secs(2), "{bad}");
    let ps = ctrd.ctr_ok(&["tasks", "ps", "ex1"]);
    assert_eq!(
        ps.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        1,
        "{bad}: {ps}"
    );

    let missing = c
        .exec("nope", "x", &args(&["true"]), limit)
        .await
        .expect_err("no such container");
    assert!(missing.is_not_found(), "{missing}");

    let running = c
        .task_info("ex1")
        .await
        .expect("task_info")
        .expect("a task");
    assert_eq!(running.state, TaskState::Running, "{running:?}");
    assert!(running.pid > 0, "{running:?}");
    assert_eq!(running.exited_at, None, "{running:?}");
    assert_eq!(
        c.task("ex1").await.expect("task"),
        Some((TaskState::Running, running.pid))
    );

    ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "ex1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stopped = loop {
        let info = c
            .task_info("ex1")
            .await
            .expect("task_info")
            .expect("a task");
        if matches!(info.state, TaskState::Stopped { .. }) {
            break info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not stopped within 10 s: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        stopped.state,
        TaskState::Stopped { exit: 137 },
        "{stopped:?}"
    );
    assert!(stopped.exited_at.is_some(), "{stopped:?}");

    ctrd.ctr_ok(&["tasks", "rm", "ex1"]);
    ctrd.ctr_ok(&["containers", "rm", "ex1"]);
    // No FIFO directory is left behind.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("ctrd-exec-{}-", std::process::id())))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
