//! A real CNI client: podman (network_backend "cni") runs a container on a
//! bridge network served by our plugins, inside an emulated node's netns.
//! The container answers on its IP; `podman rm` leaves no lease or chain.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Node, PluginDir};

struct Podman<'a> {
    node: &'a Node,
    home: &'a Path,
}

impl Podman<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let h = self.home;
        Command::new("nsenter")
            .arg(format!("--net={}", self.node.host.path().display()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", h.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", h.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", h.join("registries.conf"))
            .output()
            .expect("podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn http_get(node: &Node, ip: &str) -> String {
    testbed::http::get(&node.host, format!("{ip}:8080").parse().expect("addr"))
}

#[test]
fn podman_runs_a_container_on_our_plugins() {
    let node = Node::new("pm", PluginDir::ours());
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let net_d = h.join("net.d");
    std::fs::create_dir_all(&net_d).expect("mkdir");
    std::fs::write(
        h.join("containers.conf"),
        format!(
            "[containers]\nnetns = \"bridge\"\nlog_driver = \"k8s-file\"\n\
             # no CAP_SYS_RESOURCE here: podman's default ulimits would fail in runc/crun\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\nevents_logfile_path = \"{h}/events.log\"\ntmp_dir = \"{h}/tmp\"\nvolume_path = \"{h}/volumes\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{p}\"]\n\
             network_config_dir = \"{n}\"\ndefault_network = \"hn-net\"\n",
            h = h.display(),
            p = node.plugins.path().display(),
            n = net_d.display()
        ),
    )
    .expect("containers.conf");
    std::fs::write(
        h.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{h}/storage\"\nrunroot = \"{h}/run\"\n",
            h = h.display()
        ),
    )
    .expect("storage.conf");
    std::fs::write(
        h.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .expect("registries.conf");
    std::fs::write(
        net_d.join("hn-net.conflist"),
        format!(
            r#"{{"cniVersion": "0.3.1", "name": "hn-net", "plugins": [
                 {{"type": "bridge", "bridge": "hn-br0", "isGateway": true, "ipMasq": true,
                   "ipam": {{"type": "host-local", "subnet": "10.244.7.0/24",
                            "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}}]}}"#,
            node.data.path().display()
        ),
    )
    .expect("conflist");

    let podman = Podman {
        node: &node,
        home: h,
    };
    let tar = testbed::image::busybox_oci_tar(h);
    let copy = Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .arg(format!("oci-archive:{}:latest", tar.display()))
        .arg("containers-storage:localhost/hn-busybox:latest")
        .env("CONTAINERS_STORAGE_CONF", h.join("storage.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", h.join("registries.conf"))
        .output()
        .expect("skopeo");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );

    let run = podman.run(&[
        "run",
        "-d",
        "--name",
        "hn-web",
        "--network",
        "hn-net",
        "localhost/hn-busybox:latest",
        "/bin/httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let cleanup = || {
        let _ = podman.run(&["rm", "-f", "-t", "0", "hn-web"]);
        let _ = podman.run(&["system", "reset", "-f"]);
    };
    if !run.status.success() {
        cleanup();
        panic!("podman run: {}", String::from_utf8_lossy(&run.stderr));
    }
    let ip = podman.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"hn-net\").IPAddress}}",
        "hn-web",
    ]);
    assert!(ip.starts_with("10.244.7."), "{ip}");
    let body = http_get(&node, &ip);
    assert!(body.contains("hello from busybox"), "{body}");
    let nat = node.host.sh("iptables-save -t nat");
    assert!(nat.contains("CNI-"), "{nat}");

    podman.ok(&["rm", "-f", "-t", "1", "hn-web"]);
    let nat = node.host.sh("iptables-save -t nat");
    assert!(!nat.contains("CNI-"), "chain left after podman rm: {nat}");
    let leases: Vec<_> = node
        .leases("hn-net")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("last_"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    assert!(!node.host.sh("ip -o link show").contains("veth"));
    cleanup();
}
