#!/usr/bin/env bash
# The kubelet's CNI path, ours against the Go reference: a private containerd
# with its CRI plugin per side, each on an emulated node of its own (network
# namespaces this run creates and deletes), `crictl runp` to a ready sandbox
# and `crictl stopp`, alternating pod by pod; prints a table of ratios and a
# RESULT line. Extra arguments go to cni-bench (e.g. --runs 5). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
KUBEBUILDER_ASSETS=$(./scripts/k8s-assets.sh) # crictl
export KUBEBUILDER_ASSETS
bins=$(./scripts/build-plugins.sh -p pod-runner)
# The testbed's setup panics on a failed step, and only unwinding runs the
# drops that stop containerd and delete the netns (see bench/pod-runner.sh).
cargo build --locked -q -p cni-bench --profile bench-unwind \
  --config 'profile.bench-unwind.inherits="release"' \
  --config 'profile.bench-unwind.panic="unwind"'
exec "${CARGO_TARGET_DIR:-target}/bench-unwind/cni-bench" cri \
  --ours "$bins" --reference /usr/lib/cni --pause "$bins/pause" "$@"
