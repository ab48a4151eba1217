//! node-sync on a real cluster without its RBAC: the node's own identity
//! may not list every Node, nor read Endpoints and EndpointSlices. The
//! refusal is one exact error, in `node-sync status`, in a gauge, in the
//! log once (however often the watchers retry) and in the Node's
//! NetworkUnavailable condition; the heartbeat, Ready and the Lease go on,
//! and Service rules programmed earlier stay as they are. The admin then
//! applies deploy/node-sync-rbac.yaml, and the routes and Services follow
//! without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Env, RBAC, condition, is_ready, renewed, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const FIX: &str = "kubectl apply -f deploy/node-sync-rbac.yaml (as a cluster admin)";

fn nodes_forbidden(verbs: &str, node: &str) -> String {
    format!(
        "{verbs} nodes at the cluster scope is forbidden for system:node:{node}; node-sync needs list and watch on nodes for the routes to other nodes' pods: {FIX}"
    )
}

fn services_forbidden(verbs: &str, resource: &str) -> String {
    format!(
        "{verbs} {resource} at the cluster scope is forbidden for system:node:inajob; node-sync needs list and watch on {resource} for ClusterIP Services: {FIX}"
    )
}

fn gauge(resource: &str, verb: &str, v: u8) -> String {
    format!("node_sync_api_forbidden{{resource=\"{resource}\",verb=\"{verb}\"}} {v}\n")
}

