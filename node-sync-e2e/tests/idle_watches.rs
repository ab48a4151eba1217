//! node-sync idle on a node of the real control plane, its watches ended
//! by the server every 45 s (longer than any read timeout a request
//! client would have): no watch failure in the log or the metrics, and
//! not one LIST more, counted by the API server itself.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, is_ready, wait_for};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use kube::api::{Api, PostParams};

/// The API server's `apiserver_request_total` for `verb`, by resource.
async fn requests(admin: &kube::Client, verb: &str) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = admin.request_text(req).await.expect("metrics");
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        if get("verb").as_deref() != Some(verb) {
            continue;
        }
        let Some(res) = get("resource") else { continue };
        *out.entry(res).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_watches_end_quietly_and_resume_without_a_list() {
    let env = Env::new("nsidle", true);
    let admin = env.admin().await;
    Api::<Service>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &testbed::testdata::load_one("service-web.yaml"),
        )
        .await
        .expect("service");
    Api::<Endpoints>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &testbed::testdata::load_one("endpoints-web.yaml"),
        )
        .await
        .expect("endpoints");
    let flags = ["--proxy-mode", "nftables", "--watch-timeout-seconds", "45"];
    let _a = env.start_with("inajob", &flags);
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for("inajob Ready", Duration::from_secs(20), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    wait_for(
        "the Service programmed",
        Duration::from_secs(20),
        || async { common::endpoints_on(&env, "inajob").is_some() },
    )
    .await;
    // The watches are open once the lists are done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lists = requests(&admin, "LIST").await;
    let watches = requests(&admin, "WATCH").await;

    let idle = Duration::from_secs(100);
    eprintln!("idle for {idle:?}; LISTs so far {lists:?}, WATCHes {watches:?}");
    tokio::time::sleep(idle).await;

    let lists_after = requests(&admin, "LIST").await;
    let watches_after = requests(&admin, "WATCH").await;
    eprintln!("after: LISTs {lists_after:?}, WATCHes {watches_after:?}");
    for r in ["nodes", "services", "endpointslices", "endpoints"] {
        assert_eq!(
            lists_after.get(r),
            lists.get(r),
            "LISTs of {r}: {lists:?} -> {lists_after:?}"
        );
        // Each watch ended by the server (every 45 s) and resumed.
        let more =
            watches_after.get(r).copied().unwrap_or(0.0) - watches.get(r).copied().unwrap_or(0.0);
        assert!(
            more >= 2.0,
            "WATCHes of {r}: {watches:?} -> {watches_after:?}"
        );
    }
    let log = env.log("inajob");
    assert!(!log.contains("watching "), "{log}");
    assert!(!log.contains("watch stream failed"), "{log}");
    let m = env.metrics("inajob");
    assert!(
        !m.contains("node_sync_errors_total{reconciler=\"watch\"}"),
        "{m}"
    );
}
