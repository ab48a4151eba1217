#!/usr/bin/env bash
# pod-runner's daemon (`pod-runner run`) against its one-shot path
# (`pod-runner create` launched as soon as a pod is bound), in one run, on
# one emulated node that this run creates and removes, against a real
# control plane (etcd and kube-apiserver from KUBEBUILDER_ASSETS, the
# node's own identity for pod-runner): bound to Running+Ready latency pod
# by pod, 30 pods bound at once, deletion, and the daemon's RSS; prints a
# table of ratios and a RESULT line. Extra arguments go to cni-bench (e.g.
# --runs 5 --burst 10 for a quick look). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
KUBEBUILDER_ASSETS=$(./scripts/k8s-assets.sh)
export KUBEBUILDER_ASSETS
bins=$(./scripts/build-plugins.sh -p pod-runner -p testbed)
# Release, unwinding: the testbed's drops stop containerd and delete the
# netns on a failed step (see bench/pod-runner.sh).
cargo build --locked -q -p cni-bench --profile bench-unwind \
  --config 'profile.bench-unwind.inherits="release"' \
  --config 'profile.bench-unwind.panic="unwind"'
exec "${CARGO_TARGET_DIR:-target}/bench-unwind/cni-bench" pod-daemon \
  --ours "$bins" "$@"
