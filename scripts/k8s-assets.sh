#!/usr/bin/env bash
# Prints the directory of the real Kubernetes binaries the tests and the demo
# run (envtest's KUBEBUILDER_ASSETS layout: kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl, crictl, etcd).
# Looks at KUBEBUILDER_ASSETS, then ../shared/k8s/assets.sh beside the
# checkout. Exits 1 with where to get them when there are none.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
have() { [[ -x $1/kube-apiserver && -x $1/kubectl && -e $1/etcd ]]; }
if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
  have "$KUBEBUILDER_ASSETS" || { echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver, kubectl or etcd" >&2; exit 1; }
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
for d in "$root/../shared/k8s" "$root/../../shared/k8s" /work/shared/k8s; do
  if [[ -x $d/assets.sh ]]; then
    dir=$("$d/assets.sh")
    have "$dir" || { echo "$d/assets.sh gave $dir without kube-apiserver, kubectl or etcd (apt-get install etcd-server)" >&2; exit 1; }
    echo "$dir"
    exit 0
  fi
done
cat >&2 <<'MSG'
no Kubernetes binaries found. Set KUBEBUILDER_ASSETS to a directory holding
kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and kubectl
(from the official kubernetes-server-linux-amd64.tar.gz, kubernetes/server/bin/,
v1.36) and etcd (apt-get install etcd-server; link /usr/bin/etcd into it).
MSG
exit 1
