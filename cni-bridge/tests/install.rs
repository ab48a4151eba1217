//! `make install` into a staging directory, then the tutorial's CNI ADD by
//! hand with the installed plugins, as the README's quick start shows it
//! (in namespaces of the test's, with a temporary dataDir); `make
//! uninstall` leaves nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use testbed::Netns;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `<plugin>` from the installed CNI bin dir, run in `node` like
/// the README's `CNI_COMMAND=... /opt/cni/bin/<plugin> <<<conf`.
fn cni(
    node: &Netns,
    bin: &Path,
    plugin: &str,
    cmd: &str,
    pod: &Netns,
    ifname: &str,
    conf: &str,
) -> String {
    use std::io::Write;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .arg(bin.join(plugin))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "web-002")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("plugin");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{plugin} {cmd}: {text}");
    text
}

/// `make -s` in the repository with an operator's environment, not the
/// test's: cargo's variables for the test process would make the build
/// inside `make install` differ from the suite's and compile again.
fn operator(root: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(root).arg("-s").env_clear();
    for k in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap_or(&e.path())
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
fn make_install_then_the_tutorial_add_by_hand() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stage = tempfile::tempdir().expect("tmp");
    let dest = stage.path().display().to_string();
    run(operator(&root)
        .arg("install")
        .arg(format!("DESTDIR={dest}")));
    assert_eq!(
        files(stage.path()),
        [
            "etc/cni/net.d/10-bridge.conflist",
            "etc/systemd/system/node-sync.service",
            "etc/systemd/system/pod-runner.service",
            "opt/cni/bin/bridge",
            "opt/cni/bin/host-local",
            "opt/cni/bin/loopback",
            "usr/local/bin/node-sync",
            "usr/local/bin/pause",
            "usr/local/bin/pod-runner",
            "usr/local/share/node-sync/node-sync-rbac.yaml",
        ]
    );
    let unit = std::fs::read_to_string(stage.path().join("etc/systemd/system/node-sync.service"))
        .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/node-sync --config /etc/node-sync/config.toml run")
    );
    let unit = std::fs::read_to_string(stage.path().join("etc/systemd/system/pod-runner.service"))
        .expect("unit");
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/pod-runner --kubeconfig /etc/kubernetes/node.kubeconfig run"
        ),
        "{unit}"
    );
    assert!(unit.contains("KillMode=process"), "{unit}");
    // The installed binaries run on their own: --version, VERSION.
    let bin = stage.path().join("opt/cni/bin");
    run(Command::new(stage.path().join("usr/local/bin/node-sync")).arg("--version"));
    run(Command::new(stage.path().join("usr/local/bin/pod-runner")).arg("--help"));

    // The tutorial's ADD by hand, as the README shows it.
    let node = Netns::new("inst-node");
    let pod = Netns::new("inst-pod");
    let data = tempfile::tempdir().expect("tmp");
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stage.path().join("etc/cni/net.d/10-bridge.conflist"))
            .expect("conflist"),
    )
    .expect("json");
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    conf["ipam"]["dataDir"] = serde_json::json!(data.path().display().to_string());
    let conf = conf.to_string();
    let result: serde_json::Value =
        serde_json::from_str(&cni(&node, &bin, "bridge", "ADD", &pod, "eth0", &conf))
            .expect("result");
    assert_eq!(result["ips"][0]["address"], "10.244.1.2/24", "{result}");
    let lo = r#"{"cniVersion":"0.3.1","name":"lo","type":"loopback"}"#;
    cni(&node, &bin, "loopback", "ADD", &pod, "lo", lo);
    let addrs = pod.sh("ip -o addr show");
    assert!(addrs.contains("eth0    inet 10.244.1.2/24"), "{addrs}");
    assert!(addrs.contains("lo    inet 127.0.0.1/8"), "{addrs}");
    assert!(node.sh("ip -o addr show cni0").contains("10.244.1.1/24"));
    cni(&node, &bin, "bridge", "DEL", &pod, "eth0", &conf);
    cni(&node, &bin, "loopback", "DEL", &pod, "lo", lo);

    run(operator(&root)
        .arg("uninstall")
        .arg(format!("DESTDIR={dest}")));
    assert!(files(stage.path()).is_empty(), "{:?}", files(stage.path()));
}
