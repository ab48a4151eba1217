//! `node-sync run --proxy-mode nftables` on an emulated node: the
//! tutorial Service and its Endpoints become the node's nftables table,
//! changes follow within seconds, a restart adopts the table, and a
//! deleted Service leaves no trace.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use node_sync::services::nft;
use serde_json::json;
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::cluster::{Cluster, INAJOB};
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
        .arg(env!("CARGO_BIN_EXE_node-sync"))
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
    let server = ApiServer::start(0, None).expect("apiserver");
    server
        .write_kubeconfigs(dir.path(), &["inajob"])
        .expect("kubeconfigs");
    let _relay = Relay::start(&cluster.node("inajob").ns, server.port()).expect("relay");
    let kc = Kubeconfig::read_from(dir.path().join("admin.kubeconfig")).expect("kc");
    let admin = Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("cfg"),
    )
    .expect("client");
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
        .arg(env!("CARGO_BIN_EXE_node-sync"))
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
    assert_eq!(
        String::from_utf8_lossy(&once.stdout),
        "1 service ports (nftables)\n"
    );
    assert_eq!(
        endpoints_of(&cluster),
        Some(vec!["10.244.1.2:8080".into(), "10.244.2.2:8080".into()])
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
