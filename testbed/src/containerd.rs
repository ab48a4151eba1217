//! A private containerd per emulated node: its own config, root, state and
//! socket under a directory of the test's, started inside the node's netns
//! (so the CNI plugins it runs act there), stopped with everything it
//! started. Settings that work on this machine: cgroupfs (hybrid cgroups),
//! and `restrict_oom_score_adj` (no CAP_SYS_RESOURCE).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with state under `dir`, inside `netns` if given,
    /// and waits until it answers.
    pub fn start(dir: &Path, netns: Option<&Netns>, cni_bin: &Path) -> Self {
        for d in ["root", "state", "opt", "cni/net.d"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "info"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/pause:latest"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}"
      conf_dir = "{d}/cni/net.d"
      max_conf_num = 1
"#,
                d = dir.display(),
                cni = cni_bin.display()
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path().display()))
                    .arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd (apt package containerd)");
        let c = Containerd {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up; log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// containerd's PID (nsenter execs it, so it is the child itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr -a <socket> -n testbed <args>`.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "testbed", "--timeout", "20s"])
            .args(args)
            .output()
            .expect("ctr (apt package containerd)")
    }

    /// Like [`Containerd::ctr`], panicking with the log on failure.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The tail of containerd's log, for failed tests.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops every task, containerd and its shims.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        for ns in String::from_utf8_lossy(&self.ctr(&["namespaces", "ls", "-q"]).stdout).lines() {
            let in_ns = |args: &[&str]| {
                Command::new("ctr")
                    .arg("-a")
                    .arg(self.socket())
                    .args(["-n", ns, "--timeout", "10s"])
                    .args(args)
                    .output()
            };
            let tasks = in_ns(&["tasks", "ls", "-q"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            for t in String::from_utf8_lossy(&tasks).lines() {
                let _ = in_ns(&["tasks", "kill", "-s", "SIGKILL", t]);
                let _ = in_ns(&["tasks", "delete", "-f", t]);
            }
            let ctrs = in_ns(&["containers", "ls", "-q"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            for c in String::from_utf8_lossy(&ctrs).lines() {
                let _ = in_ns(&["containers", "delete", c]);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Shims outlive containerd by design; ours name our socket. They
        // catch SIGTERM and stay (a shim containerd had lost, its bundle
        // deleted, was seen to live on after the test so), hence SIGKILL.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!(
                "containerd-shim-runc-v2 .*-address {}",
                self.socket().display()
            ))
            .output();
        // Overlay mounts of our root go with it.
        let root = self.dir.join("root");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if m.starts_with(&*root.to_string_lossy())
                    || m.starts_with(&*self.dir.join("state").to_string_lossy())
                {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // A failed test keeps the log: its state directory goes away.
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "testbed-containerd-{}-{}.log",
                std::process::id(),
                self.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            if std::fs::copy(self.dir.join("containerd.log"), &keep).is_ok() {
                eprintln!("containerd log kept at {}", keep.display());
            }
        }
    }
}
