//! `pause` as PID 1 of a PID namespace: it reaps orphans and exits 0 on
//! SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut f = after.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, state));
        }
    }
    out
}

#[test]
fn reaps_orphans_and_exits_zero_on_sigterm() {
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_pause"))
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare");
    // pause is unshare's child, PID 1 inside the new namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    let pause = loop {
        if let Some((p, _)) = children(unshare.id()).first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "pause did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    // An orphan: sh exits at once, its `sleep` is reparented to pause.
    let st = Command::new("nsenter")
        .args([
            "-t",
            &pause.to_string(),
            "-p",
            "--",
            "sh",
            "-c",
            "sleep 0.2 & exit 0",
        ])
        .status()
        .expect("nsenter");
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(600));
    let kids = children(pause);
    assert!(
        kids.iter().all(|(_, s)| *s != 'Z'),
        "zombies under pause: {kids:?}"
    );

    let st = Command::new("kill")
        .args(["-TERM", &pause.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let status = unshare.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "pause exits 0 on SIGTERM");
}
