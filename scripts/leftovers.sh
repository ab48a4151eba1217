#!/usr/bin/env bash
# Fails when the test suite left anything of ours running or configured:
# network namespaces (tb-*, cb-*, and pod-runner's sandboxes cni-*),
# containerd or shims started from our temporary state dirs, qemu, an
# API server stand-in, or a control plane (etcd, kube-*) and its files.
set -uo pipefail
left=0
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(tb-|cb-|cni-)' || true)
if [[ -n "$ns" ]]; then
  echo "leftover network namespaces: $ns" >&2
  left=1
fi
procs=$(pgrep -af 'containerd .*--config .*/tb-ctrd-|containerd-shim-runc-v2 .*tb-ctrd-|qemu-system-x86_64|testbed apiserver|etcd .*--data-dir=.*/tb-[0-9]+-etcd-|kube-(apiserver|controller-manager|scheduler|proxy) .*/tb-[0-9]+-cp-' || true)
if [[ -n "$procs" ]]; then
  echo "leftover processes:" >&2
  echo "$procs" >&2
  left=1
fi
mounts=$(grep -E 'tb-ctrd-' /proc/self/mounts || true)
if [[ -n "$mounts" ]]; then
  echo "leftover mounts:" >&2
  echo "$mounts" >&2
  left=1
fi
dirs=$(ls -d /dev/shm/tb-*-etcd-* /tmp/tb-*-cp-* 2>/dev/null || true)
if [[ -n "$dirs" ]]; then
  echo "leftover control plane directories: $dirs" >&2
  left=1
fi
exit $left
