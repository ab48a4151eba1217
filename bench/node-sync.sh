#!/usr/bin/env bash
# node-sync's routes reconciler with 1,000 other Nodes in the API, on one
# emulated node that this run creates and removes: routes programmed from a
# cold start, single Node changes to the kernel, peak RSS of node-sync;
# prints a table against the targets and a RESULT line. Extra arguments go
# to `cni-bench node-sync` (e.g. --nodes 5000, --changes 50). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# node-sync as shipped: release, static. build-plugins.sh prints its dir.
bins=$(./scripts/build-plugins.sh -p node-sync)
# The release profile aborts on panic; the testbed's setup panics on a
# failed step, and only unwinding runs the drops that stop node-sync and
# delete the netns (see bench/pod-runner.sh).
cargo build --locked -q -p cni-bench --profile bench-unwind \
  --config 'profile.bench-unwind.inherits="release"' \
  --config 'profile.bench-unwind.panic="unwind"'
exec "${CARGO_TARGET_DIR:-target}/bench-unwind/cni-bench" node-sync \
  --node-sync "$bins/node-sync" "$@"
