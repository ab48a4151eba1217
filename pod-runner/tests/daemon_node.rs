//! `pod-runner run` on one emulated node against the real API server:
//! pods bound to the node run with no command typed, a finished pod ends
//! Succeeded and releases its network, a deleted pod is stopped and
//! deleted by the daemon, a pod deleted while the daemon was down is torn
//! down when it starts, the daemon's restart adopts what runs, and bad
//! pods get the kubelet's statuses. (The two-node acceptance with the
//! controllers and node-sync is in tests/daemon.rs.)

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, text};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

struct Daemon(Child);

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let child = env
            .command(&["run", "--sync-frequency", "10s"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start pod-runner run");
        Daemon(child)
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), sig);
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": spec,
    }))
    .expect("pod")
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bare pod of the web image.
fn web_pod(name: &str) -> Pod {
    pod(
        name,
        json!({"containers": [{"name": "web", "image": "localhost/web:latest"}]}),
    )
}

/// Waits until the pod `name` is in `phase`; the pod then.
async fn wait_phase(pods: &kube::Api<Pod>, name: &str, phase_: &str, secs: u64) -> Pod {
    wait_for(&format!("{name} {phase_}"), secs, async || {
        pods.get_opt(name)
            .await
            .ok()
            .flatten()
            .filter(|p| phase(p) == phase_)
    })
    .await
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn container_id(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_finishes_deletes_and_adopts() {
    let env = Env::new("prd");
    let mut daemon = Daemon::start(&env);

    // A pod bound to the node runs with no command typed.
    env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let running = wait_for("web-002 Running", 20, async || {
        env.pod("web-002").await.filter(|p| {
            phase(p) == "Running"
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    let ip0 = running
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP");
    let answer = testbed::http::get(&env.node().ns, format!("{ip0}:8080").parse().expect("addr"));
    assert!(answer.ends_with("\nweb-002\n"), "{answer}");
    // The one-shot commands see the daemon's pods.
    let list = env.pod_runner(&["list"]);
    assert!(common::stdout(&list).contains("web-002"), "{}", text(&list));
    let id = container_id(&running).expect("containerID");

    // A Never pod that exits 0 ends Succeeded, its network released.
    env.create_pod_object(
        pod(
            "once",
            json!({"restartPolicy": "Never", "containers": [
                {"name": "once", "image": "localhost/web:latest", "command": ["/web", "exit", "0"]}]}),
        ),
        Some("inajob"),
    )
    .await;
    let done = wait_for("once Succeeded", 20, async || {
        env.pod("once").await.filter(|p| phase(p) == "Succeeded")
    })
    .await;
    let cs = &done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("cs")[0];
    let t = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    wait_for("once's lease released", 10, async || {
        (env.leases().len() == 1).then_some(())
    })
    .await;

    // A pod whose container dies while no daemon runs.
    env.create_pod_object(web_pod("catchup"), Some("inajob"))
        .await;
    let catchup = wait_for("catchup Running", 20, async || {
        env.pod("catchup").await.filter(|p| phase(p) == "Running")
    })
    .await;
    let catchup_id = container_id(&catchup).expect("containerID");

    // SIGKILL of the daemon leaves the pod running; the next one adopts
    // it: the same container, no restart, and the status unchanged.
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let before = env.pod("web-002").await.expect("pod");
    env.ctrd.ctr_ok(&[
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        catchup_id.trim_start_matches("containerd://"),
    ]);
    // Deleted from the API while no daemon runs: torn down at its start.
    env.create_pod_object(web_pod("orphan"), Some("inajob"))
        .await;
    let out = env.pod_runner(&["create", "orphan"]);
    assert!(out.status.success(), "{}", text(&out));
    env.remove_pod("orphan").await;
    let mut daemon = Daemon::start(&env);
    wait_for("orphan torn down", 20, async || {
        env.pod_runner(&["status", "orphan"])
            .status
            .code()
            .filter(|c| *c == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.pod("web-002").await.expect("pod");
    assert_eq!(
        container_id(&after),
        Some(id.clone()),
        "adopted, not restarted"
    );
    let rc = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count)
    };
    assert_eq!(rc(&after), Some(0));
    // What happened meanwhile is caught up on: the dead container is
    // restarted, its end the last state.
    let caught = wait_for("catchup restarted", 20, async || {
        env.pod("catchup")
            .await
            .filter(|p| rc(p) == Some(1) && phase(p) == "Running")
    })
    .await;
    let last = caught
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].last_state.as_ref())
        .and_then(|l| l.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(last, Some(137));
    env.remove_pod("catchup").await;
    assert_eq!(
        before
            .status
            .as_ref()
            .map(|s| serde_json::to_value(&s.conditions).ok()),
        after
            .status
            .as_ref()
            .map(|s| serde_json::to_value(&s.conditions).ok()),
        "the status flapped"
    );

    // Bad input gets the kubelet's statuses, and the daemon goes on.
    env.create_pod_object(
        pod(
            "noimage",
            json!({"containers": [{"name": "x", "image": "localhost/nothing:1", "imagePullPolicy": "IfNotPresent"}]}),
        ),
        Some("inajob"),
    )
    .await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(env.admin().await, "default");
    for reason in ["ErrImagePull", "ImagePullBackOff"] {
        wait_for(reason, 20, async || {
            pods.get_opt("noimage").await.ok().flatten().filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c[0].state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    == Some(reason)
            })
        })
        .await;
    }
    env.create_pod_object(
        pod(
            "badvolume",
            json!({"containers": [{"name": "x", "image": "localhost/web:latest",
                    "volumeMounts": [{"name": "h", "mountPath": "/h"}]}],
                   "volumes": [{"name": "h", "hostPath": {"path": "/nonexistent/pod-runner-test", "type": "Directory"}}]}),
        ),
        Some("inajob"),
    )
    .await;
    wait_for("badvolume CreateContainerConfigError", 20, async || {
        pods.get_opt("badvolume").await.ok().flatten().filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c[0].state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CreateContainerConfigError")
        })
    })
    .await;
    assert_eq!(
        pods.get("badvolume")
            .await
            .map(|p| phase(&p))
            .ok()
            .as_deref(),
        Some("Pending")
    );
    env.create_pod_object(
        pod(
            "hostnet",
            json!({"hostNetwork": true, "containers": [{"name": "x", "image": "localhost/web:latest"}]}),
        ),
        Some("inajob"),
    )
    .await;
    wait_for("hostnet Failed", 20, async || {
        env.pod("hostnet").await.filter(|p| phase(p) == "Failed")
    })
    .await;

    // Probes of each kind and hooks. An exec liveness probe that fails
    // restarts its container; a tcpSocket readiness probe passes; a
    // postStart hook that fails kills its container; a preStop httpGet
    // reaches the app before it is stopped.
    env.create_pod_object(
        pod(
            "probes",
            json!({"containers": [{"name": "web", "image": "localhost/web:latest",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "livenessProbe": {"exec": {"command": ["/web", "exit", "1"]},
                                  "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2},
                "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 8080}}}}]}),
        ),
        Some("inajob"),
    )
    .await;
    env.create_pod_object(
        pod(
            "hook",
            json!({"containers": [{"name": "web", "image": "localhost/web:latest",
                "lifecycle": {"postStart": {"exec": {"command": ["/web", "exit", "3"]}}}}]}),
        ),
        Some("inajob"),
    )
    .await;
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |c| c[0].restart_count)
    };
    for name in ["probes", "hook"] {
        wait_for(&format!("{name} restarted"), 30, async || {
            pods.get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|p| restarts(p) >= 1)
        })
        .await;
    }
    let events_api: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(env.admin().await, "default");
    let messages = async |pod: &str, reason: &str| -> Vec<String> {
        events_api
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
            })
            .filter_map(|e| e.message)
            .collect()
    };
    let unhealthy = messages("probes", "Unhealthy").await;
    assert!(
        unhealthy
            .iter()
            .any(|m| m.starts_with("Liveness probe failed") && m.contains("exited with 1")),
        "{unhealthy:?}"
    );
    assert!(!messages("hook", "FailedPostStartHook").await.is_empty());
    // The tcpSocket readiness probe passes on the restarted instance.
    wait_for("probes Ready", 20, async || {
        pods.get_opt("probes").await.ok().flatten().filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c[0].ready)
        })
    })
    .await;
    let probes = pods.get("probes").await.expect("probes");
    let log_dir = env.log_dir().join(format!(
        "default_probes_{}",
        probes.metadata.uid.clone().unwrap_or_default()
    ));
    pods.delete("probes", &Default::default())
        .await
        .expect("delete");
    wait_for("probes deleted by the daemon", 30, async || {
        pods.get_opt("probes")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    // Its last instance's log shows the preStop request.
    let logs: String = std::fs::read_dir(log_dir.join("web"))
        .expect("log dir")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("for /prestop"), "{logs}");
    pods.delete("hook", &Default::default())
        .await
        .expect("delete");

    // A new pod with an old pod's name is another pod: removed from the
    // API at once (grace 0) and made again, the old one goes from the
    // node and the new one runs.
    let first = env
        .create_pod_object(web_pod("again"), Some("inajob"))
        .await;
    wait_phase(&pods, "again", "Running", 20).await;
    env.remove_pod("again").await;
    let second = env
        .create_pod_object(web_pod("again"), Some("inajob"))
        .await;
    assert_ne!(first.metadata.uid, second.metadata.uid);
    let new_uid = second.metadata.uid.clone().unwrap_or_default();
    wait_for("the second again Running", 30, async || {
        pods.get_opt("again").await.ok().flatten().filter(|p| {
            phase(p) == "Running" && p.metadata.uid.as_deref() == Some(new_uid.as_str())
        })
    })
    .await;
    let record = pod_runner::state::Store::new(&env.state_dir())
        .load("default", "again")
        .expect("record")
        .expect("again runs");
    assert_eq!(record.uid, new_uid);
    let old_uid = first.metadata.uid.clone().unwrap_or_default();
    assert!(
        !Env::netns_of(&old_uid).exists(),
        "the old pod's netns is left"
    );
    let listed = env.ctrd.ctr_ok(&["containers", "ls"]);
    let old_sandbox = pod_runner::state::derive_id(&["sandbox", &old_uid]);
    assert!(
        !listed.contains(&old_sandbox),
        "the old pod's sandbox is left:\n{listed}"
    );
    env.remove_pod("again").await;

    // A container over its memory limit is OOM-killed: reason OOMKilled.
    env.create_pod_object(
        pod(
            "hog",
            json!({"restartPolicy": "Never", "containers": [{"name": "hog", "image": "localhost/web:latest",
                "command": ["/web", "eat"], "resources": {"limits": {"memory": "32Mi"}}}]}),
        ),
        Some("inajob"),
    )
    .await;
    let hog = wait_phase(&pods, "hog", "Failed", 30).await;
    let cs = &hog
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("cs")[0];
    let t = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (137, Some("OOMKilled")),
        "{t:?}"
    );
    env.remove_pod("hog").await;

    // A startup probe that never passes: the container is restarted, and
    // until then it is neither started nor ready (liveness and readiness
    // wait for it). A container that ignores SIGTERM is killed at the end
    // of its grace period.
    let images = env.dir.path().join("busybox-image");
    std::fs::create_dir_all(&images).expect("mkdir");
    let tar = testbed::image::busybox_oci_tar(&images);
    let out = env.pod_runner(&[
        "image",
        "import",
        &tar.to_string_lossy(),
        "--name",
        "localhost/busybox",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    env.create_pod_object(
        pod(
            "slowstart",
            json!({"containers": [{"name": "web", "image": "localhost/web:latest",
                "startupProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}),
        ),
        Some("inajob"),
    )
    .await;
    env.create_pod_object(
        pod(
            "stubborn",
            json!({"terminationGracePeriodSeconds": 2, "containers": [{"name": "sleep",
                "image": "localhost/busybox:latest", "imagePullPolicy": "Never",
                "command": ["/bin/sleep", "3600"]}]}),
        ),
        Some("inajob"),
    )
    .await;
    let slow = wait_for("slowstart restarted", 30, async || {
        pods.get_opt("slowstart")
            .await
            .ok()
            .flatten()
            .filter(|p| restarts(p) >= 1)
    })
    .await;
    let cs = &slow
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("cs")[0];
    assert!(!cs.ready && cs.started != Some(true), "{cs:?}");
    let unhealthy = messages("slowstart", "Unhealthy").await;
    assert!(
        unhealthy
            .iter()
            .any(|m| m.starts_with("Startup probe failed")),
        "{unhealthy:?}"
    );
    wait_phase(&pods, "stubborn", "Running", 20).await;
    let t = Instant::now();
    pods.delete("stubborn", &Default::default())
        .await
        .expect("delete");
    wait_for("stubborn deleted", 20, async || {
        pods.get_opt("stubborn")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    // busybox sleep as PID 1 ignores SIGTERM: SIGKILL after the 2 s.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    env.remove_pod("slowstart").await;

    // `pod-runner delete` typed beside the daemon: the pod ends finished
    // in the API (the one-shot command's meaning) and the daemon does
    // not start it again.
    env.create_pod_object(web_pod("typed"), Some("inajob"))
        .await;
    wait_phase(&pods, "typed", "Running", 20).await;
    let out = env.pod_runner(&["delete", "typed"]);
    assert!(out.status.success(), "{}", text(&out));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let typed = pods.get("typed").await.expect("typed");
    assert!(
        matches!(phase(&typed).as_str(), "Succeeded" | "Failed"),
        "{:?}",
        typed.status
    );
    let out = env.pod_runner(&["status", "typed"]);
    assert_eq!(out.status.code(), Some(3), "started again: {}", text(&out));
    env.remove_pod("typed").await;

    // A dead sandbox is made again, as the kubelet does.
    let sandbox = pod_runner::state::Store::new(&env.state_dir())
        .load("default", "web-002")
        .expect("record")
        .expect("web-002 runs")
        .sandbox_id;
    env.ctrd
        .ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &sandbox]);
    wait_for("web-002 running again in a new sandbox", 20, async || {
        let p = env.pod("web-002").await?;
        let fresh = container_id(&p).is_some_and(|c| c != id);
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        (fresh && ready && phase(&p) == "Running").then_some(())
    })
    .await;
    let ip = env
        .pod("web-002")
        .await
        .and_then(|p| p.status?.pod_ip)
        .expect("podIP");
    let answer = testbed::http::get(&env.node().ns, format!("{ip}:8080").parse().expect("addr"));
    assert!(answer.ends_with("\nweb-002\n"), "{answer}");

    // SIGTERM leaves the pods running too.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let out = env.pod_runner(&["status", "web-002", "-o", "json"]);
    assert!(
        common::stdout(&out).contains("\"running\""),
        "{}",
        text(&out)
    );
    let mut daemon = Daemon::start(&env);

    // What happened, as `kubectl describe pod` shows it.
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(env.admin().await, "default");
    let reasons: Vec<(String, String)> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| {
            (
                e.involved_object.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
            )
        })
        .collect();
    for (pod, reason) in [
        ("web-002", "Pulled"),
        ("web-002", "Created"),
        ("web-002", "Started"),
        ("web-002", "SandboxChanged"),
        ("noimage", "Failed"),
        ("noimage", "BackOff"),
        ("hostnet", "Unsupported"),
    ] {
        assert!(
            reasons.iter().any(|(p, r)| p == pod && r == reason),
            "no {reason} event for {pod}: {reasons:?}"
        );
    }

    // kubectl delete: stopped within its grace period by the daemon,
    // which makes the final delete.
    let t = Instant::now();
    for n in ["web-002", "once", "noimage", "hostnet", "badvolume"] {
        pods.delete(n, &Default::default()).await.expect("delete");
    }
    wait_for("pods deleted by the daemon", 30, async || {
        let l = pods.list(&Default::default()).await.expect("list");
        l.items.is_empty().then_some(())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "took {:?}",
        t.elapsed()
    );
    let killing = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .any(|e| {
            e.involved_object.name.as_deref() == Some("web-002")
                && e.reason.as_deref() == Some("Killing")
        });
    assert!(killing, "no Killing event for web-002");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    env.assert_clean();
}
