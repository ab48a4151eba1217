//! `image pull` from a real registry (Debian's docker-registry, on the
//! node's loopback), and a pod whose image is not on the node yet: create
//! pulls it through containerd's content store and runs it.

mod common;

use std::process::{Child, Command, Stdio};

use common::{Env, text};

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// docker-registry on the node's 127.0.0.1:5000, with `web` pushed to it.
fn registry(env: &Env) -> Registry {
    let dir = env.dir.path().join("registry");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", env.node().ns.path().display()))
        .args(["docker-registry", "serve"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (apt package docker-registry)");
    let reg = Registry(child);
    let tar = env.dir.path().join("images/web.tar");
    // skopeo pushes the OCI archive over plain HTTP; retried while the
    // registry comes up.
    let mut last = String::new();
    for _ in 0..50 {
        let out = env.node().ns.try_sh(&format!(
            "skopeo copy --dest-tls-verify=false oci-archive:{}:latest docker://127.0.0.1:5000/demo/web:v1",
            tar.display()
        ));
        match out {
            Ok(_) => return reg,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("pushing to the registry: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_then_a_pod_on_a_pulled_image() {
    let env = Env::new("prpull");
    let _reg = registry(&env);

    let out = env.pod_runner(&["image", "pull", "127.0.0.1:5000/demo/web:v1"]);
    assert!(out.status.success(), "pull: {}", text(&out));
    let images = env.pod_runner(&["image", "list"]);
    let listed = String::from_utf8_lossy(&images.stdout).into_owned();
    assert!(
        listed.contains("127.0.0.1:5000/demo/web:v1\tsha256:"),
        "{listed}"
    );
    assert!(
        env.ctrd.ctr_ok(&["leases", "ls", "-q"]).trim().is_empty(),
        "leases left"
    );
    // What containerd's own client sees: the record and complete content.
    let check = env.ctrd.ctr_ok(&["images", "check"]);
    assert!(
        check
            .lines()
            .any(|l| l.starts_with("127.0.0.1:5000/demo/web:v1") && l.contains("complete")),
        "{check}"
    );

    // A pod on an image the node does not have: create pulls it.
    let mut pod: k8s_openapi::api::core::v1::Pod = testbed::testdata::load_one("pod-web-002.yaml");
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].image = Some("127.0.0.1:5000/demo/web:v1".into());
    }
    env.ctrd
        .ctr_ok(&["images", "rm", "127.0.0.1:5000/demo/web:v1"]);
    let made = env.create_pod_object(pod, Some("inajob")).await;
    let name = made.metadata.name.clone().expect("name");
    let out = env.pod_runner(&["create", &name]);
    assert!(out.status.success(), "create: {}", text(&out));
    let st = env.pod(&name).await.and_then(|p| p.status).expect("status");
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let cs = st.container_statuses.expect("cs");
    assert!(
        cs[0]
            .image_id
            .starts_with("127.0.0.1:5000/demo/web@sha256:"),
        "{}",
        cs[0].image_id
    );
    let ip = st.pod_ip.expect("ip");
    let answer = testbed::http::get(&env.node().ns, format!("{ip}:8080").parse().expect("addr"));
    assert!(answer.ends_with("\nweb-002\n"), "{answer}");
    let del = env.pod_runner(&["delete", &name]);
    assert!(del.status.success(), "delete: {}", text(&del));
    env.assert_clean();

    // A missing image in a registry is a clear error.
    let out = env.pod_runner(&["image", "pull", "127.0.0.1:5000/demo/nope:v1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("demo/nope"),
        "{}",
        text(&out)
    );
}
