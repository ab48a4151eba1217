//! The nftables Services backend against a real kernel, in namespaces the
//! test makes: one node (inajob) with a bridge `cni0` 10.244.1.1/24 and
//! three pods on it, two of them (web-a, web-b) answering their name and
//! the peer address they see on :8080. The tutorial Service
//! 10.254.10.128:80 is programmed in the node netns with `render` + `apply`,
//! and reached from the node, from the third pod, and from a backend
//! itself; a Service without endpoints refuses at once; a removed Service
//! leaves no trace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use node_sync::services::nft::{apply_in, programmed_in, render};
use node_sync::services::{Proto, ServicePort};
use testbed::Netns;
use testbed::cluster::{Cluster, INAJOB};
use testbed::http::serve_name;

const VIP: &str = "10.254.10.128:80";
const EMPTY_VIP: &str = "10.254.10.129:80";

struct Env {
    // Pods before the cluster: their veths go with the node netns anyway.
    pods: Vec<Netns>,
    cluster: Cluster,
}

impl Env {
    fn new(tag: &str) -> Env {
        let mut cluster = Cluster::new(tag);
        cluster.add_node(INAJOB.0, INAJOB.1);
        let node = cluster.node(INAJOB.0);
        // A default route as on a real node: the VIPs are reached through it
        // before DNAT, and the node's source address (192.168.43.111) is
        // outside the cluster CIDR.
        node.sh(
            "ip link add cni0 type bridge && ip addr add 10.244.1.1/24 dev cni0 && \
             ip link set cni0 up && ip route add default via 192.168.43.1 dev eth0 && \
             echo 1 > /proc/sys/net/ipv4/ip_forward",
        );
        let mut pods = Vec::new();
        for i in 2..=4 {
            let pod = Netns::new("pod");
            node.sh(&format!(
                "ip link add veth{i} type veth peer name eth0 netns {pod} && \
                 ip link set veth{i} master cni0 up",
                pod = pod.name()
            ));
            pod.sh(&format!(
                "ip addr add 10.244.1.{i}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via 10.244.1.1"
            ));
            pods.push(pod);
        }
        Env { pods, cluster }
    }

    fn node(&self) -> &Netns {
        &self.cluster.node(INAJOB.0).ns
    }

    fn node_path(&self) -> PathBuf {
        self.node().path()
    }

    fn apply(&self, services: &[ServicePort]) {
        let script = render(
            services,
            "10.244.0.0/16".parse::<IpNetwork>().expect("cidr"),
        );
        apply_in(Some(&self.node_path()), &script)
            .unwrap_or_else(|e| panic!("{e}\nscript:\n{script}"));
    }

    fn programmed(&self) -> Vec<ServicePort> {
        programmed_in(Some(&self.node_path())).expect("programmed")
    }

    fn listing(&self) -> String {
        self.node()
            .try_sh("nft list table ip node-sync")
            .unwrap_or_default()
    }
}

fn tutorial(endpoints: &[&str]) -> ServicePort {
    ServicePort {
        vip: "10.254.10.128".parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
        endpoints: endpoints.iter().map(|e| e.parse().expect("ep")).collect(),
    }
}

fn empty() -> ServicePort {
    ServicePort {
        vip: "10.254.10.129".parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
        endpoints: Vec::new(),
    }
}

/// DNS-like UDP ports, one with an endpoint and one without: the kernel
/// takes the UDP DNAT and the ICMP reject.
fn udp() -> [ServicePort; 2] {
    let mk = |vip: &str, endpoints: Vec<SocketAddr>| ServicePort {
        vip: vip.parse().expect("vip"),
        port: 53,
        proto: Proto::Udp,
        endpoints,
    };
    [
        mk("10.254.0.10", vec!["10.244.1.2:53".parse().expect("ep")]),
        mk("10.254.0.11", Vec::new()),
    ]
}

/// The bodies of `n` GETs to the VIP from `ns`: "<backend> <peer it saw>".
fn bodies(ns: &Netns, n: usize) -> Vec<String> {
    let addr: SocketAddr = VIP.parse().expect("addr");
    (0..n)
        .map(|_| {
            let r = testbed::http::get(ns, addr);
            r.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string()
        })
        .collect()
}

