//! node-sync on the tutorial's two emulated nodes, each with its own node
//! identity, containerd and CNI config, against the API server stand-in:
//! registration and Ready with real nodeInfo, Leases that renew, one route
//! per other node with pods reaching each other through them, Node changes
//! followed within seconds, foreign routes untouched; and the faults: the
//! API out of reach, SIGKILL and restart, containerd stopped. Then the
//! tutorial Service over nftables on both nodes, reached from a node and
//! from a pod, round robin across the two nodes' pods, with its faults.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use testbed::Netns;
use testbed::api::Apiserver;
use testbed::apiserver::ApiServer;
use testbed::cluster::Cluster;
use testbed::containerd::Containerd;
use testbed::image::static_bin;
use testbed::relay::Relay;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct NodeEnv {
    name: &'static str,
    ip: &'static str,
    cidr: &'static str,
    ctrd: Option<Containerd>,
    relay: Option<Relay>,
    conf: PathBuf,
    _state: tempfile::TempDir,
}

struct Env {
    nodes: Vec<NodeEnv>,
    cluster: Cluster,
    server: ApiServer,
    dir: tempfile::TempDir,
}

const NODES: [(&str, &str, &str); 2] = [
    ("inajob", "192.168.43.111", "10.244.1.0/24"),
    ("yuanying", "192.168.43.112", "10.244.2.0/24"),
];

impl Env {
    fn new(tag: &str) -> Env {
        let dir = tempfile::tempdir().expect("tmp");
        let cluster = Cluster::tutorial(tag);
        let server = ApiServer::start(0, None).expect("apiserver");
        server
            .write_kubeconfigs(dir.path(), &["inajob", "yuanying"])
            .expect("kubeconfigs");
        let mut nodes = Vec::new();
        for (name, ip, cidr) in NODES {
            let ns = &cluster.node(name).ns;
            let state = tempfile::Builder::new()
                .prefix("tb-ctrd-")
                .tempdir_in("/var/tmp")
                .expect("state");
            let conf = dir.path().join(format!("{name}-net.d"));
            std::fs::create_dir_all(&conf).expect("mkdir");
            let mut bridge = testbed::testdata::cni_conf("10-bridge.conf");
            bridge["ipam"]["ranges"] = json!([[{"subnet": cidr}]]);
            bridge["ipam"]["dataDir"] = json!(
                dir.path()
                    .join(format!("{name}-ipam"))
                    .display()
                    .to_string()
            );
            std::fs::write(conf.join("10-bridge.conf"), bridge.to_string()).expect("conf");
            nodes.push(NodeEnv {
                name,
                ip,
                cidr,
                ctrd: Some(Containerd::start(
                    state.path(),
                    Some(ns),
                    Path::new("/usr/lib/cni"),
                )),
                relay: Some(Relay::start(ns, server.port()).expect("relay")),
                conf,
                _state: state,
            });
        }
        Env {
            nodes,
            cluster,
            server,
            dir,
        }
    }

    fn node(&self, name: &str) -> &NodeEnv {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }

    fn ns(&self, name: &str) -> &Netns {
        &self.cluster.node(name).ns
    }

    fn start(&self, name: &str) -> Agent {
        self.start_with(name, &[])
    }

    /// node-sync on `name` with `extra` flags (the log is appended to).
    fn start_with(&self, name: &str, extra: &[&str]) -> Agent {
        let n = self.node(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        let socket = n
            .ctrd
            .as_ref()
            .map(|c| c.socket())
            .unwrap_or_else(|| self.dir.path().join("no-containerd.sock"));
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns(name).path().display()))
            .arg(env!("CARGO_BIN_EXE_node-sync"))
            .arg("--kubeconfig")
            .arg(self.dir.path().join(format!("{name}.kubeconfig")))
            .args(["--node-name", name, "--node-ip", n.ip, "--pod-cidr", n.cidr])
            .arg("--containerd-socket")
            .arg(&socket)
            .arg("--cni-conf-dir")
            .arg(&n.conf)
            .args([
                "--status-interval-seconds",
                "1",
                "--label",
                "tutorial=heartful",
            ])
            .args(extra)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node-sync");
        Agent(child)
    }

    /// `node-sync <cmd>` once on the node; its stdout.
    fn run_once(&self, name: &str, cmd: &str) -> String {
        let n = self.node(name);
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns(name).path().display()))
            .arg(env!("CARGO_BIN_EXE_node-sync"))
            .arg("--kubeconfig")
            .arg(self.dir.path().join(format!("{name}.kubeconfig")))
            .args(["--node-name", name, "--node-ip", n.ip])
            .arg(cmd)
            .output()
            .expect("node-sync");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn admin(&self) -> Client {
        let kc = Kubeconfig::read_from(self.dir.path().join("admin.kubeconfig")).expect("kc");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }

    /// `ip route show proto 200` on the node, one route per line.
    fn our_routes(&self, name: &str) -> Vec<String> {
        self.ns(name)
            .sh("ip route show proto 200")
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(n: &Node) -> Option<(String, String)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
}

