//! Acceptance tests of `pod-runner run`, the daemon: the real control
//! plane with kube-controller-manager and kube-scheduler, the tutorial's
//! two emulated nodes, each with a private containerd, our CNI plugins,
//! node-sync and the daemon with the node's own identity (see
//! `daemon_cluster`). Two clusters, one per test, run side by side:
//!
//! - `replicaset_service_scale_delete_and_adoption`: the tutorial's
//!   ReplicaSet and Service with no manual step (pods Running on both
//!   nodes, the ClusterIP round-robin), `kubectl delete pod` (a
//!   replacement, the old pod's containers stopped within its grace
//!   period, its API object gone), `kubectl scale` to 4 then 1 (nothing of
//!   the removed pods left), and the daemon SIGKILLed and started again
//!   (the same containers keep running, the status does not flap).
//! - `crash_loop_probes_and_completion`: a crash-looping pod (restarts
//!   with the kubelet's back-off, 10 s then 20 s, CrashLoopBackOff),
//!   readiness (Ready False, out of the EndpointSlice and of the
//!   ClusterIP's answers) and liveness (a restart) probes, and a
//!   `restartPolicy: Never` pod that completes (Succeeded).
//!
//! Each test ends with every pod deleted through the API and no leftovers
//! on its nodes.

mod daemon_cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon_cluster::{DaemonCluster, NODES};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn ip_of(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

fn ready(p: &Pod) -> bool {
    condition(p, "Ready").as_deref() == Some("True")
}

fn deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_ready(p: &Pod) -> bool {
    phase(p) == "Running" && ready(p) && !ip_of(p).is_empty() && !deleting(p)
}

fn container(p: &Pod) -> Option<ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn container_id(p: &Pod) -> String {
    container(p)
        .and_then(|c| c.container_id)
        .unwrap_or_default()
}

fn restarts(p: &Pod) -> i32 {
    container(p).map(|c| c.restart_count).unwrap_or(0)
}

fn is_running(p: &Pod) -> bool {
    container(p)
        .and_then(|c| c.state)
        .is_some_and(|s| s.running.is_some())
}

/// One line per pod: name, node, phase, Ready, IP, restarts.
fn summary(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{} on {:?} {} Ready={:?} ip={} restarts={}{}",
                name(p),
                node_of(p),
                phase(p),
                condition(p, "Ready"),
                ip_of(p),
                restarts(p),
                if deleting(p) { " (terminating)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

/// The addresses of the ready endpoints in the Service's EndpointSlices.
fn ready_endpoints(c: &DaemonCluster, service: &str) -> Result<BTreeSet<String>, String> {
    let slices: Api<EndpointSlice> = Api::namespaced(c.admin(), "default");
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = c.block_on(slices.list(&lp)).map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect())
}

/// Waits until node-sync's rules on `node` send the Service to exactly
/// these pod IPs (`<ip>:8080` in a dnat), of all `ips` known.
fn wait_rules(c: &DaemonCluster, node: &str, want: &[&str], not: &[&str]) {
    c.wait(
        &format!("{node}'s rules to {want:?}, not {not:?}"),
        30,
        || {
            let rules = c.service_rules(node);
            let has = |ip: &str| rules.contains(&format!("{ip}:8080"));
            if want.iter().all(|ip| has(ip)) && !not.iter().any(|ip| has(ip)) {
                Ok(())
            } else {
                Err(rules)
            }
        },
    );
}

/// `n` requests to `vip` from `node`: the bodies, in order.
fn ask(c: &DaemonCluster, node: &str, vip: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| c.get(node, vip, "/").1).collect()
}

/// Creates `pod` (a JSON Pod) as the admin.
fn create(c: &DaemonCluster, pod: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    let made = c
        .block_on(c.pods().create(&PostParams::default(), &pod))
        .unwrap_or_else(|e| panic!("create pod {:?}: {e}", pod.metadata.name));
    c.note(&made);
    made
}

/// A pod of the web image bound to `node` through spec.nodeName.
fn web_pod(
    name: &str,
    node: &str,
    labels: serde_json::Value,
    container: serde_json::Value,
) -> serde_json::Value {
    let mut ctr = json!({"name": "web", "image": "localhost/web:latest",
        "ports": [{"containerPort": 8080, "protocol": "TCP"}]});
    if let (Some(m), Some(extra)) = (ctr.as_object_mut(), container.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [ctr]}
    })
}

