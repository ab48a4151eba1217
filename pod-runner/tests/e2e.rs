//! pod-runner end to end on an emulated node against a real control
//! plane: web-002 from testdata runs through a private containerd and our
//! CNI plugins, answers on its pod IP, logs, reports its status to the
//! API with the node's own identity, and a delete leaves nothing.

mod common;

use common::{Env, stdout, text};

#[tokio::test(flavor = "multi_thread")]
async fn web_002_runs_reports_and_goes() {
    let env = Env::new("pre2e");
    let made = env.create_pod("pod-web-002.yaml", Some("inajob")).await;
    let uid = made.metadata.uid.clone().expect("uid");

    // What admission added: the service-account token volume, mounted
    // into the container, which pod-runner says it skips.
    let token = made
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.projected.is_some()))
        .map(|v| v.name.clone())
        .expect("the token volume admission adds");
    assert!(token.starts_with("kube-api-access-"), "{token}");

    let out = env.pod_runner(&["create", "web-002"]);
    assert!(out.status.success(), "create: {}", text(&out));
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        warned.contains(&format!("volume \"{token}\": only emptyDir and hostPath")),
        "{warned}"
    );

    let pod = env.pod("web-002").await.expect("pod");
    // Written by pod-runner's field manager, on the status subresource.
    let managers = pod.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("pod-runner")
                && m.subresource.as_deref() == Some("status")),
        "{managers:?}"
    );
    let st = pod.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let ip = st.pod_ip.clone().expect("podIP");
    assert!(ip.starts_with("10.244.1."), "{ip}");
    let ips: Vec<String> = st.pod_ips.iter().flatten().map(|i| i.ip.clone()).collect();
    assert_eq!(ips, [ip.as_str()]);
    // No --node-ip: the Node's InternalIP, read with the node's identity.
    assert_eq!(st.host_ip.as_deref(), Some("192.168.43.111"));
    assert!(st.start_time.is_some());
    let cs = st.container_statuses.expect("containerStatuses");
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].name, "web");
    assert!(cs[0].ready);
    assert_eq!(cs[0].restart_count, 0);
    assert!(
        cs[0]
            .container_id
            .as_deref()
            .is_some_and(|i| i.starts_with("containerd://"))
    );
    assert!(cs[0].image_id.contains("@sha256:"), "{}", cs[0].image_id);
    assert!(
        cs[0]
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some()
    );
    let conds = st.conditions.expect("conditions");
    for t in [
        "PodScheduled",
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert!(
            conds.iter().any(|c| c.type_ == t && c.status == "True"),
            "{t} not True: {conds:?}"
        );
    }

    // It serves its hostname on the pod IP, from the node.
    let answer = testbed::http::get(&env.node().ns, format!("{ip}:8080").parse().expect("addr"));
    assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    assert!(answer.ends_with("\nweb-002\n"), "{answer}");

    // Kubelet-style labels in containerd, the pinned netns exists.
    let ctrs = env.ctrd.ctr_ok(&["containers", "ls"]);
    assert_eq!(ctrs.lines().count(), 3, "{ctrs}");
    let info = env.ctrd.ctr_ok(&[
        "containers",
        "info",
        cs[0]
            .container_id
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("containerd://"),
    ]);
    assert!(
        info.contains("\"io.kubernetes.pod.name\": \"web-002\""),
        "{info}"
    );
    assert!(
        info.contains("\"io.kubernetes.container.name\": \"web\""),
        "{info}"
    );
    assert!(
        !info.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "the skipped token volume is mounted: {info}"
    );
    assert!(Env::netns_of(&uid).exists());
    // One runc shim serves the whole pod (the CRI sandbox-id annotation).
    let sock = env.ctrd.socket().display().to_string();
    let shims = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("/usr/bin/containerd-shim-runc-v2") && c.contains(&sock))
        .count();
    assert_eq!(shims, 1, "shims for one pod");

    // logs: the server's own output.
    let logs = env.pod_runner(&["logs", "web-002"]);
    assert!(logs.status.success(), "{}", text(&logs));
    let l = stdout(&logs);
    assert!(l.contains("web: listening on :8080 as web-002"), "{l}");
    assert!(l.contains("web: request from 10.244.1.1:"), "{l}");
    let raw = std::fs::read_to_string(
        env.log_dir()
            .join(format!("default_web-002_{uid}"))
            .join("web/0.log"),
    )
    .expect("CRI log file");
    assert!(
        raw.lines()
            .all(|line| line.contains(" stdout F ") || line.contains(" stderr F ")),
        "{raw}"
    );

    // list and status, as JSON.
    let list = env.pod_runner(&["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(v[0]["name"], "web-002");
    assert_eq!(v[0]["phase"], "Running");
    assert_eq!(v[0]["podIPs"][0], ip.as_str());
    let status = env.pod_runner(&["status", "web-002", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["containers"][0]["state"], "running");

    // A second create changes nothing.
    let again = env.pod_runner(&["create", "web-002"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        stdout(&again).contains("already running"),
        "{}",
        text(&again)
    );
    let pod2 = env.pod("web-002").await.expect("pod");
    assert_eq!(pod2.status.and_then(|s| s.pod_ip), Some(ip.clone()));

    // Its container gone, a create makes the pod again, with a new IP
    // (host-local moves on); the status the API keeps names that IP
    // alone: podIPs merge by ip, and a plain patch would add it.
    let app = cs[0]
        .container_id
        .as_deref()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_string();
    env.ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &app]);
    let t = std::time::Instant::now();
    while env
        .ctrd
        .ctr_ok(&["tasks", "ls"])
        .lines()
        .any(|l| l.starts_with(&app) && l.contains("RUNNING"))
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the task never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let again = env.pod_runner(&["create", "web-002"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(stdout(&again).contains("running, IP"), "{}", text(&again));
    let st = env
        .pod("web-002")
        .await
        .and_then(|p| p.status)
        .expect("status");
    let new_ip = st.pod_ip.clone().expect("podIP");
    assert_ne!(new_ip, ip, "host-local hands out the next IP");
    let ips: Vec<String> = st.pod_ips.iter().flatten().map(|i| i.ip.clone()).collect();
    assert_eq!(ips, [new_ip.as_str()], "podIPs after the new IP");
    assert_eq!(env.leases().len(), 1, "{:?}", env.leases());
    let answer = testbed::http::get(
        &env.node().ns,
        format!("{new_ip}:8080").parse().expect("addr"),
    );
    assert!(answer.ends_with("\nweb-002\n"), "{answer}");

    // delete: nothing left on the node; the API object stays, terminated.
    let del = env.pod_runner(&["delete", "web-002"]);
    assert!(del.status.success(), "delete: {}", text(&del));
    env.assert_clean();
    assert!(!Env::netns_of(&uid).exists(), "netns left");
    let pod = env.pod("web-002").await.expect("pod stays");
    let st = pod.status.expect("status");
    assert!(
        matches!(st.phase.as_deref(), Some("Failed") | Some("Succeeded")),
        "{:?}",
        st.phase
    );
    let cs = st.container_statuses.expect("cs");
    assert!(
        cs[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "{cs:?}"
    );
    assert!(!cs[0].ready);

    // A finished pod is not started again.
    let again = env.pod_runner(&["create", "web-002"]);
    assert_eq!(again.status.code(), Some(4), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has finished (phase "),
        "{}",
        text(&again)
    );
    env.assert_clean();

    // A second delete is a no-op.
    let del = env.pod_runner(&["delete", "web-002"]);
    assert!(del.status.success(), "{}", text(&del));
    assert!(stdout(&del).contains("nothing to do"), "{}", text(&del));
}