/// Four answers that alternate between web-a and web-b, every backend
/// seeing `peer` as the client.
fn assert_alternates(got: &[String], peer: &str, from: &str) {
    let names: Vec<&str> = got
        .iter()
        .map(|b| b.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(names.len(), 4, "from {from}: {got:?}");
    assert_ne!(names[0], names[1], "from {from}: {got:?}");
    assert_eq!(names[0], names[2], "from {from}: {got:?}");
    assert_eq!(names[1], names[3], "from {from}: {got:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["web-a", "web-a", "web-b", "web-b"], "from {from}");
    for b in got {
        assert!(b.ends_with(&format!(" {peer}")), "from {from}: {b:?}");
    }
}

/// Bridged traffic passes the ip hooks (br_netfilter, the default in a
/// new netns once the module is loaded, and what Kubernetes nodes run).
#[test]
fn services_with_br_netfilter() {
    let env = Env::new("svc");
    env.node()
        .sh("echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables");
    exercise(&env, true);
}

/// Bridged traffic bypasses netfilter: the hairpin chain's masquerade is
/// what makes a neighbour on cni0 answer through the node.
#[test]
fn services_without_br_netfilter() {
    let env = Env::new("svcnobr");
    env.node()
        .sh("echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables");
    exercise(&env, false);
}

fn exercise(env: &Env, br_netfilter: bool) {
    let t0 = Instant::now();
    serve_name(&env.pods[0], "web-a");
    serve_name(&env.pods[1], "web-b");
    let both = ["10.244.1.2:8080", "10.244.1.3:8080"];

    // Nothing programmed yet: no table, nothing to adopt.
    assert!(env.programmed().is_empty());
    let mut all = vec![tutorial(&both), empty()];
    all.extend(udp());
    env.apply(&all);
    all.sort();
    assert_eq!(env.programmed(), all);
    eprintln!(
        "br_netfilter {br_netfilter}: programmed in {:?}",
        t0.elapsed()
    );

    // The node: off-cluster source, masqueraded to the bridge address.
    assert_alternates(&bodies(env.node(), 4), "10.244.1.1", "the node");
    // The third pod, a neighbour of both backends on cni0: hairpin
    // masquerade, so replies come back through the node's conntrack.
    assert_alternates(&bodies(&env.pods[2], 4), "10.244.1.1", "pod 10.244.1.4");
    // A backend through the VIP, reaching itself every other time. With
    // br_netfilter, a DNAT to a neighbour on the same bridge is bridged
    // back out of the port it came in on: that takes the port's hairpin
    // mode, which the bridge plugin sets with "hairpinMode": true.
    // Without br_netfilter it is routed back out of cni0 and needs nothing.
    if br_netfilter {
        env.node()
            .sh("echo 1 > /sys/class/net/veth2/brport/hairpin_mode");
    }
    assert_alternates(&bodies(&env.pods[0], 4), "10.244.1.1", "pod 10.244.1.2");

    // No endpoints: a TCP reset, not a timeout.
    for ns in [env.node(), &env.pods[2]] {
        let t = Instant::now();
        let r = ns.run(|| {
            TcpStream::connect_timeout(&EMPTY_VIP.parse().expect("addr"), Duration::from_secs(3))
        });
        let err = r.expect_err("connected to a Service without endpoints");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    // Applying again is idempotent; then the empty Service goes, and with
    // it every trace; an endpoint goes and the rest keep answering.
    env.apply(&all);
    env.apply(&[tutorial(&both)]);
    assert_eq!(env.programmed(), vec![tutorial(&both)]);
    let listing = env.listing();
    assert!(!listing.contains("10.254.10.129"), "{listing}");
    assert!(!listing.contains("10_254_10_129"), "{listing}");
    assert!(!listing.contains("udp"), "{listing}");

    env.apply(&[tutorial(&["10.244.1.3:8080"])]);
    assert_eq!(env.programmed(), vec![tutorial(&["10.244.1.3:8080"])]);
    assert!(!env.listing().contains("10.244.1.2"));
    for b in bodies(env.node(), 2) {
        assert!(b.starts_with("web-b "), "{b}");
    }

    // Nothing to program: the table stays, empty.
    env.apply(&[]);
    assert!(env.programmed().is_empty());
    eprintln!(
        "br_netfilter {br_netfilter}: all done in {:?}",
        t0.elapsed()
    );
}

/// A connection open across a rewrite of the table (a restart adopting
/// what is programmed, or any later sync) keeps working: conntrack holds
/// its NAT binding.
#[test]
fn a_rewrite_keeps_live_connections() {
    let env = Env::new("svclive");
    let both = ["10.244.1.2:8080", "10.244.1.3:8080"];
    // An echo server: a long-lived connection to talk over.
    let l = env.pods[0]
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .expect("bind");
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    env.apply(&[tutorial(&both[..1])]);
    let mut c = env
        .node()
        .run(|| TcpStream::connect_timeout(&VIP.parse().expect("addr"), Duration::from_secs(3)))
        .expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut echo = |msg: &[u8]| {
        c.write_all(msg).expect("write");
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).expect("read");
        assert_eq!(buf, msg);
    };
    echo(b"before");
    // Adoption: read back, render, apply: the same rules, rewritten.
    let adopted = env.programmed();
    assert_eq!(adopted, vec![tutorial(&both[..1])]);
    env.apply(&adopted);
    echo(b"after adoption");
    // A new backend added around it: the open connection stays put.
    env.apply(&[tutorial(&both)]);
    echo(b"after adding web-b");
}

/// The chain names the table holds, sorted.
fn chains(listing: &str) -> Vec<String> {
    let mut c: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches(" {").to_string())
        .collect();
    c.sort();
    c
}

/// Updates that touch only what differs (an endpoint removed or added, a
/// Service added or removed, a Service losing every endpoint) leave the
/// kernel exactly as a whole rewrite would: the same services read back,
/// the same chains, no leftovers; and traffic follows.
#[test]
fn incremental_updates_match_a_rewrite() {
    use node_sync::services::nft::{read_in, render_changes};
    use node_sync::services::nft_gen::generation;
    let env = Env::new("svcinc");
    let reference = Env::new("svcref");
    serve_name(&env.pods[0], "web-a");
    serve_name(&env.pods[1], "web-b");
    let cidr = "10.244.0.0/16".parse::<IpNetwork>().expect("cidr");
    let both = ["10.244.1.2:8080", "10.244.1.3:8080"];
    let mut states: Vec<Vec<ServicePort>> = vec![
        vec![tutorial(&both), empty()],
        // An endpoint replaced: its element only, the rule stays.
        vec![tutorial(&["10.244.1.3:8080", "10.244.1.9:8080"]), empty()],
        vec![tutorial(&both[1..]), empty()],
        vec![tutorial(&both[1..]), empty(), udp()[0].clone()],
        vec![tutorial(&both), udp()[1].clone()],
        vec![tutorial(&[]), udp()[0].clone()],
        vec![tutorial(&both)],
        vec![],
    ];
    for s in &mut states {
        s.sort();
    }
    env.apply(&states[0]);
    for pair in states.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let script = render_changes(prev, next, cidr).expect("a change");
        let before = env.node().run(generation).expect("generation");
        apply_in(Some(&env.node_path()), &script)
            .unwrap_or_else(|e| panic!("{e}\nscript:\n{script}"));
        // One transaction, which the resync's check sees.
        assert_eq!(env.node().run(generation).expect("generation"), before + 1);
        // Exactly node-sync's shape: nothing left over, nothing missing.
        let read = read_in(Some(&env.node_path()))
            .expect("read")
            .expect("the table");
        assert!(read.clean, "{}\nscript:\n{script}", env.listing());
        assert_eq!(&read.ports, next, "script:\n{script}");
        reference.apply(next);
        assert_eq!(
            chains(&env.listing()),
            chains(&reference.listing()),
            "script:\n{script}"
        );
        let vip = VIP.parse::<SocketAddr>().expect("vip").ip();
        if next.iter().any(|s| s.vip == vip && s.endpoints.len() == 1) {
            for b in bodies(env.node(), 2) {
                assert!(b.starts_with("web-b "), "{b}");
            }
        }
    }
    assert_eq!(render_changes(&states[1], &states[1], cidr), None);
}
