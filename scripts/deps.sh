#!/usr/bin/env bash
# Installs what the build, the tests and the demo need and are missing, on
# Debian 12 as root. Safe to run again: it only installs what is absent.
set -euo pipefail

APT_PACKAGES=(
  containernetworking-plugins # the Go reference plugins, for differential tests and benchmarks
  iproute2                    # ip netns: the tests' emulated nodes and pods
  iptables                    # iptables-restore/-save: bridge ipMasq
  nftables                    # nft: macspoofchk, the nftables masquerade backend, tests
  podman                      # a real CNI client for the bridge tests
  runc                        # the OCI runtime of podman and containerd here (crun refuses hybrid cgroups)
  containerd                  # private containerd per emulated node (testbed, pod-runner)
  qemu-system-x86             # the testbed's VM with Debian's kernel (IPVS, dummy, VLAN filtering)
  ipvsadm                     # copied into that VM
  ipset                       # copied into that VM; node-sync's IPVS mode
  conntrack                   # copied into that VM
  protobuf-compiler           # containerd-client's build script compiles containerd's protos
  skopeo                      # copies test images into podman's storage
  umoci                       # builds the test images (no registry is reachable)
  busybox-static              # the test images' userland
  docker-registry             # an OCI registry on loopback for pod-runner's image pull test
  make                        # make demo/test/install (the scripts work without it)
  etcd-server                 # etcd for the real control plane (KUBEBUILDER_ASSETS, ../shared/k8s)
  xz-utils                    # ../shared/k8s/assets.sh unpacks the Kubernetes binaries
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: this project needs a Rust toolchain >= 1.89 (edition 2024), e.g. from rustup" >&2
  exit 1
fi
