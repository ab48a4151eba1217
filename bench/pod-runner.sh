#!/usr/bin/env bash
# pod-runner's pod startup (create to Running, image present) and delete
# against a shell baseline doing the tutorial's steps with ctr and the
# reference plugins (bench/baseline-pod.sh), pod by pod in one run, on one
# emulated node that this run creates and removes, against a real control
# plane (etcd and kube-apiserver from KUBEBUILDER_ASSETS, the node's own
# identity for both sides); prints a table of ratios and a RESULT line.
# Extra arguments go to cni-bench (e.g. --runs 5 for a quick look). Run as
# root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
KUBEBUILDER_ASSETS=$(./scripts/k8s-assets.sh)
export KUBEBUILDER_ASSETS
bins=$(./scripts/build-plugins.sh -p pod-runner -p testbed)
# The release profile aborts on panic; the testbed's setup panics on a
# failed step, and only unwinding runs the drops that stop containerd and
# delete the netns. So this bench gets its own profile: release, unwinding
# (and its own directory under target/, so it does not rebuild the others).
cargo build --locked -q -p cni-bench --profile bench-unwind \
  --config 'profile.bench-unwind.inherits="release"' \
  --config 'profile.bench-unwind.panic="unwind"'
exec "${CARGO_TARGET_DIR:-target}/bench-unwind/cni-bench" pod-startup \
  --ours "$bins" --reference /usr/lib/cni --scripts "$PWD/bench" "$@"
