//! `node-sync run --proxy-mode nftables` on an emulated node, with the
//! node's own identity against a real control plane and node-sync's RBAC
//! applied by the admin: the tutorial Service and its Endpoints become the
//! node's nftables table,
//! changes follow within seconds, a restart adopts the table, and a
//! deleted Service leaves no trace.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use node_sync::services::nft;
use serde_json::json;
use testbed::api::Apiserver;
use testbed::cluster::{Cluster, INAJOB};
use testbed::controlplane::{ControlPlane, Options};
use testbed::relay::Relay;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(cluster: &Cluster, dir: &std::path::Path) -> Agent {
    let log = std::fs::File::create(dir.join("node-sync.log")).expect("log");
    let child = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            cluster.node("inajob").ns.path().display()
        ))
        .arg(testbed::image::static_bin("node-sync"))
        .arg("--kubeconfig")
        .arg(dir.join("inajob.kubeconfig"))
        .args(["--node-name", "inajob", "--node-ip", "192.168.43.111"])
        .arg("--containerd-socket")
        .arg(dir.join("none.sock"))
        .args(["--proxy-mode", "nftables", "run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node-sync");
    Agent(child)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn endpoints_of(cluster: &Cluster) -> Option<Vec<String>> {
    let path = cluster.node("inajob").ns.path();
    let p = nft::programmed_in(Some(&path)).ok()?;
    let s = p
        .iter()
        .find(|s| s.vip.to_string() == "10.254.10.128" && s.port == 80)?;
    Some(s.endpoints.iter().map(SocketAddr::to_string).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tutorial_service_becomes_the_nft_table() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cluster = Cluster::new("nssvc");
    cluster.add_node(INAJOB.0, INAJOB.1);
    let cp = ControlPlane::start(&Options::default()).expect("control plane");
    cp.write_kubeconfigs(dir.path(), &["inajob"])
        .expect("kubeconfigs");
    cp.kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/node-sync-rbac.yaml"),
    ])
    .expect("RBAC");
    let _relay = Relay::start(&cluster.node("inajob").ns, cp.port()).expect("relay");
    let admin = testbed::kubectl::client(&dir.path().join("admin.kubeconfig"))
        .await
        .expect("admin");
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &testbed::testdata::load_one("service-web.yaml"),
        )
        .await
        .expect("service");
    endpoints
        .create(
            &PostParams::default(),
            &testbed::testdata::load_one("endpoints-web.yaml"),
        )
        .await
        .expect("endpoints");

    // One sync by hand (`services --once`), then the daemon adopts it.
    let once = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            cluster.node("inajob").ns.path().display()
        ))
        .arg(testbed::image::static_bin("node-sync"))
        .arg("--kubeconfig")
        .arg(dir.path().join("inajob.kubeconfig"))
        .args(["--node-name", "inajob", "--node-ip", "192.168.43.111"])
        .args(["--proxy-mode", "nftables", "services", "--once"])
        .output()
        .expect("services --once");
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    // The tutorial's and the API server's own `kubernetes` Service
    // (10.254.0.1:443, without endpoints here: the control plane runs
    // no endpoint reconciler).
    assert_eq!(
        String::from_utf8_lossy(&once.stdout),
        "2 service ports (nftables)\n"
    );
    assert_eq!(
        endpoints_of(&cluster),
        Some(vec!["10.244.1.2:8080".into(), "10.244.2.2:8080".into()])
    );
    let path = cluster.node("inajob").ns.path();
    let programmed = nft::programmed_in(Some(&path)).expect("table");
    assert!(
        programmed
            .iter()
            .any(|s| s.vip.to_string() == "10.254.0.1" && s.port == 443 && s.endpoints.is_empty()),
        "{programmed:?}"
    );

    let mut agent = start(&cluster, dir.path());
    wait_for("the tutorial service", || {
        endpoints_of(&cluster) == Some(vec!["10.244.1.2:8080".into(), "10.244.2.2:8080".into()])
    })
    .await;

    // An endpoint goes away: the table follows.
    let one = json!({"subsets": [{"addresses": [{"ip": "10.244.2.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
    endpoints
        .patch("web-service", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .expect("patch");
    wait_for("one endpoint", || {
        endpoints_of(&cluster) == Some(vec!["10.244.2.2:8080".into()])
    })
    .await;

    // A restart adopts the table as it is.
    drop(agent);
    assert_eq!(
        endpoints_of(&cluster),
        Some(vec!["10.244.2.2:8080".into()]),
        "stopping kept the table"
    );
    agent = start(&cluster, dir.path());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoints_of(&cluster), Some(vec!["10.244.2.2:8080".into()]));
    let log = std::fs::read_to_string(dir.path().join("node-sync.log")).unwrap_or_default();
    assert!(
        !log.contains("nftables programmed"),
        "adopted, not rewritten: {log}"
    );

    // The Service deleted: nothing of it is left.
    services
        .delete("web-service", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the service to go", || endpoints_of(&cluster).is_none()).await;
    let table = cluster.node("inajob").ns.sh("nft list table ip node-sync");
    assert!(!table.contains("10.254.10.128"), "{table}");
    drop(agent);
    let log = std::fs::read_to_string(dir.path().join("node-sync.log")).unwrap_or_default();
    assert!(log.contains("services: nftables programmed"), "{log}");
    // Changes went in as incremental transactions that matched the table.
    assert!(!log.contains("incremental update failed"), "{log}");
}
