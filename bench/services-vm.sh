#!/usr/bin/env bash
# node-sync's IPVS backend against its nftables backend, in the same qemu VM
# (Debian's kernel under TCG: this host's kernel has no IPVS). Absolute
# figures under TCG mean little; the ratio IPVS / nftables is the result.
#
# In the guest: the API server stand-in with N ClusterIP Services of one
# TCP port, each with an Endpoints of 3 addresses; then for each backend,
# node-sync started cold (`run --proxy-mode <backend>`) until it reports
# the Services programmed (its log line `services: <backend> programmed`
# with `took=`, the apply alone), then C single-endpoint changes (one
# Endpoints replaced) each timed from the API write to the change in the
# kernel (ipvsadm / nft listing of that service, polled every 10 ms), and
# node-sync's peak RSS (VmHWM). The backends run one after the other on a
# clean kernel state.
#
#   ./bench/services-vm.sh [N services, default 1000] [C changes, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
C=${2:-5}
if [[ $(id -u) -ne 0 ]]; then
  echo "run as root (qemu, the VM's kernel cache)" >&2
  exit 1
fi
./scripts/deps.sh
bins=$(./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed)
work=$(mktemp -d /tmp/services-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The objects: Service svc-i with clusterIP 10.96.(i/250).(i%250+1), and
# its Endpoints 10.244.(i/80).(3*(i%80)+{1,2,3}):8080.
python3 - "$N" >"$work/objects.yaml" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    vip = f"10.96.{i // 250}.{i % 250 + 1}"
    a, b = i // 80, 3 * (i % 80)
    eps = ", ".join(f"{{ip: 10.244.{a}.{b + k}}}" for k in (1, 2, 3))
    print(f"""---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: default}}
spec: {{type: ClusterIP, clusterIP: {vip}, ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: svc-{i}, namespace: default}}
subsets: [{{addresses: [{eps}], ports: [{{name: http, port: 8080, protocol: TCP}}]}}]""")
PY

cat >"$work/guest.sh" <<EOF
N=$N
C=$C
EOF
cat >>"$work/guest.sh" <<'EOF'
set -e
now() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(now) $1" | awk '{printf "%.3f", $1 - $2}'; }   # seconds since $1
over() { [ "$(since "$1" | awk -v l="$2" '{print ($1 > l)}')" = 1 ]; }   # more than $2 s since $1
API=/root/api
mkdir -p $API
testbed apiserver --dir $API --port 6443 --node tbvm >/root/api.log 2>&1 &
i=0; until [ -f $API/tbvm.kubeconfig ]; do i=$((i+1)); [ $i -lt 600 ] || exit 10; sleep 0.1; done
K="testbed kube --kubeconfig $API/admin.kubeconfig"
until $K apply /root/objects.yaml >/dev/null 2>/root/apply.err; do sleep 0.5; done
echo "objects: $N services, $N endpoints"
clean() {
  nft delete table ip node-sync 2>/dev/null || true
  ipvsadm -C; ip link del kube-ipvs0 2>/dev/null || true
  iptables -t nat -F; iptables -t nat -X; iptables -F; iptables -X
  ipset destroy 2>/dev/null || true
}
has_change() { # backend vip ip
  if [ "$1" = ipvs ]; then ipvsadm -Ln -t "$2:80" | grep -q "$3:8080"
  else nft list chain ip node-sync "svc_$(echo "$2" | tr . _)_tcp_80" 2>/dev/null | grep -q "$3:8080"; fi
}
for backend in nftables ipvs; do
  clean
  : >/root/ns.log
  t0=$(now)
  NO_COLOR=1 node-sync --kubeconfig $API/tbvm.kubeconfig --node-name tbvm --node-ip 10.0.2.15 \
    --containerd-socket /run/none.sock --cni-conf-dir /run/none --metrics-addr 127.0.0.1:10249 \
    --proxy-mode $backend run >>/root/ns.log 2>&1 &
  pid=$!
  until grep -q "services: $backend programmed services=$N" /root/ns.log; do
    kill -0 $pid || { cat /root/ns.log >&2; exit 11; }
    if over "$t0" 300; then
      echo "$backend: not programmed after 300 s" >&2; tail -20 /root/ns.log >&2; exit 12
    fi
    sleep 0.05
  done
  t1=$(now)
  took=$(grep "services: $backend programmed services=$N" /root/ns.log | head -1 | sed 's/.*took=\([^ ]*\).*/\1/')
  echo "$backend cold: $(echo "$t1 $t0" | awk '{printf "%.2f", $1 - $2}') s from start; apply took=$took"
  changes=""
  for c in $(seq 1 $C); do
    j=$((c * 7 % N))
    vip="10.96.$((j / 250)).$((j % 250 + 1))"
    [ $backend = ipvs ] && new="10.246.$c.$c" || new="10.245.$c.$c"
    a=$((j / 80)); b=$((3 * (j % 80)))
    cat >/root/ep.yaml <<YAML
apiVersion: v1
kind: Endpoints
metadata: {name: svc-$j, namespace: default}
subsets: [{addresses: [{ip: 10.244.$a.$((b+1))}, {ip: 10.244.$a.$((b+2))}, {ip: $new}], ports: [{name: http, port: 8080, protocol: TCP}]}]
YAML
    t2=$(now)
    $K apply /root/ep.yaml >/dev/null
    until has_change $backend $vip $new; do
      if over "$t2" 60; then
        echo "$backend: change $c not in the kernel after 60 s" >&2; tail -20 /root/ns.log >&2; exit 13
      fi
      sleep 0.01
    done
    changes="$changes $(since "$t2")"
  done
  last=$(grep "services: $backend programmed" /root/ns.log | tail -1 | sed 's/.*took=\([^ ]*\).*/\1/')
  echo "$backend changes (API write to kernel, s):$changes; last apply took=$last"
  echo "$backend peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2}') KiB"
  kill $pid; wait $pid 2>/dev/null || true
done
EOF

echo "== $N Services x 3 endpoints, $C changes, nftables then IPVS, in one VM (TCG)"
"$bins/testbed" vm "$work/guest.sh" \
  --file "$bins/node-sync:/usr/local/bin/node-sync" \
  --file "$bins/testbed:/usr/local/bin/testbed" \
  --file "$work/objects.yaml:/root/objects.yaml" \
  --timeout-seconds 1800 | tee "$work/out.txt"

# Ratios IPVS / nftables.
python3 - "$work/out.txt" <<'PY'
import re, sys, statistics
text = open(sys.argv[1]).read()
def secs(v):
    m = re.match(r"([\d.]+)(ns|µs|us|ms|s)$", v)
    if not m: return float("nan")
    x, u = float(m.group(1)), m.group(2)
    return x * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1}[u]
r = {}
for b in ("nftables", "ipvs"):
    cold = re.search(rf"^{b} cold: ([\d.]+) s from start; apply took=(\S+)", text, re.M)
    ch = re.search(rf"^{b} changes \(API write to kernel, s\): ([\d. ]+);", text, re.M)
    rss = re.search(rf"^{b} peak RSS: (\d+) KiB", text, re.M)
    r[b] = dict(cold=float(cold.group(1)), apply=secs(cold.group(2)),
                change=statistics.median(float(x) for x in ch.group(1).split()),
                rss=int(rss.group(1)) / 1024)
print()
print(f"{'measure (TCG)':<34}{'nftables':>12}{'ipvs':>12}{'ipvs/nft':>10}")
for k, label, unit in (("cold", "cold start to programmed", "s"), ("apply", "first apply (node-sync's took)", "s"),
                       ("change", "one endpoint change, median", "s"), ("rss", "peak RSS", "MiB")):
    a, b = r["nftables"][k], r["ipvs"][k]
    print(f"{label:<34}{a:>10.3f}{unit:>2}{b:>10.3f}{unit:>2}{b / a:>10.2f}")
PY
