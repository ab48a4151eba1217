//! `node-sync run --proxy-mode auto` in the testbed's qemu VM (Debian's
//! kernel, which has IPVS): the tutorial Service programmed as kube-proxy's
//! IPVS mode, against the API server stand-in running in the guest.
//! ipvsadm, ipset and iptables-save show the tutorial's state, connections
//! round-robin from the node and from a pod, and the faults: an endpoint
//! removed, a Service without endpoints, malformed objects, SIGKILL and
//! restart, the Service deleted, a switch to nftables and back, the API
//! server gone.

use std::time::{Duration, Instant};

use testbed::image::static_bin;
use testbed::vm::Vm;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-service, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.254.10.128
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web-service, namespace: default}
subsets:
  - addresses: [{ip: 10.244.1.2}, {ip: 10.244.1.3}]
    ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.254.10.200
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sctp, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.254.10.201
  ports: [{name: s, protocol: SCTP, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-endpoints, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.254.10.202
  ports: [{name: http, protocol: TCP, port: 80}]
---
# The API refuses an invalid IP anywhere else; an FQDN slice is where a
# name reaches node-sync, which programs only the slice of addresses.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bad-endpoints-ip
  namespace: default
  labels: {kubernetes.io/service-name: bad-endpoints}
addressType: IPv4
endpoints: [{addresses: [10.244.1.3], conditions: {ready: true}}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bad-endpoints-name
  namespace: default
  labels: {kubernetes.io/service-name: bad-endpoints}
addressType: FQDN
endpoints: [{addresses: [not-an-ip.example], conditions: {ready: true}}]
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

const ONE_ENDPOINT: &str = r#"
apiVersion: v1
kind: Endpoints
metadata: {name: web-service, namespace: default}
subsets:
  - addresses: [{ip: 10.244.1.3}]
    ports: [{name: http, port: 8080, protocol: TCP}]
"#;

const SCRIPT: &str = r#"
set -e
API=/root/api
mkdir -p $API
testbed apiserver --dir $API --port 6443 --node tbvm >/root/api.log 2>&1 &
APIPID=$!
now() { cut -d' ' -f1 /proc/uptime; }
# until CMD succeeds, at most $1 tenths of a second
until_ok() { n=$1; shift; while ! "$@" >/dev/null 2>&1; do n=$((n-1)); [ $n -gt 0 ] || return 1; sleep 0.1; done; }
until_ok 600 test -f $API/tbvm.kubeconfig || { cat /root/api.log >&2; exit 10; }
K="testbed kube --kubeconfig $API/admin.kubeconfig"

@PODS@
until_ok 600 $K apply /root/objects.yaml || { $K apply /root/objects.yaml; cat /root/api.log >&2; exit 11; }

start_node_sync() {
  node-sync --kubeconfig $API/tbvm.kubeconfig --node-name tbvm --node-ip 10.0.2.15 \
    --containerd-socket /run/none.sock --cni-conf-dir /run/none \
    --proxy-mode auto run >>/root/node-sync.log 2>&1 &
  NS=$!
}
rs_count() { ipvsadm -Ln -t 10.254.10.128:80 2>/dev/null | grep -c Masq || true; }
two_rs() { [ "$(rs_count)" = 2 ]; }
start_node_sync
until_ok 900 two_rs || { cat /root/node-sync.log >&2; ipvsadm -Ln >&2; exit 12; }

echo "--- ipvsadm"; ipvsadm -Ln
echo "--- ipset"; ipset list KUBE-CLUSTER-IP; ipset list KUBE-LOOP-BACK
echo "--- iptables"; iptables-save | grep -v '^#'
echo "--- kube-ipvs0"; ip -o addr show dev kube-ipvs0
echo "--- conntrack $(cat /proc/sys/net/ipv4/vs/conntrack)"
get() { timeout 5 wget -q -O - "$@"; }
echo "from-node: $(for n in 1 2 3 4; do get http://10.254.10.128/; done | tr '\n' ' ')"
echo "from-pod: $(for n in 1 2 3 4; do ip netns exec pod3 timeout 5 wget -q -O - http://10.254.10.128/; done | tr '\n' ' ')"
echo "empty: $(timeout 5 wget -q -O - http://10.254.10.200/ 2>&1 | tr '\n' ' ')"
echo "bad-endpoints: $(ipvsadm -Ln -t 10.254.10.202:80 | grep -c Masq)"
echo "status: $(node-sync --kubeconfig $API/tbvm.kubeconfig --node-name tbvm --node-ip 10.0.2.15 --proxy-mode auto status | grep -E '^(proxy|services)' | tr '\n' ' ')"
echo "metrics: $(get http://127.0.0.1:10249/metrics | grep -E '^node_sync_proxy_backend' | tr '\n' ' ')"

# An endpoint removed.
t0=$(now)
$K apply /root/one.yaml >/dev/null
one_rs() { [ "$(rs_count)" = 1 ]; }
until_ok 100 one_rs || { cat /root/node-sync.log >&2; exit 13; }
echo "endpoint-removed: $(echo "$(now) $t0" | awk '{printf "%.2f", $1-$2}') s"
echo "after-removal: $(for n in 1 2 3 4; do get http://10.254.10.128/; done | tr '\n' ' ')"

# SIGKILL and a restart: nothing added twice, nothing flushed.
snapshot() { ipvsadm -Ln; ipset save | grep -v '^create'; iptables-save | grep -v -e '^#' -e '^:'; ip -o addr show dev kube-ipvs0 | awk '{print $4}'; }
snapshot >/root/before
kill -9 $NS
start_node_sync
sleep 8
snapshot >/root/after
if cmp -s /root/before /root/after; then echo "restart: same"; else echo "restart: differs"; diff /root/before /root/after >&2 || true; fi
echo "portals: $(iptables-save -t nat | grep -c -- '-j KUBE-SERVICES')"

# The Service deleted: its virtual server, VIP and set entry go.
$K delete Service web-service >/dev/null
gone() { ! ipvsadm -Ln | grep -q 10.254.10.128; }
until_ok 100 gone || { cat /root/node-sync.log >&2; exit 14; }
sleep 1
echo "deleted: ipvs=$(ipvsadm -Ln | grep -c 10.254.10.128 || true) addr=$(ip -o addr show dev kube-ipvs0 | grep -c 10.254.10.128 || true) set=$(ipset list KUBE-CLUSTER-IP | grep -c 10.254.10.128 || true)"

# Another proxy mode takes over: IPVS's state goes and the nftables table
# serves; then auto (IPVS) takes it back and the table goes.
kill $NS; wait $NS 2>/dev/null || true
node-sync --kubeconfig $API/tbvm.kubeconfig --node-name tbvm --node-ip 10.0.2.15 \
  --containerd-socket /run/none.sock --cni-conf-dir /run/none \
  --proxy-mode nftables services --once >>/root/node-sync.log 2>&1 || { tail -20 /root/node-sync.log >&2; exit 16; }
yn() { "$@" >/dev/null 2>&1 && echo yes || echo no; }
echo "to-nftables: vs=$(ipvsadm -Ln | grep -c -E '^(TCP|UDP)' || true) link=$(yn ip link show kube-ipvs0) sets=$(ipset list -n | grep -c KUBE- || true) chains=$(iptables-save | grep -c KUBE- || true) table=$(yn nft list table ip node-sync)"
# From a pod: without kube-ipvs0 this VM's node has no route to a VIP
# (no default route), as a real node's default route would give it.
echo "via-nftables: $(ip netns exec pod3 timeout 5 wget -q -O - http://10.254.10.202/ 2>&1 | tr '\n' ' ')"
start_node_sync
one_bad() { [ "$(ipvsadm -Ln -t 10.254.10.202:80 2>/dev/null | grep -c Masq)" = 1 ]; }
until_ok 100 one_bad || { cat /root/node-sync.log >&2; exit 15; }
echo "to-ipvs: table=$(yn nft list table ip node-sync) vs=$(ipvsadm -Ln | grep -c -E '^(TCP|UDP)' || true)"
echo "via-ipvs: $(get http://10.254.10.202/ 2>&1 | tr '\n' ' ')"

# The API server gone: what is programmed stays.
kill $APIPID
sleep 5
echo "api-down: alive=$(kill -0 $NS && echo yes) empty=$(ipvsadm -Ln | grep -c 10.254.10.200)"
echo "--- node-sync log" >&2
cat /root/node-sync.log >&2
"#;

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_default()
        .trim()
}

#[test]
fn node_sync_programs_ipvs_in_the_vm() {
    let t = Instant::now();
    let out = Vm::builder()
        .file(static_bin("node-sync"), "/usr/local/bin/node-sync")
        .file(static_bin("testbed"), "/usr/local/bin/testbed")
        .contents(
            "/root/objects.yaml",
            // node-sync's identity lists Nodes, Services and endpoints
            // only with its RBAC, on the stand-in as on a real cluster.
            format!(
                "{}\n---\n{OBJECTS}",
                std::fs::read_to_string(
                    testbed::testdata::dir().join("../deploy/node-sync-rbac.yaml")
                )
                .expect("deploy/node-sync-rbac.yaml")
            ),
            0o644,
        )
        .contents("/root/one.yaml", ONE_ENDPOINT, 0o644)
        .script(SCRIPT.replace("@PODS@", testbed::vm::PODS_ON_A_BRIDGE))
        .timeout(Duration::from_secs(420))
        .run()
        .expect("vm");
    eprintln!(
        "node-sync IPVS VM: qemu {:.1?}, in all {:.1?}",
        out.took,
        t.elapsed()
    );
    assert_eq!(out.exit_code, 0, "{out}");
    let o = &out.stdout;

    // The tutorial's state.
    assert!(o.contains("TCP  10.254.10.128:80 rr"), "{out}");
    assert!(
        o.contains("  -> 10.244.1.2:8080              Masq    1"),
        "{out}"
    );
    assert!(
        o.contains("  -> 10.244.1.3:8080              Masq    1"),
        "{out}"
    );
    assert!(o.contains("TCP  10.254.10.200:80 rr"), "{out}");
    assert!(o.contains("Type: hash:ip,port"), "{out}");
    assert!(o.contains("10.254.10.128,tcp:80"), "{out}");
    assert!(o.contains("Type: hash:ip,port,ip"), "{out}");
    assert!(o.contains("10.244.1.2,tcp:8080,10.244.1.2"), "{out}");
    for rule in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ] {
        assert!(o.contains(rule), "missing {rule}\n{out}");
    }
    assert!(o.contains("inet 10.254.10.128/32"), "{out}");
    assert!(o.contains("--- conntrack 1"), "{out}");

    // Round robin from the node and from a pod.
    for who in ["from-node:", "from-pod:"] {
        let got: Vec<&str> = line(o, who).split_whitespace().collect();
        assert_eq!(got.len(), 4, "{who} {out}");
        assert!(
            got[0] != got[1] && got[0] == got[2] && got[1] == got[3],
            "{who} {got:?}\n{out}"
        );
    }
    // No endpoint: refused at once.
    assert!(line(o, "empty:").contains("Connection refused"), "{out}");
    // Malformed objects skipped, the rest of them programmed.
    assert_eq!(line(o, "bad-endpoints:"), "1", "{out}");
    assert!(
        !o.contains("10.254.10.201"),
        "SCTP is not programmed\n{out}"
    );
    assert!(out.stderr.contains("not-an-ip"), "{out}");
    // auto chose IPVS, and says so.
    assert!(
        line(o, "status:").contains("proxy mode  ipvs (auto)"),
        "{out}"
    );
    assert!(
        line(o, "metrics:").contains("node_sync_proxy_backend{backend=\"ipvs\"} 1"),
        "{out}"
    );

    // The removed endpoint takes no more traffic.
    let secs: f64 = line(o, "endpoint-removed:")
        .trim_end_matches(" s")
        .parse()
        .unwrap_or(f64::MAX);
    eprintln!("IPVS in the VM (TCG): endpoint removal applied in {secs} s");
    assert!(secs < 5.0, "{out}");
    assert_eq!(
        line(o, "after-removal:"),
        "backend-2 backend-2 backend-2 backend-2",
        "{out}"
    );
    assert_eq!(line(o, "restart:"), "same", "{out}");
    assert_eq!(line(o, "portals:"), "2", "{out}");
    assert_eq!(line(o, "deleted:"), "ipvs=0 addr=0 set=0", "{out}");
    // Switching modes leaves one backend, not two.
    assert_eq!(
        line(o, "to-nftables:"),
        "vs=0 link=no sets=0 chains=0 table=yes",
        "{out}"
    );
    assert_eq!(line(o, "via-nftables:"), "backend-2", "{out}");
    // empty, bad-endpoints and the API server's own `kubernetes`.
    assert_eq!(line(o, "to-ipvs:"), "table=no vs=3", "{out}");
    assert_eq!(line(o, "via-ipvs:"), "backend-2", "{out}");
    assert_eq!(line(o, "api-down:"), "alive=yes empty=1", "{out}");
}
