#!/usr/bin/env bash
# host-local against the Go reference, alternating in one run; prints a
# table of ratios and a RESULT line. Extra arguments go to cni-bench
# (e.g. --runs 50 --leases 1000 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
plugins=$(./scripts/build-plugins.sh)
cargo build --release --locked -q -p cni-bench
exec "${CARGO_TARGET_DIR:-target}/release/cni-bench" host-local \
  --ours "$plugins/host-local" \
  --reference /usr/lib/cni/host-local "$@"
