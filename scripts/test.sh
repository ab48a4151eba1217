#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and
# lints, builds, and runs every test. Run as root (the tests create files
# the reference plugins must be able to read, and later network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
if [[ $(id -u) -ne 0 ]]; then
  echo "run the tests as root" >&2
  exit 1
fi
# The real control plane of the end-to-end tests (envtest's convention).
KUBEBUILDER_ASSETS=$(./scripts/k8s-assets.sh)
export KUBEBUILDER_ASSETS
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Static binaries for the test images (pause, web) and the shipped plugins.
TESTBED_STATIC_DIR=$(./scripts/build-plugins.sh -p pod-runner -p testbed -p node-sync)
export TESTBED_STATIC_DIR
cargo test --workspace --locked --no-fail-fast
./scripts/leftovers.sh
