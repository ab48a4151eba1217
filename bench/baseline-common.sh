# Sourced by baseline-pod.sh and baseline-pod-teardown.sh: their flags,
# the node's API credentials and small helpers. Not run on its own.

die() {
  echo "${0##*/}: $*" >&2
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: ${0##*/} --kubeconfig FILE --node NAME --node-ip IP --containerd-socket SOCK
         --containerd-namespace NS --cni-bin-dir DIR --cni-conf FILE --loopback-conf FILE
         --netns NAME --work-dir DIR --log-dir DIR [--namespace NS] POD
EOF
  exit 2
}

parse_args() {
  NAMESPACE=default
  POD=
  while (($#)); do
    case $1 in
      --kubeconfig) KUBECONFIG_FILE=$2 ;;
      --node) NODE=$2 ;;
      --node-ip) NODE_IP=$2 ;;
      --containerd-socket) CTRD_SOCK=$2 ;;
      --containerd-namespace) CTRD_NS=$2 ;;
      --cni-bin-dir) CNI_BIN=$2 ;;
      --cni-conf) CNI_CONF=$2 ;;
      --loopback-conf) LO_CONF=$2 ;;
      --netns) NETNS=$2 ;;
      --work-dir) WORK=$2 ;;
      --log-dir) LOG_DIR=$2 ;;
      --namespace) NAMESPACE=$2 ;;
      -*) usage ;;
      *)
        POD=$1
        shift
        continue
        ;;
    esac
    (($# >= 2)) || usage
    shift 2
  done
  for v in KUBECONFIG_FILE NODE NODE_IP CTRD_SOCK CTRD_NS CNI_BIN CNI_CONF LO_CONF NETNS WORK LOG_DIR POD; do
    [[ -n ${!v:-} ]] || usage
  done
  CTR=(ctr -a "$CTRD_SOCK" -n "$CTRD_NS" --timeout 20s)
  # Container IDs as the tutorial names them; the pod's own directory
  # holds what teardown needs (CNI result, PIDs).
  SANDBOX=$POD-pause
  APP=$POD-app
  POD_WORK=$WORK/$POD
}

# The node's credentials, taken out of its kubeconfig as kubectl would
# (inline base64 data), into the pod's private directory.
load_credentials() {
  local kc
  kc=$(<"$KUBECONFIG_FILE")
  SERVER=$(sed -n 's/^ *server: *//p' <<<"$kc")
  mkdir -p -m 700 "$POD_WORK"
  sed -n 's/^ *certificate-authority-data: *//p' <<<"$kc" | base64 -d >"$POD_WORK/ca.pem"
  sed -n 's/^ *client-certificate-data: *//p' <<<"$kc" | base64 -d >"$POD_WORK/cert.pem"
  sed -n 's/^ *client-key-data: *//p' <<<"$kc" | base64 -d >"$POD_WORK/key.pem"
  [[ -n $SERVER && -s $POD_WORK/cert.pem && -s $POD_WORK/key.pem ]] ||
    die "no server or client credentials in $KUBECONFIG_FILE"
}

# api METHOD PATH [CONTENT-TYPE BODY]: one API request; fails on a non-2xx.
api() {
  local args=(-sS --fail-with-body --cacert "$POD_WORK/ca.pem" --cert "$POD_WORK/cert.pem"
    --key "$POD_WORK/key.pem" -X "$1")
  if (($# > 2)); then
    args+=(-H "Content-Type: $3" --data-binary "$4")
  fi
  curl "${args[@]}" "$SERVER$2"
}

# cni PLUGIN COMMAND IFNAME CONF: one reference plugin call, as a runtime
# makes it (tutorial 20-cni-pod-in-node.sh).
cni() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CNI_COMMAND="$2" CNI_CONTAINERID="$SANDBOX" \
    CNI_NETNS="/run/netns/$NETNS" CNI_IFNAME="$3" CNI_PATH="$CNI_BIN" "$CNI_BIN/$1" <"$4"
}