async fn is_ready(nodes: &Api<Node>, name: &str, want: &str) -> bool {
    matches!(nodes.get_opt(name).await, Ok(Some(n)) if ready(&n).is_some_and(|(s, _)| s == want))
}

/// A pod on `node`: a netns with our bridge plugin's tutorial config.
fn pod(env: &Env, node: &str, id: &str) -> (Netns, String) {
    let ns = Netns::new("nspod");
    let n = env.node(node);
    let conf = std::fs::read_to_string(n.conf.join("10-bridge.conf")).expect("conf");
    let bin_dir = static_bin("bridge").parent().expect("dir").to_path_buf();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", env.ns(node).path().display()))
        .arg(static_bin("bridge"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bridge");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("bridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("result");
    let ip = v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("ip")
        .to_string();
    (ns, ip)
}

/// A TCP echo from pod `b` to pod `a` at `a_ip`.
fn echo(a: &Netns, a_ip: &str, b: &Netns) -> String {
    let listener = a.run(|| TcpListener::bind("0.0.0.0:7777")).expect("listen");
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(&buf[..n]);
        }
    });
    let addr = format!("{a_ip}:7777").parse().expect("addr");
    let got = b.run(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"across nodes")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    let _ = server.join();
    got.expect("TCP echo")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_register_report_and_route() {
    let env = Env::new("nsa");
    // Someone else's route in the same table, before we start.
    env.ns("inajob")
        .sh("ip route add 10.99.0.0/24 via 192.168.43.112 proto boot");
    let _a = env.start("inajob");
    let mut b = Some(env.start("yuanying"));
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    let n = nodes.get("inajob").await.expect("node");
    let spec = n.spec.clone().expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tutorial"))
            .map(String::as_str),
        Some("heartful")
    );
    let st = n.status.clone().expect("status");
    let info = st.node_info.expect("nodeInfo");
    assert_eq!(
        info.kernel_version,
        String::from_utf8_lossy(
            &Command::new("uname")
                .arg("-r")
                .output()
                .expect("uname")
                .stdout
        )
        .trim()
    );
    assert!(
        info.container_runtime_version
            .starts_with("containerd://1."),
        "{}",
        info.container_runtime_version
    );
    assert_eq!(
        info.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("boot id")
            .trim()
    );
    assert_eq!(info.architecture, "amd64");
    let addrs = st.addresses.expect("addresses");
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "192.168.43.111")
    );
    // The pressures follow this machine, whose disk is shared with others
    // and may really be nearly full: DiskPressure is held to what statvfs
    // says of the nodefs (default /var/lib) against the kubelet's 10%.
    let vfs = nix::sys::statvfs::statvfs("/var/lib").expect("statvfs");
    let disk_full = (vfs.blocks_available() as f64) < 0.10 * vfs.blocks() as f64;
    for (t, want) in [
        ("MemoryPressure", "False"),
        ("DiskPressure", if disk_full { "True" } else { "False" }),
        ("PIDPressure", "False"),
    ] {
        let c = st
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .expect(t);
        assert_eq!(c.status, want, "{t}");
    }
    assert!(
        st.capacity
            .as_ref()
            .is_some_and(|c| c.contains_key("cpu") && c.contains_key("memory"))
    );

    // One route each way; pods on the two nodes talk over it.
    wait_for("routes", Duration::from_secs(5), || async {
        env.our_routes("inajob").len() == 1 && env.our_routes("yuanying").len() == 1
    })
    .await;
    assert_eq!(
        env.our_routes("inajob"),
        vec!["10.244.2.0/24 via 192.168.43.112 dev eth0"]
    );
    assert_eq!(
        env.our_routes("yuanying"),
        vec!["10.244.1.0/24 via 192.168.43.111 dev eth0"]
    );
    let status = env.run_once("inajob", "status");
    assert!(
        status.contains("  10.244.2.0/24 via 192.168.43.112"),
        "{status}"
    );
    assert!(status.contains("condition   Ready=True"), "{status}");
    let (pa, ipa) = pod(&env, "inajob", "pod-a");
    let (pb, _) = pod(&env, "yuanying", "pod-b");
    assert_eq!(echo(&pa, &ipa, &pb), "across nodes");

    // The Leases renew (every 10 s).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let renew = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renew(leases.get("inajob").await.expect("lease")).expect("renewTime");
    wait_for("a renewed Lease", Duration::from_secs(15), || async {
        leases
            .get("inajob")
            .await
            .ok()
            .and_then(renew)
            .is_some_and(|t| t > first)
    })
    .await;
    let l = leases.get("inajob").await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("inajob")
    );

    // A new Node appears: its route within a second or two; it changes
    // podCIDR (deleted and made again): the route is replaced.
    let third = |cidr: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": "third"}, "spec": {"podCIDR": cidr}}))
            .expect("node")
    };
    nodes
        .create(&PostParams::default(), &third("10.244.3.0/24"))
        .await
        .expect("create");
    let addr =
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.168.43.113"}]}});
    nodes
        .patch_status("third", &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("status");
    wait_for("the third node's route", Duration::from_secs(2), || async {
        env.our_routes("inajob")
            .contains(&"10.244.3.0/24 via 192.168.43.113 dev eth0".to_string())
    })
    .await;
    nodes
        .delete("third", &DeleteParams::default())
        .await
        .expect("delete");
    nodes
        .create(&PostParams::default(), &third("10.244.4.0/24"))
        .await
        .expect("create");
    nodes
        .patch_status("third", &PatchParams::default(), &Patch::Merge(&addr))
        .await
        .expect("status");
    wait_for("the replaced route", Duration::from_secs(2), || async {
        let r = env.our_routes("inajob");
        r.len() == 2 && r.contains(&"10.244.4.0/24 via 192.168.43.113 dev eth0".to_string())
    })
    .await;

    // A Node deleted (its agent stopped first): its route goes within 2 s.
    drop(b.take());
    nodes
        .delete("yuanying", &DeleteParams::default())
        .await
        .expect("delete");
    let t = Instant::now();
    wait_for(
        "the deleted node's route to go",
        Duration::from_secs(2),
        || async {
            !env.our_routes("inajob")
                .iter()
                .any(|r| r.starts_with("10.244.2.0/24"))
        },
    )
    .await;
    eprintln!("route removed {:?} after the Node was deleted", t.elapsed());
    // Someone else's route survived every sync.
    assert!(
        env.ns("inajob")
            .sh("ip route")
            .contains("10.99.0.0/24 via 192.168.43.112")
    );
    assert!(env.ns("inajob").sh("sysctl -n net.ipv4.ip_forward").trim() == "1");

    // Metrics and health on the node's loopback.
    let at = "127.0.0.1:10249".parse().expect("addr");
    let metrics = testbed::http::get_path_in(&env.ns("inajob").path(), at, "/metrics");
    assert!(
        metrics.contains("node_sync_routes_programmed 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("node_sync_syncs_total{reconciler=\"heartbeat\"}"),
        "{metrics}"
    );
    let health = testbed::http::get_path_in(&env.ns("inajob").path(), at, "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") && health.ends_with("\nok\n"),
        "{health}"
    );
    assert!(
        !env.log("inajob").contains("panicked"),
        "{}",
        env.log("inajob")
    );
}

