#!/usr/bin/env bash
# Builds the CNI plugins for shipping: release, statically linked like the
# Go reference plugins, so they run from /opt/cni/bin on any node and skip
# the dynamic loader (a quarter of a call's cost). Prints the directory
# that holds them.
#
# crt-static must not reach build scripts or proc-macros, so the target is
# named explicitly: cargo then applies the target's rustflags to target
# artifacts only.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=$(rustc -vV | sed -n 's/^host: //p')
var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$var=-C target-feature=+crt-static"
# Quiet unless someone watches: then cargo shows its progress bar.
quiet=(-q)
[[ -t 2 ]] && quiet=()
cargo build --release --locked "${quiet[@]}" --target "$triple" -p host-local-ipam -p cni-bridge "$@"
echo "${CARGO_TARGET_DIR:-$PWD/target}/$triple/release"
