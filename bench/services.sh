#!/usr/bin/env bash
# node-sync's ClusterIP Services (nftables backend) with 10,000 Services
# in the API, on one emulated node that this run creates and removes: the
# full sync from a cold start, single endpoint changes to the kernel, peak
# RSS of node-sync, and `nft -f` of the same table on its own; prints a
# table against the targets and a RESULT line. Extra arguments go to
# `cni-bench services` (e.g. --services 5000, --changes 50). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# node-sync as shipped: release, static. build-plugins.sh prints its dir.
bins=$(./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed)
# Release, but unwinding, so a panic in the testbed's setup still stops
# node-sync and deletes the netns (see bench/node-sync.sh).
cargo build --locked -q -p cni-bench --profile bench-unwind \
  --config 'profile.bench-unwind.inherits="release"' \
  --config 'profile.bench-unwind.panic="unwind"'
exec "${CARGO_TARGET_DIR:-target}/bench-unwind/cni-bench" services \
  --node-sync "$bins/node-sync" "$@"
