#!/usr/bin/env bash
# The demo, the README's first command: the tutorial "k8s the heartful way"
# replayed by our binaries on this machine. It installs what is missing,
# builds (release, static: the binaries that ship), then `testbed demo`
# starts the control plane (the real kube-apiserver, kube-controller-manager
# and kube-scheduler when scripts/k8s-assets.sh finds them, else the API
# server stand-in, and it says which), the worker nodes inajob and yuanying
# as network namespaces with a private containerd each, our CNI plugins and
# node-sync on both nodes; applies the tutorial's ReplicaSet and Service,
# runs `pod-runner create` on each node for the pods bound to it, and shows
# each step of the story. Run as root.
#
#   ./scripts/demo.sh          the whole story, then everything is taken down
#   ./scripts/demo.sh --keep   the cluster stays up; prints how to reach it
#   ./scripts/demo.sh down     takes a kept cluster down
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "run the demo as root (it creates network namespaces and runs containerd)" >&2
  exit 1
fi
orchestrator=target/debug/testbed
if [[ ${1:-} == down ]]; then
  exec "$orchestrator" demo-down
fi
keep=0
case "${1:-}" in
  "") ;;
  --keep) keep=1 ;;
  *)
    echo "usage: $0 [--keep | down]" >&2
    exit 2
    ;;
esac

./scripts/deps.sh
# The real control plane when its binaries are here; else the demo says
# it runs the stand-in.
if assets=$(./scripts/k8s-assets.sh 2>/dev/null); then
  export KUBEBUILDER_ASSETS=$assets
fi
echo "== building the binaries (release, static)" >&2
bins=$(./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed)
echo "== building the demo's orchestrator" >&2
# A debug build: it unwinds on a failed step, so everything it started is
# taken down (the release profile aborts on panic).
cargo build --locked -p testbed --bin testbed

if ((keep == 0)); then
  exec "$orchestrator" demo --bin-dir "$bins"
fi

# --keep: the demo holds the cluster in the background; follow its output
# until it says the cluster is up (or fails).
log=/var/tmp/heartful-demo.log
: >"$log"
setsid "$orchestrator" demo --bin-dir "$bins" --keep >"$log" 2>&1 </dev/null &
pid=$!
shown=0
while :; do
  lines=$(wc -l <"$log")
  if ((lines > shown)); then
    sed -n "$((shown + 1)),${lines}p" "$log"
    shown=$lines
  fi
  if grep -q '^Take it down with' "$log"; then
    echo "(the demo runs as pid $pid; its output: $log)"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    sed -n "$((shown + 1)),\$p" "$log"
    wait "$pid" || true
    echo "the demo failed; its output: $log" >&2
    exit 1
  fi
  sleep 0.2
done
