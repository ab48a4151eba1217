#!/usr/bin/env bash
# Demo of what exists so far: our host-local plugin and the Go reference
# share one lease directory, as they would on a node being migrated.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
ours=$(./scripts/build-plugins.sh)/host-local
ref=/usr/lib/cni/host-local
data=$(mktemp -d /tmp/host-local-demo.XXXXXX)
trap 'rm -rf "$data"' EXIT

conf=$(printf '{"cniVersion":"0.3.1","name":"demo","type":"host-local","ipam":{"type":"host-local","subnet":"10.244.1.0/24","dataDir":"%s"}}' "$data")
call() { # impl command container
  CNI_COMMAND=$2 CNI_CONTAINERID=$3 CNI_NETNS=/var/run/netns/demo CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "$1" <<<"$conf"
}
addr() { call "$@" | sed -n 's/.*"address": "\(.*\)".*/\1/p'; }

echo "== ADD web-001 with the reference: $(addr "$ref" ADD web-001)"
echo "== ADD web-002 with ours:          $(addr "$ours" ADD web-002)"
echo "== ADD web-003 with the reference: $(addr "$ref" ADD web-003)"
echo "== leases on disk ($data/demo):"
for f in "$data"/demo/*; do
  printf '   %-22s %s\n' "$(basename "$f")" "$(tr '\r\n' '  ' <"$f")"
done
call "$ours" DEL web-001 && echo "== DEL web-001 (a reference lease) with ours: ok"
call "$ref" DEL web-002 && echo "== DEL web-002 (our lease) with the reference: ok"
call "$ours" DEL web-003 && echo "== DEL web-003 with ours: ok"
left=$(ls "$data/demo")
echo "== left in the lease directory: $(echo $left)"
[[ "$left" == $'last_reserved_ip.0\nlock' ]] && echo "demo ok"
