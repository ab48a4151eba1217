//! The qemu VM runner: IPVS round-robin in Debian's kernel, a project
//! binary passed in, exit codes, and the timeout.

use std::time::{Duration, Instant};

use testbed::image::static_bin;
use testbed::vm::{Vm, VmError};

const IPVS: &str = r#"
VIP=10.96.0.10
ip link add kube-ipvs0 type dummy
ip addr add $VIP/32 dev kube-ipvs0
ip link add cni0 type bridge
ip addr add 10.244.1.1/24 dev cni0
ip link set cni0 up
sysctl -qw net.ipv4.ip_forward=1
for i in 1 2 3; do
  ip netns add pod$i
  ip link add vp$i type veth peer name eth0 netns pod$i
  ip link set vp$i master cni0 up
  ip -n pod$i addr add 10.244.1.$((i+1))/24 dev eth0
  ip -n pod$i link set eth0 up
  ip -n pod$i link set lo up
  ip -n pod$i route add default via 10.244.1.1
done
for i in 1 2; do
  mkdir -p /www$i; echo "backend-$i" > /www$i/index.html
  ip netns exec pod$i httpd -p 8080 -h /www$i
done
ipvsadm -A -t $VIP:80 -s rr
ipvsadm -a -t $VIP:80 -r 10.244.1.2:8080 -m
ipvsadm -a -t $VIP:80 -r 10.244.1.3:8080 -m
sleep 0.3
echo -n "from-node:"
for n in 1 2 3 4; do echo -n " $(timeout 5 wget -q -O - http://$VIP/)"; done; echo
sysctl -qw net.ipv4.vs.conntrack=1
iptables -t nat -A POSTROUTING -m ipvs --vaddr $VIP/32 --vport 80 -j MASQUERADE
echo -n "from-pod:"
for n in 1 2 3 4; do echo -n " $(ip netns exec pod3 timeout 5 wget -q -O - http://$VIP/)"; done; echo
ipset create KUBE-CLUSTER-IP hash:ip,port
ipset add KUBE-CLUSTER-IP $VIP,tcp:80
echo "ipset: $(ipset list KUBE-CLUSTER-IP | grep -c $VIP)"
hostname tbvm
PORT=9090 web &
sleep 0.5
echo "web: $(timeout 5 wget -q -O - http://127.0.0.1:9090/)"
"#;

fn alternates(line: &str) -> bool {
    let got: Vec<&str> = line.split_whitespace().skip(1).collect();
    got.len() == 4
        && got[0] != got[1]
        && got[0] == got[2]
        && got[1] == got[3]
        && got.iter().all(|g| g.starts_with("backend-"))
}

#[test]
fn ipvs_round_robin_in_the_vm() {
    let out = Vm::new()
        .file(static_bin("web"), "web")
        .script(IPVS)
        .timeout(Duration::from_secs(300))
        .run()
        .expect("vm");
    eprintln!("VM run took {:?}", out.took);
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let line = |p: &str| {
        out.output
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or("")
            .to_string()
    };
    assert!(alternates(&line("from-node:")), "{}", out.output);
    assert!(alternates(&line("from-pod:")), "{}", out.output);
    assert_eq!(line("ipset:"), "ipset: 1", "{}", out.output);
    assert_eq!(line("web:"), "web: tbvm", "{}", out.output);
}

#[test]
fn exit_codes_and_output_come_back() {
    let out = Vm::new()
        .script("set +e\necho hello from the guest\nfalse\necho after\nexit 7")
        .run()
        .expect("vm");
    assert_eq!(out.exit_code, 7, "{}", out.output);
    assert!(
        out.output.contains("hello from the guest\nafter"),
        "{}",
        out.output
    );
}

#[test]
fn a_hung_guest_times_out() {
    let t = Instant::now();
    match Vm::new()
        .script("sleep 1000")
        .timeout(Duration::from_secs(12))
        .run()
    {
        Err(VmError::Timeout(..)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}
