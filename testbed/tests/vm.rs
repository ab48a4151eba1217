//! The qemu VM runner: IPVS round-robin in Debian's kernel with a project
//! binary passed in; output and exit codes; the timeout.

use std::time::{Duration, Instant};

use testbed::vm::{Vm, VmError};

/// A dummy `kube-ipvs0` holding the VIP, three netns pods on a bridge, two
/// of them serving distinct bodies with busybox httpd, an IPVS virtual
/// server over those two; four requests from the node, then four from the
/// third pod (hairpin through the bridge: kube-proxy's vs.conntrack and
/// xt_ipvs masquerade). Then the project's `web` answers on the node.
const IPVS: &str = r#"
set -e
VIP=10.96.0.10
ip link add kube-ipvs0 type dummy
ip addr add $VIP/32 dev kube-ipvs0
@PODS@
ipvsadm -A -t $VIP:80 -s rr
ipvsadm -a -t $VIP:80 -r 10.244.1.2:8080 -m
ipvsadm -a -t $VIP:80 -r 10.244.1.3:8080 -m
ipvsadm -Ln >&2
get() { timeout 5 wget -q -O - "$@"; }
echo "from-node: $(for n in 1 2 3 4; do get http://$VIP/; done | tr '\n' ' ')"
sysctl -qw net.ipv4.vs.conntrack=1
iptables -t nat -A POSTROUTING -m ipvs --vaddr $VIP/32 --vport 80 -j MASQUERADE
echo "from-pod: $(for n in 1 2 3 4; do ip netns exec pod3 timeout 5 wget -q -O - http://$VIP/; done | tr '\n' ' ')"
hostname tbvm-node
PORT=9090 web >/dev/null 2>&1 &
for n in 1 2 3 4 5 6 7 8 9 10; do get http://127.0.0.1:9090/ >/run/web 2>/dev/null && break; sleep 0.2; done
echo "web: $(cat /run/web)"
"#;

/// Four answers, alternating between the two backends.
fn alternates(out: &str, prefix: &str) -> bool {
    let Some(line) = out.lines().find_map(|l| l.strip_prefix(prefix)) else {
        return false;
    };
    let got: Vec<&str> = line.split_whitespace().collect();
    got.len() == 4
        && got[0] != got[1]
        && got[0] == got[2]
        && got[1] == got[3]
        && got.iter().all(|g| *g == "backend-1" || *g == "backend-2")
}

#[test]
fn ipvs_round_robin_in_the_vm() {
    let t = Instant::now();
    let out = Vm::builder()
        .file(env!("CARGO_BIN_EXE_web"), "/usr/local/bin/web")
        .script(IPVS.replace("@PODS@", testbed::vm::PODS_ON_A_BRIDGE))
        .timeout(Duration::from_secs(240))
        .run()
        .expect("vm");
    eprintln!("IPVS VM: qemu {:.1?}, in all {:.1?}", out.took, t.elapsed());
    assert_eq!(out.exit_code, 0, "{out}");
    assert!(alternates(&out.stdout, "from-node:"), "{out}");
    assert!(alternates(&out.stdout, "from-pod:"), "{out}");
    assert!(out.stdout.contains("web: tbvm-node\n"), "{out}");
    assert!(out.stderr.contains("TCP  10.96.0.10:80 rr"), "{out}");
}

#[test]
fn output_and_exit_code_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("note.txt");
    std::fs::write(&host, "a file from the host\n").unwrap();
    let out = Vm::builder()
        .file(&host, "/opt/test/note.txt")
        .contents(
            "/usr/local/bin/hello",
            "#!/bin/sh\necho \"hello $1\"\n",
            0o755,
        )
        .script(
            "cat /opt/test/note.txt\nhello guest\necho to-stderr >&2\nfalse\n\
             printf 'no newline'\nexit 7",
        )
        .timeout(Duration::from_secs(120))
        .run()
        .expect("vm");
    assert_eq!(out.exit_code, 7, "{out}");
    assert_eq!(
        out.stdout, "a file from the host\nhello guest\nno newline",
        "{out}"
    );
    assert_eq!(out.stderr, "to-stderr\n", "{out}");
    assert!(!out.success());
}

#[test]
fn a_hung_guest_times_out() {
    let vm = Vm::prepare().expect("prepare");
    let limit = Duration::from_secs(15);
    let t = Instant::now();
    let res = Vm::builder()
        .name("hung-guest")
        .script("echo started; sleep 1000")
        .timeout(limit)
        .run_on(&vm);
    let took = t.elapsed();
    match res {
        Err(VmError::Timeout { after, .. }) => assert_eq!(after, limit),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < limit + Duration::from_secs(3), "{took:?}");
    // qemu is gone: no process runs with this run's result file.
    let ours = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains("logs/hung-guest.result"));
    assert!(!ours, "qemu still runs");
}

#[test]
fn a_relative_guest_path_is_refused() {
    let err = Vm::builder()
        .contents("etc/x", "x", 0o644)
        .script("true")
        .run_on(&Vm::prepare().expect("prepare"))
        .unwrap_err();
    assert!(matches!(err, VmError::GuestPath(_)), "{err}");
}

#[test]
fn a_guest_that_stops_without_exit_status_is_reported() {
    let res = Vm::builder()
        .script("echo going; poweroff -f")
        .timeout(Duration::from_secs(120))
        .run();
    match res {
        Err(VmError::Crashed { tail, .. }) => assert!(tail.contains("TBVM: init"), "{tail}"),
        other => panic!("expected a crash, got {other:?}"),
    }
}
