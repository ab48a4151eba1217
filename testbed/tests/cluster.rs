//! Emulated nodes reach each other across the LAN, and leave nothing behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use testbed::cluster::{Cluster, INAJOB, YUANYING};

fn our_netns() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&testbed::netns::run_prefix()) && l.contains("-two-"))
        .map(String::from)
        .collect()
}

#[test]
fn two_nodes_reach_each_other_over_tcp_across_the_lan() {
    {
        let c = Cluster::tutorial("two");
        let (a, b) = (c.node(INAJOB.0), c.node(YUANYING.0));
        assert!(a.sh("ip -o addr show eth0").contains("192.168.43.111/24"));
        let addr = SocketAddr::from((YUANYING.1, 7000));
        let listener = b.run(|| TcpListener::bind(addr)).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().expect("accept");
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).expect("read");
            s.write_all(&buf[..n]).expect("write");
            peer
        });
        let echoed = a.run(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.write_all(b"from inajob")?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf)?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        assert_eq!(echoed.expect("echo"), "from inajob");
        let peer = server.join().expect("server");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(INAJOB.1),
            "no NAT on the LAN"
        );
        assert_eq!(our_netns().len(), 3, "{:?}", our_netns());
    }
    assert!(our_netns().is_empty(), "left behind: {:?}", our_netns());
}

#[test]
fn stale_namespaces_of_a_killed_run_are_reaped() {
    // A netns named as a run whose PID no longer exists.
    let dead = "tb-4194304999-stale-lan";
    let _ = Command::new("ip").args(["netns", "add", dead]).output();
    let _c = Cluster::new("reap");
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(dead));
}