/// One observation of a pod while the daemon is killed and restarted.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    at: Duration,
    name: String,
    container_id: String,
    restarts: i32,
    ready: bool,
}

#[test]
fn replicaset_service_scale_delete_and_adoption() {
    let c = DaemonCluster::start("dma");
    let t0 = Instant::now();

    // 1. The tutorial's ReplicaSet and Service, applied as the admin: the
    //    controller makes the pods, the scheduler binds them, the daemons
    //    run them, with no manual step. The scheduler may put both pods on
    //    one node (its view of the second node's readiness can lag), so a
    //    hard spread over hostnames makes it one on each.
    let mut rs: serde_json::Value = testbed::testdata::load_one("replicaset-web.yaml");
    rs["spec"]["template"]["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}
    }]);
    let rs_file = c.write_file("replicaset-web.json", &rs.to_string());
    let d = testbed::testdata::dir();
    c.kubectl(&[
        "apply",
        "-f",
        &rs_file.to_string_lossy(),
        "-f",
        &d.join("service-web.yaml").to_string_lossy(),
    ]);
    let pods = c.wait("two web pods Running and Ready", 90, || {
        let list = c.list("app=web");
        let up: Vec<Pod> = list.iter().filter(|p| running_ready(p)).cloned().collect();
        if up.len() == 2 && list.len() == 2 {
            Ok(up)
        } else {
            Err(summary(&list))
        }
    });
    eprintln!(
        "[dma] 1. ReplicaSet up after {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        summary(&pods)
    );
    let on: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(
        on,
        BTreeSet::from(["inajob".to_string(), "yuanying".to_string()]),
        "one pod on each node: {}",
        summary(&pods)
    );
    for p in &pods {
        let (_, node_ip, cidr) = NODES
            .iter()
            .find(|n| n.0 == node_of(p))
            .copied()
            .expect("node");
        let prefix = cidr.trim_end_matches("0/24");
        assert!(ip_of(p).starts_with(prefix), "{}: {}", name(p), ip_of(p));
        let st = p.status.clone().unwrap_or_default();
        assert_eq!(st.host_ip.as_deref(), Some(node_ip), "{} hostIP", name(p));
        let cs = container(p).expect("containerStatuses");
        assert_eq!(cs.restart_count, 0);
        assert!(cs.ready);
        assert!(
            cs.container_id
                .as_deref()
                .is_some_and(|i| i.starts_with("containerd://")),
            "{cs:?}"
        );
        c.assert_present(&node_of(p), &uid(p), &ip_of(p));
        // The pod answers its name on its IP, from the other node.
        let other = if node_of(p) == "inajob" {
            "yuanying"
        } else {
            "inajob"
        };
        assert_eq!(c.get(other, addr(&ip_of(p), 8080), "/").1, name(p));
    }
    let ips: Vec<String> = pods.iter().map(ip_of).collect();
    c.wait("both pods ready in web-service's EndpointSlice", 30, || {
        let got = ready_endpoints(&c, "web-service")?;
        if ips.iter().all(|ip| got.contains(ip)) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    wait_rules(&c, "inajob", &ip_refs, &[]);
    let vip: SocketAddr = "10.254.10.128:80".parse().expect("vip");
    let got = ask(&c, "inajob", vip, 4);
    let mut want: Vec<String> = pods.iter().flat_map(|p| [name(p), name(p)]).collect();
    want.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "4 requests to {vip}: {got:?}");
    assert!(
        got[0] != got[1] && got[0] == got[2] && got[1] == got[3],
        "round-robin: {got:?}"
    );
    for p in &pods {
        c.wait_events(&name(p), &["Started"]);
    }

    // 3. `kubectl delete pod`: a replacement comes; the old pod's
    //    containers stop well within its grace period (web exits on
    //    SIGTERM) and its API object goes (the daemon's final DELETE).
    let old = pods
        .iter()
        .find(|p| node_of(p) == "yuanying")
        .cloned()
        .expect("a pod on yuanying");
    let (old_name, old_node) = (name(&old), node_of(&old));
    let old_uid: BTreeMap<String, String> = BTreeMap::from([(uid(&old), old_name.clone())]);
    let old_ctrs = c.containers_of(&old_node, &uid(&old));
    assert_eq!(
        old_ctrs.len(),
        2,
        "sandbox and web of {old_name}: {old_ctrs:?}"
    );
    let t_del = Instant::now();
    c.kubectl(&["delete", "pod", &old_name, "--wait=false"]);
    let stopped = c.wait("the old pod's tasks gone", 30, || {
        let tasks = c.task_pids(&old_node);
        let left: Vec<&String> = old_ctrs.iter().filter(|i| tasks.contains_key(*i)).collect();
        if left.is_empty() {
            Ok(t_del.elapsed())
        } else {
            Err(format!("tasks {left:?}"))
        }
    });
    let gone = c.wait("the old pod's API object gone", 35, || {
        match c.pod(&old_name) {
            None => Ok(t_del.elapsed()),
            Some(p) => Err(format!(
                "{} deletionTimestamp {:?}",
                summary(std::slice::from_ref(&p)),
                p.metadata.deletion_timestamp
            )),
        }
    });
    eprintln!(
        "[dma] 3. {old_name} deleted: tasks stopped after {:.1} s, API object gone after {:.1} s",
        stopped.as_secs_f64(),
        gone.as_secs_f64()
    );
    // web exits on SIGTERM at once: seconds, not the 30 s grace period.
    assert!(
        stopped < Duration::from_secs(10),
        "containers stopped after {stopped:?}"
    );
    let pods = c.wait("a replacement Running and Ready", 60, || {
        let list = c.list("app=web");
        let up: Vec<Pod> = list.iter().filter(|p| running_ready(p)).cloned().collect();
        if up.len() == 2 && list.len() == 2 && up.iter().all(|p| name(p) != old_name) {
            Ok(up)
        } else {
            Err(summary(&list))
        }
    });
    eprintln!("[dma] 3. replacement: {}", summary(&pods));
    c.wait_events(&old_name, &["Killing"]);
    c.wait("nothing left of the deleted pod", 15, || {
        let left = c.leftovers_of(&old_node, &old_uid);
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    });

    // 2. `kubectl scale` to 4, then to 1: pods come and go, and nothing of
    //    the removed ones is left on either node.
    c.kubectl(&["scale", "rs", "web", "--replicas=4"]);
    let four = c.wait("four web pods Running and Ready", 60, || {
        let list = c.list("app=web");
        let up: Vec<Pod> = list.iter().filter(|p| running_ready(p)).cloned().collect();
        if up.len() == 4 && list.len() == 4 {
            Ok(up)
        } else {
            Err(summary(&list))
        }
    });
    eprintln!("[dma] 2. scaled to 4: {}", summary(&four));
    for p in &four {
        c.assert_present(&node_of(p), &uid(p), &ip_of(p));
    }
    c.kubectl(&["scale", "rs", "web", "--replicas=1"]);
    let one = c.wait("one web pod left in the API", 60, || {
        let list = c.list("app=web");
        if list.len() == 1 && running_ready(&list[0]) {
            Ok(list[0].clone())
        } else {
            Err(summary(&list))
        }
    });
    eprintln!(
        "[dma] 2. scaled to 1: {}",
        summary(std::slice::from_ref(&one))
    );
    let removed: BTreeMap<String, String> = c
        .seen()
        .into_iter()
        .filter(|(u, _)| *u != uid(&one))
        .collect();
    assert!(removed.len() >= 4, "pods seen: {removed:?}");
    c.wait("nothing left of the removed pods", 20, || {
        let left: Vec<String> = NODES
            .iter()
            .flat_map(|(n, ..)| c.leftovers_of(n, &removed))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    });
    // And nothing besides the remaining pod: its containers, tasks, lease
    // and veth alone.
    for (node, ..) in NODES {
        let mine = node_of(&one) == node;
        let ctrs: BTreeSet<String> = c
            .containerd(node)
            .ctr_ok(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect();
        let want: BTreeSet<String> = if mine {
            c.containers_of(node, &uid(&one)).into_iter().collect()
        } else {
            BTreeSet::new()
        };
        assert_eq!(ctrs, want, "containers on {node}");
        assert_eq!(
            c.task_pids(node).keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "tasks on {node}"
        );
        let leases: Vec<String> = c.ip_leases(node).into_keys().collect();
        let want_leases = if mine { vec![ip_of(&one)] } else { vec![] };
        assert_eq!(leases, want_leases, "IP leases on {node}");
        assert_eq!(
            c.veths(node).len(),
            usize::from(mine),
            "pod veths on {node}: {:?}",
            c.veths(node)
        );
    }

    // 7. The daemon SIGKILLed while its pod runs, then started again: the
    //    same containers keep running (same task PIDs) and the pod's
    //    status does not flap.
    let node = node_of(&one);
    let before = c.task_pids(&node);
    assert_eq!(before.len(), 2, "sandbox and web tasks: {before:?}");
    let cid = container_id(&one);
    let rc = restarts(&one);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watch_start = Instant::now();
    let watcher = {
        let pods = c.pods();
        let seen = seen.clone();
        let stop = stop.clone();
        let rv = c
            .block_on(pods.list(&ListParams::default().labels("app=web")))
            .expect("list")
            .metadata
            .resource_version
            .unwrap_or_default();
        std::thread::spawn({
            let handle = c.runtime_handle();
            move || {
                handle.block_on(async move {
                    let wp = WatchParams::default().labels("app=web").timeout(60);
                    let mut s = pods.watch(&wp, &rv).await.expect("watch").boxed();
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(Some(ev)) =
                            tokio::time::timeout(Duration::from_millis(200), s.next()).await
                        else {
                            continue;
                        };
                        let p = match ev {
                            Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => p,
                            Ok(WatchEvent::Deleted(p)) => {
                                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                                seen.push(Seen {
                                    at: watch_start.elapsed(),
                                    name: format!("{} DELETED", name(&p)),
                                    container_id: container_id(&p),
                                    restarts: restarts(&p),
                                    ready: ready(&p),
                                });
                                continue;
                            }
                            _ => continue,
                        };
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                            at: watch_start.elapsed(),
                            name: name(&p),
                            container_id: container_id(&p),
                            restarts: restarts(&p),
                            ready: ready(&p),
                        });
                    }
                })
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    c.kill_daemon(&node);
    let killed_at = watch_start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.task_pids(&node),
        before,
        "the pod's tasks while no daemon runs"
    );
    c.start_daemon(&node);
    let restarted_at = watch_start.elapsed();
    std::thread::sleep(Duration::from_secs(6));
    assert!(c.daemon_running(&node), "the restarted daemon exited");
    // The watch was live all along: it sees a change made now (an
    // annotation, which leaves the status alone).
    c.kubectl(&["annotate", "pod", &name(&one), "daemon-test/watched=yes"]);
    c.wait("the watch to see the annotation", 10, || {
        if seen.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            Err("nothing seen".to_string())
        } else {
            Ok(())
        }
    });
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!(
        "[dma] 7. daemon on {node} killed at {killed_at:?}, restarted at {restarted_at:?}; {} pod events seen: {seen:?}",
        seen.len()
    );
    let after = c.task_pids(&node);
    assert_eq!(
        after, before,
        "the same containers and PIDs after the restart"
    );
    let flaps: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.name != name(&one) || !s.ready || s.container_id != cid || s.restarts != rc)
        .collect();
    assert!(
        flaps.is_empty(),
        "the pod's status changed across the restart (want {} Ready, {cid}, restarts {rc}): {flaps:?}\n{}",
        name(&one),
        c.daemon_logs(40)
    );
    let now = c.pod(&name(&one)).expect("the pod");
    assert!(
        running_ready(&now),
        "{}",
        summary(std::slice::from_ref(&now))
    );
    assert_eq!(container_id(&now), cid);
    assert_eq!(
        c.get(&node, addr(&ip_of(&now), 8080), "/").1,
        name(&now),
        "the adopted pod answers"
    );

    // The end: the restarted daemon removes its adopted pod too.
    c.finish();
    eprintln!("[dma] done in {:.1} s", t0.elapsed().as_secs_f64());
}