/// How many lines of the log hold `what`.
fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// A counter's value in Prometheus text, 0 when absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_rbac_the_error_is_exact_and_nothing_else_breaks() {
    let env = Env::new("nsr", false);
    let admin = env.admin().await;
    let pp = PostParams::default();
    Api::<Service>::namespaced(admin.clone(), "default")
        .create(&pp, &testbed::testdata::load_one("service-web.yaml"))
        .await
        .expect("service");
    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    endpoints
        .create(&pp, &testbed::testdata::load_one("endpoints-web.yaml"))
        .await
        .expect("endpoints");

    // The one-shot commands fail with the same error.
    let nft = ["--proxy-mode", "nftables"];
    let out = env.node_sync("inajob", &["routes", "--once"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("node-sync: {}\n", nodes_forbidden("list", "inajob"))
    );
    let out = env.node_sync(
        "inajob",
        &["--proxy-mode", "nftables", "services", "--once"],
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "node-sync: {}\n",
            services_forbidden("list", "endpointslices.discovery.k8s.io")
        )
    );

    // Rules a run with the admin's identity programmed: the daemon,
    // refused the endpoints, must leave them as they are, even though
    // the Endpoints have changed since.
    let admin_kc = env.dir.path().join("admin.kubeconfig");
    let out = env.node_sync_as(
        "inajob",
        &admin_kc,
        &["--proxy-mode", "nftables", "services", "--once"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both = Some(vec![
        "10.244.1.2:8080".to_string(),
        "10.244.2.2:8080".to_string(),
    ]);
    assert_eq!(common::endpoints_on(&env, "inajob"), both);
    let one = json!({"subsets": [{"addresses": [{"ip": "10.244.2.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
    endpoints
        .patch("web-service", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .expect("patch");
    let table = env.ns("inajob").sh("nft list table ip node-sync");

    let _a = env.start_with("inajob", &nft);
    let _b = env.start("yuanying");
    let nodes: Api<Node> = Api::all(admin.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    // NetworkUnavailable says why there are no routes.
    for name in ["inajob", "yuanying"] {
        let want = nodes_forbidden("list", name);
        wait_for(
            &format!("{name}'s NetworkUnavailable naming the refusal"),
            Duration::from_secs(10),
            || async {
                nodes
                    .get(name)
                    .await
                    .ok()
                    .and_then(|n| condition(&n, "NetworkUnavailable"))
                    .is_some_and(|c| {
                        c.status == "True"
                            && c.reason.as_deref() == Some("NodesForbidden")
                            && c.message.as_deref() == Some(want.as_str())
                    })
            },
        )
        .await;
    }
    // The Lease is renewed all the same. (The heartbeat patches the status
    // before it makes the Lease: the condition can be seen first.)
    wait_for("the Lease", Duration::from_secs(15), || async {
        renewed(&leases, "inajob").await.is_some()
    })
    .await;
    let first = renewed(&leases, "inajob").await.expect("lease");
    wait_for("a renewed Lease", Duration::from_secs(15), || async {
        renewed(&leases, "inajob").await.is_some_and(|t| t > first)
    })
    .await;

    // The watchers retry: several refusals each, before the log is read.
    wait_for(
        "refused watchers retrying",
        Duration::from_secs(30),
        || async {
            counter(
                &env.metrics("inajob"),
                "node_sync_errors_total{reconciler=\"watch\"}",
            ) >= 12.0
        },
    )
    .await;
    let metrics = env.metrics("inajob");
    for r in ["nodes", "endpoints", "endpointslices.discovery.k8s.io"] {
        assert!(metrics.contains(&gauge(r, "list", 1)), "{metrics}");
    }
    // Services are the Node authorizer's to give, and it does.
    assert!(!metrics.contains("resource=\"services\""), "{metrics}");
    let log = env.log("inajob");
    assert_eq!(
        lines_with(&log, &nodes_forbidden("list", "inajob")),
        1,
        "{log}"
    );
    for r in ["endpoints", "endpointslices.discovery.k8s.io"] {
        assert_eq!(lines_with(&log, &services_forbidden("list", r)), 1, "{log}");
    }
    assert_eq!(lines_with(&log, "forbidden"), 3, "{log}");
    let log_b = env.log("yuanying");
    assert_eq!(lines_with(&log_b, "forbidden"), 1, "{log_b}");
    assert_eq!(
        lines_with(&log_b, &nodes_forbidden("list", "yuanying")),
        1,
        "{log_b}"
    );

    // `status` asks the authorizer itself.
    let out = env.node_sync("inajob", &["--proxy-mode", "nftables", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout);
    eprintln!("node-sync status without the RBAC:\n{status}");
    let access: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("access "))
        .collect();
    assert_eq!(
        access,
        [
            format!("access      {}", nodes_forbidden("list/watch", "inajob")),
            "access      list/watch services: granted".to_string(),
            format!(
                "access      {}",
                services_forbidden("list/watch", "endpointslices.discovery.k8s.io")
            ),
            format!(
                "access      {}",
                services_forbidden("list/watch", "endpoints")
            ),
        ],
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "condition   NetworkUnavailable=True {}\n",
            nodes_forbidden("list", "inajob")
        )),
        "{status}"
    );
    assert!(status.contains("condition   Ready=True"), "{status}");

    // No routes, and the Service rules untouched.
    assert!(env.our_routes("inajob").is_empty());
    assert!(env.our_routes("yuanying").is_empty());
    assert_eq!(env.ns("inajob").sh("nft list table ip node-sync"), table);

    // The admin applies the RBAC: routes and Services follow, no restart.
    env.cp.kubectl(&["apply", "-f", RBAC]).expect("RBAC");
    let t = Instant::now();
    wait_for("routes after the RBAC", Duration::from_secs(45), || async {
        env.our_routes("inajob") == ["10.244.2.0/24 via 192.168.43.112 dev eth0"]
            && env.our_routes("yuanying") == ["10.244.1.0/24 via 192.168.43.111 dev eth0"]
    })
    .await;
    eprintln!("routes {:?} after the RBAC was applied", t.elapsed());
    wait_for(
        "the Service after the RBAC",
        Duration::from_secs(45),
        || async {
            common::endpoints_on(&env, "inajob") == Some(vec!["10.244.2.2:8080".to_string()])
        },
    )
    .await;
    eprintln!("Service rules {:?} after the RBAC was applied", t.elapsed());
    for name in ["inajob", "yuanying"] {
        wait_for(
            &format!("{name}'s NetworkUnavailable False"),
            Duration::from_secs(10),
            || async {
                nodes
                    .get(name)
                    .await
                    .ok()
                    .and_then(|n| condition(&n, "NetworkUnavailable"))
                    .is_some_and(|c| {
                        c.status == "False" && c.reason.as_deref() == Some("RouteCreated")
                    })
            },
        )
        .await;
    }
    let metrics = env.metrics("inajob");
    for r in ["nodes", "endpoints", "endpointslices.discovery.k8s.io"] {
        assert!(metrics.contains(&gauge(r, "list", 0)), "{metrics}");
    }
    // One line each way.
    let log = env.log("inajob");
    eprintln!("inajob's log:\n{log}");
    assert_eq!(lines_with(&log, "forbidden"), 3, "{log}");
    assert_eq!(
        lines_with(
            &log,
            "list nodes is permitted again for system:node:inajob: the routes to other nodes' pods resume"
        ),
        1,
        "{log}"
    );
    for r in ["endpoints", "endpointslices.discovery.k8s.io"] {
        assert_eq!(
            lines_with(
                &log,
                &format!(
                    "list {r} is permitted again for system:node:inajob: ClusterIP Services resume"
                )
            ),
            1,
            "{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains("access      list/watch nodes: granted\n"),
        "{status}"
    );
}

/// Only list on nodes granted: the routes are made from the list, but
/// node-sync cannot follow the Nodes, and says so; the watch is found
/// permitted again once the admin grants it (a watch that starts sends
/// nothing, so node-sync asks the authorizer).
#[tokio::test(flavor = "multi_thread")]
async fn a_list_without_watch_is_named_too() {
    let env = Env::new("nsw", false);
    let partial = env.dir.path().join("list-only.yaml");
    let full = std::fs::read_to_string(RBAC).expect("rbac");
    let (_, binding) = full.split_once("\n---\n").expect("two documents");
    let role = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-sync
rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["list"]
"#;
    std::fs::write(&partial, format!("{role}---\n{binding}")).expect("write");
    env.cp
        .kubectl(&["apply", "-f", &partial.display().to_string()])
        .expect("list-only RBAC");
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    // yuanying registered first: without a watch, inajob knows only the
    // Nodes of its one list.
    let _b = env.start("yuanying");
    wait_for("yuanying Ready", Duration::from_secs(20), || {
        is_ready(&nodes, "yuanying", "True")
    })
    .await;
    let _a = env.start("inajob");
    wait_for("routes from the list", Duration::from_secs(20), || async {
        env.our_routes("inajob") == ["10.244.2.0/24 via 192.168.43.112 dev eth0"]
    })
    .await;
    let refused = nodes_forbidden("watch", "inajob");
    let want = format!("node-sync created routes but cannot follow the Nodes: {refused}");
    wait_for(
        "NetworkUnavailable False naming the refused watch",
        Duration::from_secs(10),
        || async {
            nodes
                .get("inajob")
                .await
                .ok()
                .and_then(|n| condition(&n, "NetworkUnavailable"))
                .is_some_and(|c| {
                    c.status == "False"
                        && c.reason.as_deref() == Some("NodesForbidden")
                        && c.message.as_deref() == Some(want.as_str())
                })
        },
    )
    .await;
    wait_for("the watch retried", Duration::from_secs(30), || async {
        counter(
            &env.metrics("inajob"),
            "node_sync_errors_total{reconciler=\"watch\"}",
        ) >= 4.0
    })
    .await;
    let metrics = env.metrics("inajob");
    assert!(metrics.contains(&gauge("nodes", "watch", 1)), "{metrics}");
    assert!(!metrics.contains(&gauge("nodes", "list", 1)), "{metrics}");
    let log = env.log("inajob");
    assert_eq!(lines_with(&log, &refused), 1, "{log}");
    assert_eq!(lines_with(&log, "forbidden"), 1, "{log}");
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains(&format!("access      {refused}\n")),
        "{status}"
    );

    env.cp.kubectl(&["apply", "-f", RBAC]).expect("RBAC");
    let t = Instant::now();
    wait_for(
        "the watch found permitted",
        Duration::from_secs(15),
        || async {
            lines_with(
                &env.log("inajob"),
                "watch nodes is permitted again for system:node:inajob",
            ) == 1
        },
    )
    .await;
    eprintln!(
        "watch permitted {:?} after the RBAC was applied",
        t.elapsed()
    );
    wait_for(
        "NetworkUnavailable RouteCreated",
        Duration::from_secs(10),
        || async {
            nodes
                .get("inajob")
                .await
                .ok()
                .and_then(|n| condition(&n, "NetworkUnavailable"))
                .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("RouteCreated"))
        },
    )
    .await;
    assert!(
        env.metrics("inajob").contains(&gauge("nodes", "watch", 0)),
        "{}",
        env.metrics("inajob")
    );
    // And the Nodes are followed: a new one gets its route.
    let third: Node = serde_json::from_value(
        json!({"metadata": {"name": "third"}, "spec": {"podCIDR": "10.244.3.0/24"}}),
    )
    .expect("node");
    nodes
        .create(&PostParams::default(), &third)
        .await
        .expect("create");
    let addr =
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.43.113"}]}});
    nodes
        .patch_status("third", &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("status");
    wait_for(
        "the third node's route",
        Duration::from_secs(45),
        || async {
            env.our_routes("inajob")
                .contains(&"10.244.3.0/24 via 192.168.43.113 dev eth0".to_string())
        },
    )
    .await;
    eprintln!(
        "a new Node routed {:?} after the RBAC was applied",
        t.elapsed()
    );
    let log = env.log("inajob");
    assert_eq!(lines_with(&log, "forbidden"), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