async fn renewed(leases: &Api<Lease>, name: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    leases.get(name).await.ok()?.spec?.renew_time.map(|t| t.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_keep_the_routes_and_node_sync_recovers() {
    let mut env = Env::new("nsf");
    let mut a = env.start("inajob");
    let _b = env.start("yuanying");
    let admin = env.admin().await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    for name in ["inajob", "yuanying"] {
        wait_for(&format!("{name} Ready"), Duration::from_secs(20), || {
            is_ready(&nodes, name, "True")
        })
        .await;
    }
    let route = vec!["10.244.2.0/24 via 192.168.43.112 dev eth0".to_string()];
    wait_for("routes", Duration::from_secs(5), || async {
        env.our_routes("inajob") == route
    })
    .await;

    // The API server out of reach for 30 s: the routes stay all along.
    let before = renewed(&leases, "inajob").await.expect("lease");
    drop(env.nodes[0].relay.take());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            env.our_routes("inajob"),
            route,
            "routes changed during the outage"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The outage was real: no renewal got through it.
    let during = renewed(&leases, "inajob").await.expect("lease");
    assert!(
        during.duration_since(before).as_secs_f64() < 2.0,
        "the Lease was renewed during the outage: {before} -> {during}"
    );
    let port = env.server.port();
    let relay = {
        let mut tries = 0;
        loop {
            match Relay::start(env.ns("inajob"), port) {
                Ok(r) => break r,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("relay: {e}"),
            }
        }
    };
    env.nodes[0].relay = Some(relay);
    wait_for(
        "a heartbeat after the outage",
        Duration::from_secs(30),
        || async { renewed(&leases, "inajob").await.is_some_and(|t| t > before) },
    )
    .await;
    assert_eq!(env.our_routes("inajob"), route);

    // SIGKILL and a restart: the routes are adopted, none doubled.
    let _ = a.0.kill();
    let _ = a.0.wait();
    a = env.start("inajob");
    let since = renewed(&leases, "inajob").await.expect("lease");
    wait_for(
        "the restarted agent's heartbeat",
        Duration::from_secs(20),
        || async { renewed(&leases, "inajob").await.is_some_and(|t| t > since) },
    )
    .await;
    assert_eq!(env.our_routes("inajob"), route);
    let all = env.ns("inajob").sh("ip route show 10.244.2.0/24");
    assert_eq!(all.lines().count(), 1, "{all}");

    // containerd stopped: Ready False with the reason; back: Ready True.
    let state = env.nodes[0]._state.path().to_path_buf();
    if let Some(mut c) = env.nodes[0].ctrd.take() {
        c.stop();
    }
    wait_for("Ready False", Duration::from_secs(10), || {
        is_ready(&nodes, "inajob", "False")
    })
    .await;
    let (_, msg) = ready(&nodes.get("inajob").await.expect("node")).expect("ready");
    assert!(msg.contains("container runtime is down"), "{msg}");
    env.nodes[0].ctrd = Some(Containerd::start(
        &state,
        Some(env.ns("inajob")),
        Path::new("/usr/lib/cni"),
    ));
    wait_for("Ready True again", Duration::from_secs(10), || {
        is_ready(&nodes, "inajob", "True")
    })
    .await;
    drop(a);
    assert!(
        !env.log("inajob").contains("panicked"),
        "{}",
        env.log("inajob")
    );
}

/// Who answered `n` GETs to the tutorial VIP from `ns`.
fn answers(ns: &Netns, n: usize) -> Vec<String> {
    let vip: std::net::SocketAddr = "10.254.10.128:80".parse().expect("vip");
    (0..n)
        .map(|_| {
            let r = testbed::http::get(ns, vip);
            let body = r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
            body.split(' ').next().unwrap_or("").to_string()
        })
        .collect()
}

fn alternate(got: &[String]) -> bool {
    let mut sorted = got.to_vec();
    sorted.sort();
    got.len() == 4
        && got[0] != got[1]
        && got[0] == got[2]
        && got[1] == got[3]
        && sorted == ["web-001", "web-001", "web-002", "web-002"]
}

fn endpoints_on(env: &Env, node: &str) -> Option<Vec<String>> {
    let p = node_sync::services::nft::programmed_in(Some(&env.ns(node).path())).ok()?;
    let s = p
        .iter()
        .find(|s| s.vip.to_string() == "10.254.10.128" && s.port == 80)?;
    Some(s.endpoints.iter().map(|e| e.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn services_over_nftables_on_two_nodes() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    let mut env = Env::new("nsv");
    // A default route, as on a real node: a VIP is routed through it
    // before DNAT.
    for node in ["inajob", "yuanying"] {
        env.ns(node)
            .sh("ip route add default via 192.168.43.1 dev eth0");
    }
    let nft = ["--proxy-mode", "nftables"];
    let mut a = env.start_with("inajob", &nft);
    let _b = env.start_with("yuanying", &nft);
    wait_for("routes", Duration::from_secs(10), || async {
        env.our_routes("inajob").len() == 1 && env.our_routes("yuanying").len() == 1
    })
    .await;
    // web-001 on yuanying, web-002 and a client pod on inajob.
    let (web1, ip1) = pod(&env, "yuanying", "web-001");
    let (web2, ip2) = pod(&env, "inajob", "web-002");
    let (client, _) = pod(&env, "inajob", "client");
    assert_eq!((ip1.as_str(), ip2.as_str()), ("10.244.2.2", "10.244.1.2"));
    testbed::http::serve_name(&web1, "web-001");
    testbed::http::serve_name(&web2, "web-002");

    let admin = env.admin().await;
    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), "default");
    let pp = PostParams::default();
    services
        .create(&pp, &testbed::testdata::load_one("service-web.yaml"))
        .await
        .expect("service");
    endpoints
        .create(&pp, &testbed::testdata::load_one("endpoints-web.yaml"))
        .await
        .expect("endpoints");
    // Malformed objects beside it: an SCTP port, an invalid address.
    let bad_svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "sctp"},
        "spec": {"clusterIP": "10.254.10.201", "ports": [{"port": 80, "protocol": "SCTP"}]}
    }))
    .expect("svc");
    services.create(&pp, &bad_svc).await.expect("sctp");
    let empty: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty"},
        "spec": {"clusterIP": "10.254.10.129", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .expect("svc");
    services.create(&pp, &empty).await.expect("empty");
    let bad_ep: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "empty"},
        "subsets": [{"addresses": [{"ip": "not-an-ip"}], "ports": [{"name": "http", "port": 8080}]}]
    }))
    .expect("ep");
    endpoints.create(&pp, &bad_ep).await.expect("bad endpoints");

    let both = Some(vec![
        "10.244.1.2:8080".to_string(),
        "10.244.2.2:8080".to_string(),
    ]);
    for node in ["inajob", "yuanying"] {
        wait_for(
            &format!("the service on {node}"),
            Duration::from_secs(10),
            || async { endpoints_on(&env, node) == both },
        )
        .await;
    }
    // From the node and from a pod: round robin over both nodes' pods.
    let from_node = answers(env.ns("inajob"), 4);
    assert!(alternate(&from_node), "from the node: {from_node:?}");
    let from_pod = answers(&client, 4);
    assert!(alternate(&from_pod), "from a pod: {from_pod:?}");
    // No endpoint: a reset, at once.
    let t = Instant::now();
    let refused = client.run(|| {
        TcpStream::connect_timeout(
            &"10.254.10.129:80".parse().expect("addr"),
            Duration::from_secs(3),
        )
    });
    let err = refused.expect_err("connected to a Service without endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The malformed ones were skipped, and said so.
    let table = env.ns("inajob").sh("nft list table ip node-sync");
    assert!(!table.contains("10.254.10.201"), "{table}");
    let log = env.log("inajob");
    assert!(log.contains("not-an-ip"), "{log}");

    // web-002 removed from the Endpoints: gone from the rules within 1 s.
    let one = json!({"subsets": [{"addresses": [{"ip": "10.244.2.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
    let t = Instant::now();
    endpoints
        .patch("web-service", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .expect("patch");
    let only = Some(vec!["10.244.2.2:8080".to_string()]);
    while endpoints_on(&env, "inajob") != only {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{:?}",
            endpoints_on(&env, "inajob")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("endpoint removal in the rules after {:?}", t.elapsed());
    assert_eq!(answers(&client, 4), ["web-001"; 4]);

    // The API server out of reach: the rules stay and traffic flows.
    let before = env.ns("inajob").sh("nft list table ip node-sync");
    drop(env.nodes[0].relay.take());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.ns("inajob").sh("nft list table ip node-sync"), before);
    assert_eq!(answers(&client, 2), ["web-001"; 2]);
    env.nodes[0].relay = Some(Relay::start(env.ns("inajob"), env.server.port()).expect("relay"));

    // SIGKILL and a restart: adopted as it is, nothing flushed or doubled.
    let _ = a.0.kill();
    let _ = a.0.wait();
    let programmed_runs = env
        .log("inajob")
        .matches("services: nftables programmed")
        .count();
    a = env.start_with("inajob", &nft);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.ns("inajob").sh("nft list table ip node-sync"), before);
    assert_eq!(
        env.log("inajob")
            .matches("services: nftables programmed")
            .count(),
        programmed_runs,
        "{}",
        env.log("inajob")
    );

    // The Service deleted: every rule of it goes, on both nodes.
    services
        .delete("web-service", &DeleteParams::default())
        .await
        .expect("delete");
    for node in ["inajob", "yuanying"] {
        wait_for(
            &format!("the service gone from {node}"),
            Duration::from_secs(5),
            || async {
                !env.ns(node)
                    .sh("nft list table ip node-sync")
                    .contains("10_254_10_128")
            },
        )
        .await;
        let table = env.ns(node).sh("nft list table ip node-sync");
        assert!(!table.contains("10.254.10.128"), "{table}");
    }
    drop(a);
}
