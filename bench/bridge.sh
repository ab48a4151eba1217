#!/usr/bin/env bash
# bridge against the Go reference, each on its own emulated node (network
# namespaces this run creates and deletes), alternating in one run; prints a
# table of ratios and a RESULT line. Extra arguments go to cni-bench
# (e.g. --runs 50 --parallel 16 for a quick look). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
plugins=$(./scripts/build-plugins.sh)
cargo build --release --locked -q -p cni-bench
exec "${CARGO_TARGET_DIR:-target}/release/cni-bench" bridge \
  --ours "$plugins" --reference /usr/lib/cni "$@"
