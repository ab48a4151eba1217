//! A Services sync held up for 30 s (a stand-in `nft` first on node-sync's
//! PATH that sleeps) on a node of the real control plane: the Lease is
//! still renewed every 10 s, the Node stays Ready, the routes are synced,
//! and the `nft` deadline fires and is reported in `status`, a metric and
//! the log (once), with retries backing off.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Env, is_ready, renewed, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_nft_holds_up_neither_the_lease_nor_the_routes() {
    let env = Env::new("nshung", true);
    // `exec`: the sleep is nft itself, killed at node-sync's deadline.
    let bin = env.dir.path().join("hung-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let nft = bin.join("nft");
    std::fs::write(&nft, "#!/bin/sh\nexec sleep 30\n").expect("write nft");
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _b = env.start("yuanying");
    let _a = env.start_with_env(
        "inajob",
        &["--proxy-mode", "nftables"],
        &[("PATH", path.as_str())],
    );
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    wait_for("inajob Ready", Duration::from_secs(20), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    wait_for("inajob's Lease", Duration::from_secs(20), || async {
        renewed(&leases, "inajob").await.is_some()
    })
    .await;

    // 35 s of stalled Services: the Lease, Ready and routes each second.
    let t = Instant::now();
    let mut renewals = Vec::new();
    let mut last = None;
    let mut route_seen = None;
    while t.elapsed() < Duration::from_secs(35) {
        let now = renewed(&leases, "inajob").await;
        if now != last {
            renewals.push(t.elapsed());
            last = now;
        }
        assert!(
            is_ready(&nodes, "inajob", "True").await,
            "inajob not Ready after {:?}",
            t.elapsed()
        );
        if route_seen.is_none()
            && env
                .our_routes("inajob")
                .iter()
                .any(|r| r.starts_with("10.244.2.0/24 via 192.168.43.112"))
        {
            route_seen = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("renewTime changed at {renewals:?}; route to yuanying at {route_seen:?}");
    assert!(renewals.len() >= 4, "{renewals:?}");
    let gaps: Vec<_> = renewals.windows(2).map(|w| w[1] - w[0]).collect();
    // Every 10 s; the API's renewTime has microseconds, our sampling 1 s.
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(12)),
        "gaps between renewals: {gaps:?}"
    );
    assert!(route_seen.is_some(), "{:?}", env.our_routes("inajob"));

    // The deadline fired and says so: metric, status, one log line.
    let m = env.metrics("inajob");
    let timeouts =
        metric(&m, "node_sync_step_timeouts_total{reconciler=\"services\"}").unwrap_or(0.0);
    assert!(timeouts >= 1.0, "{m}");
    assert_eq!(
        metric(&m, "node_sync_reconciler_failing{reconciler=\"services\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "node_sync_reconciler_failing{reconciler=\"heartbeat\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "node_sync_reconciler_failing{reconciler=\"routes\"}"),
        Some(0.0),
        "{m}"
    );
    let status = env.run_once("inajob", "status");
    eprintln!("{status}");
    let line = status
        .lines()
        .find(|l| l.starts_with("reconciler  services failing since"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("did not finish within 15s and was killed"),
        "{line}"
    );
    assert!(status.contains("reconciler  heartbeat ok\n"), "{status}");
    assert!(status.contains("reconciler  routes ok\n"), "{status}");
    let log = env.log("inajob");
    assert_eq!(
        lines_with(&log, "services: timed out: nftables: running nft:"),
        1,
        "one line for the transition, not one per retry: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
