//! What the pod benchmarks (`pod-startup`, `pod-daemon`) share: one
//! emulated node's registration, its checks (a pod answers, the cgroups
//! left), and small process helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use testbed::Netns;
use testbed::cluster::INAJOB;

/// The benchmarks' node: the tutorial's inajob.
pub const NODE: (&str, std::net::Ipv4Addr) = INAJOB;

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Like [`timed`], for the output of an untimed command.
pub fn output(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The Node object, made with the node's own identity and its InternalIP,
/// as the kubelet registers (both sides get `--node-ip`, so neither reads
/// it; a real node has it).
pub fn register_node(kubeconfig: &Path) -> Result<()> {
    let node: NodeObject = serde_json::from_value(json!({
        "metadata": {"name": NODE.0, "labels": {"kubernetes.io/hostname": NODE.0}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE.1.to_string()},
                                 {"type": "Hostname", "address": NODE.0}]}
    }))
    .context("the Node object")?;
    testbed::kubectl::blocking(async {
        let nodes: Api<NodeObject> = Api::all(client(kubeconfig).await?);
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("registering node {}", NODE.0))?;
        anyhow::Ok(())
    })
}

pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `GET /` on the pod's port 8080 from the node: web answers with its
/// hostname, the pod's name. Retried while the server comes up.
pub fn expect_answer(ns: &Netns, ip: &str, pod: &str) -> Result<()> {
    let addr: SocketAddr = format!("{ip}:8080")
        .parse()
        .with_context(|| format!("pod IP {ip:?}"))?;
    let answer = testbed::http::try_get_path_in(&ns.path(), addr, "/");
    let answer = answer.with_context(|| format!("GET http://{addr}/ from the node"))?;
    ensure!(
        answer.starts_with("HTTP/1.0 200") && answer.ends_with(&format!("\n{pod}\n")),
        "pod {pod} at {addr} answered {answer:?}"
    );
    Ok(())
}

/// Removes the empty cgroup parents the pods left in each controller
/// (runc removes only a container's own): `/<namespace>` of `ctr run`'s
/// `/<namespace>/<container>`, and pod-runner's `/pod-runner/pod<uid>`
/// for the `uids` it ran. Non-empty ones stay (rmdir refuses). Returns
/// how many pod-runner pods had left theirs.
pub fn remove_cgroup_parents(uids: &[String], others: &[&str]) -> usize {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return 0;
    };
    let mut left = std::collections::BTreeSet::new();
    for c in controllers.flatten() {
        for o in others {
            let _ = std::fs::remove_dir(c.path().join(o));
        }
        for uid in uids {
            let pod = c.path().join("pod-runner").join(format!("pod{uid}"));
            if pod.is_dir() {
                left.insert(uid);
                let _ = std::fs::remove_dir(pod);
            }
        }
    }
    left.len()
}