/// What the crash-looping pod's status showed, polled every 100 ms.
#[derive(Debug, Default)]
struct CrashLog {
    /// When each restartCount was first seen.
    counts: BTreeMap<i32, Duration>,
    /// The same, in wall-clock time.
    count_walls: BTreeMap<i32, std::time::SystemTime>,
    /// The runs' (startedAt, finishedAt, exitCode) from the terminated
    /// states seen.
    runs: BTreeSet<(String, String, i32)>,
    waiting_reasons: BTreeSet<String>,
    last: Option<ContainerStatus>,
    phases: BTreeSet<String>,
}

fn watch_crash(c: &DaemonCluster, name: &str, until: impl Fn(&CrashLog) -> bool) -> CrashLog {
    let t = Instant::now();
    let mut log = CrashLog::default();
    while t.elapsed() < Duration::from_secs(120) && !until(&log) {
        if let Some(p) = c.pod(name) {
            log.phases.insert(phase(&p));
            if let Some(cs) = container(&p) {
                log.counts.entry(cs.restart_count).or_insert(t.elapsed());
                log.count_walls
                    .entry(cs.restart_count)
                    .or_insert_with(std::time::SystemTime::now);
                let state = cs.state.clone().unwrap_or_default();
                if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
                    log.waiting_reasons.insert(w);
                }
                let last = cs.last_state.clone().unwrap_or_default();
                for term in [state.terminated, last.terminated].into_iter().flatten() {
                    log.runs.insert((
                        term.started_at.map(|t| t.0.to_string()).unwrap_or_default(),
                        term.finished_at
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        term.exit_code,
                    ));
                }
                log.last = Some(cs);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log
}

#[test]
fn crash_loop_probes_and_completion() {
    let c = DaemonCluster::start("dmb");
    let t0 = Instant::now();

    // 4. A crash loop: restartPolicy Always, `web exit 1`.
    create(
        &c,
        web_pod(
            "crash",
            "inajob",
            json!({"app": "crash"}),
            json!({"command": ["/web", "exit", "1"]}),
        ),
    );
    // 6. A pod that completes: restartPolicy Never, `web exit 0`.
    let mut done = web_pod(
        "done",
        "yuanying",
        json!({"app": "done"}),
        json!({"command": ["/web", "exit", "0"]}),
    );
    done["spec"]["restartPolicy"] = json!("Never");
    create(&c, done);
    // 5. Readiness: two pods behind a Service, one per node.
    let readiness = json!({"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
        "periodSeconds": 1, "failureThreshold": 1}});
    for (pod, node) in [("probe-a", "inajob"), ("probe-b", "yuanying")] {
        create(
            &c,
            web_pod(pod, node, json!({"app": "probe"}), readiness.clone()),
        );
    }
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"clusterIP": "10.254.10.129", "selector": {"app": "probe"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("service");
    let services: Api<Service> = Api::namespaced(c.admin(), "default");
    c.block_on(services.create(&PostParams::default(), &svc))
        .expect("create Service probe");
    // 5. Liveness.
    create(
        &c,
        web_pod(
            "live",
            "yuanying",
            json!({"app": "live"}),
            // The delay: a probe of the new container before its server
            // listens would fail, and with a threshold of 1 restart it
            // again (as the kubelet would).
            json!({"livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1}}),
        ),
    );

    std::thread::scope(|s| {
        // The crash loop is watched on its own while the rest goes on.
        let crash = s.spawn(|| {
            let t = Instant::now();
            watch_crash(&c, "crash", |l| {
                // Watched 3 s past the third restart: the status then.
                l.counts
                    .get(&3)
                    .is_some_and(|at| t.elapsed() > *at + Duration::from_secs(3))
                    && l.waiting_reasons.contains("CrashLoopBackOff")
                    && l.last.as_ref().is_some_and(|cs| {
                        cs.last_state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some()
                    })
            })
        });

        // 6. Succeeded, terminated Completed with exit code 0.
        let done = c.wait("done Succeeded", 60, || {
            let p = c.pod("done").ok_or("no pod done")?;
            if phase(&p) == "Succeeded" {
                Ok(p)
            } else {
                Err(format!(
                    "{} {:?}",
                    summary(std::slice::from_ref(&p)),
                    container(&p)
                ))
            }
        });
        let cs = container(&done).expect("containerStatuses of done");
        let term = cs
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .unwrap_or_else(|| panic!("done not terminated: {cs:?}"));
        assert_eq!(term.exit_code, 0, "{term:?}");
        assert_eq!(term.reason.as_deref(), Some("Completed"), "{term:?}");
        assert_eq!(cs.restart_count, 0, "restartPolicy Never: {cs:?}");
        eprintln!(
            "[dmb] 6. done Succeeded after {:.1} s: {term:?}",
            t0.elapsed().as_secs_f64()
        );

        // 5. Readiness: both ready, in the EndpointSlice and behind the
        //    ClusterIP; then probe-a unready: Ready False, out of both.
        let probes = c.wait("probe-a and probe-b Running and Ready", 60, || {
            let list = c.list("app=probe");
            let up: Vec<Pod> = list.iter().filter(|p| running_ready(p)).cloned().collect();
            if up.len() == 2 {
                Ok(up)
            } else {
                Err(summary(&list))
            }
        });
        let ip = |n: &str| ip_of(probes.iter().find(|p| name(p) == n).expect("probe pod"));
        let (ip_a, ip_b) = (ip("probe-a"), ip("probe-b"));
        c.wait("both probe pods in the EndpointSlice", 30, || {
            let got = ready_endpoints(&c, "probe")?;
            if got.contains(&ip_a) && got.contains(&ip_b) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
        wait_rules(&c, "inajob", &[&ip_a, &ip_b], &[]);
        let vip: SocketAddr = "10.254.10.129:80".parse().expect("vip");
        let mut got = ask(&c, "inajob", vip, 4);
        got.sort();
        assert_eq!(
            got,
            ["probe-a", "probe-a", "probe-b", "probe-b"],
            "both behind {vip}"
        );
        let (code, _) = c.get("inajob", addr(&ip_a, 8080), "/unready");
        assert_eq!(code, 200, "GET /unready");
        let t_unready = Instant::now();
        let a = c.wait("probe-a Ready False", 15, || {
            let p = c.pod("probe-a").ok_or("no probe-a")?;
            if condition(&p, "Ready").as_deref() == Some("False") {
                Ok(p)
            } else {
                Err(summary(&[p]))
            }
        });
        eprintln!(
            "[dmb] 5. probe-a Ready False {:.1} s after /unready",
            t_unready.elapsed().as_secs_f64()
        );
        let cs = container(&a).expect("containerStatuses of probe-a");
        assert!(!cs.ready, "{cs:?}");
        assert!(is_running(&a), "unready, not stopped: {cs:?}");
        assert_eq!(cs.restart_count, 0, "{cs:?}");
        assert_eq!(phase(&a), "Running");
        c.wait(
            "probe-a out of the EndpointSlice's ready endpoints",
            30,
            || {
                let got = ready_endpoints(&c, "probe")?;
                if !got.contains(&ip_a) && got.contains(&ip_b) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        );
        wait_rules(&c, "inajob", &[&ip_b], &[&ip_a]);
        let got = ask(&c, "inajob", vip, 6);
        assert!(
            got.iter().all(|b| b == "probe-b"),
            "{vip} after probe-a went unready: {got:?}"
        );
        c.wait_events("probe-a", &["Unhealthy"]);

        // 5. Liveness: /sick, then a restart in a new container.
        let live = c.wait("live Running and Ready", 60, || {
            let p = c.pod("live").ok_or("no live")?;
            if running_ready(&p) {
                Ok(p)
            } else {
                Err(summary(&[p]))
            }
        });
        let first = container_id(&live);
        assert_eq!(restarts(&live), 0);
        let (code, _) = c.get("yuanying", addr(&ip_of(&live), 8080), "/sick");
        assert_eq!(code, 200, "GET /sick");
        let t_sick = Instant::now();
        let live = c.wait("live restarted in a new container", 40, || {
            let p = c.pod("live").ok_or("no live")?;
            if restarts(&p) >= 1 && is_running(&p) && container_id(&p) != first {
                Ok(p)
            } else {
                Err(format!(
                    "{} {:?}",
                    summary(std::slice::from_ref(&p)),
                    container(&p)
                ))
            }
        });
        eprintln!(
            "[dmb] 5. live restarted {:.1} s after /sick: {}",
            t_sick.elapsed().as_secs_f64(),
            summary(std::slice::from_ref(&live))
        );
        assert_eq!(restarts(&live), 1, "{:?}", container(&live));
        // The new process is healthy: it stays up.
        std::thread::sleep(Duration::from_secs(3));
        let live = c.pod("live").expect("live");
        assert_eq!(restarts(&live), 1, "{:?}", container(&live));
        assert!(is_running(&live));
        assert_eq!(
            c.get("yuanying", addr(&ip_of(&live), 8080), "/healthz").0,
            200
        );
        c.wait_events("live", &["Unhealthy", "Killing"]);

        // 4. The crash loop's verdict.
        let log = crash.join().expect("crash watcher");
        eprintln!("[dmb] 4. crash: {log:?}");
        let max = log.counts.keys().max().copied().unwrap_or(0);
        assert!(max >= 3, "restartCount climbed to {max} only: {log:?}");
        assert!(
            log.waiting_reasons.contains("CrashLoopBackOff"),
            "no CrashLoopBackOff: {log:?}"
        );
        let last = log
            .last
            .as_ref()
            .and_then(|cs| cs.last_state.as_ref())
            .and_then(|s| s.terminated.clone())
            .unwrap_or_else(|| panic!("no lastState.terminated: {log:?}"));
        assert_eq!(last.exit_code, 1, "{last:?}");
        // The back-off: the first restart at once (the kubelet) or after
        // 10 s, then 10 s doubling: about 10 s, then 20 s between the
        // times the restart counts appeared (the first gap, from the
        // first status, includes the pod's creation).
        let times: Vec<f64> = (0..=max)
            .filter_map(|k| log.counts.get(&k).map(Duration::as_secs_f64))
            .collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let first_long = gaps
            .iter()
            .position(|g| *g >= 5.0)
            .unwrap_or_else(|| panic!("no back-off between restarts: gaps {gaps:?}"));
        assert!(first_long <= 1, "restarts without back-off: gaps {gaps:?}");
        assert!(
            gaps.len() > first_long + 1,
            "one back-off seen only: gaps {gaps:?}"
        );
        let (b1, b2) = (gaps[first_long], gaps[first_long + 1]);
        eprintln!("[dmb] 4. gaps between restart counts: {gaps:?}");
        assert!(
            (b1 - 10.0).abs() <= 3.0,
            "first back-off {b1:.1} s: {gaps:?}"
        );
        assert!(
            (b2 - 20.0).abs() <= 3.0,
            "second back-off {b2:.1} s: {gaps:?}"
        );
        c.wait_events("crash", &["Started", "BackOff"]);
        // As the kubelet shows a crash loop: waiting in CrashLoopBackOff,
        // and lastState the run that just failed, the one restartCount
        // counts (it started when that count appeared), not the one
        // before.
        let cs = log.last.clone().unwrap_or_default();
        let waiting = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        assert_eq!(waiting.as_deref(), Some("CrashLoopBackOff"), "{cs:?}");
        let counted = log.count_walls[&cs.restart_count];
        let started: std::time::SystemTime = last
            .started_at
            .as_ref()
            .map(|t| t.0.into())
            .unwrap_or(std::time::UNIX_EPOCH);
        let lag = counted
            .duration_since(started)
            .unwrap_or_default()
            .as_secs_f64();
        assert!(
            lag <= 2.0,
            "restartCount {} appeared at {counted:?}, but lastState.terminated is a run started \
             {lag:.1} s before it ({last:?}): the latest failed run is not shown",
            cs.restart_count
        );
    });

    // Succeeded pods are deleted like the others; the Service goes too.
    c.block_on(services.delete("probe", &Default::default()))
        .expect("delete Service probe");
    c.finish();
    eprintln!("[dmb] done in {:.1} s", t0.elapsed().as_secs_f64());
}
