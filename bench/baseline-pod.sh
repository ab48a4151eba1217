#!/usr/bin/env bash
# The baseline of `cni-bench pod-startup`: one pod started by hand, the
# steps of the tutorial (shared recipes 12, 14 and 20) with `ctr` and the
# reference CNI plugins, against the node's containerd, its image present:
#
#   1. GET the pod from the API server (curl, the node's client certificate)
#   2. ip netns add: the pod's pinned netns
#   3. reference loopback ADD (lo), then bridge ADD (eth0) with the tutorial
#      config (host-local, its own dataDir)
#   4. ctr run -d the pause image in that netns
#   5. the pod's hostname in pause's UTS namespace
#   6. ctr run -d the app container in pause's net, IPC and UTS namespaces
#   7. PATCH the pod's status to Running (strategic merge on /status)
#
# Run it on the node (nsenter --net=<node netns>); baseline-pod-teardown.sh
# with the same flags undoes it, also after a failure half way. Each step
# is written down in the pod's work directory before it is made, so the
# teardown knows what to undo.
set -euo pipefail
. "$(dirname "$0")/baseline-common.sh"
parse_args "$@"

load_credentials
# Shell builtins where they do the job: the baseline should be a lean
# script, not one that pays for extra processes.
TZ=UTC printf -v start '%(%Y-%m-%dT%H:%M:%SZ)T' -1

# 1. The pod, as the node sees it: one container, bound here.
pod=$(api GET "/api/v1/namespaces/$NAMESPACE/pods/$POD")
IFS=$'\t' read -r node count cname image < <(jq -r \
  '[.spec.nodeName // "", (.spec.containers | length), .spec.containers[0].name, .spec.containers[0].image] | @tsv' \
  <<<"$pod")
[[ $node == "$NODE" ]] || die "pod $NAMESPACE/$POD is bound to '$node', not $NODE"
[[ $count == 1 ]] || die "pod $NAMESPACE/$POD has $count containers; this script runs one"

# 2. The pinned netns.
echo "$NETNS" >"$POD_WORK/netns"
ip netns add "$NETNS"

# 3. Network: lo up, then eth0 on cni0 with an address from host-local.
touch "$POD_WORK/cni"
cni loopback ADD lo "$LO_CONF" >/dev/null
result=$(cni bridge ADD eth0 "$CNI_CONF")
[[ $result =~ \"address\":\ *\"([0-9.]+)/ ]] || die "no IPv4 address in the bridge result: $result"
pod_ip=${BASH_REMATCH[1]}

# 4. The sandbox: pause in the pinned netns, its own PID/IPC/UTS namespaces.
touch "$POD_WORK/sandbox"
"${CTR[@]}" run -d --null-io --with-ns "network:/run/netns/$NETNS" \
  --pid-file "$POD_WORK/pause.pid" localhost/pause:latest "$SANDBOX"
pause_pid=$(<"$POD_WORK/pause.pid")

# 5. The pod's hostname, as the kubelet sets it on the sandbox.
nsenter --uts="/proc/$pause_pid/ns/uts" hostname "$POD"

# 6. The app container, joining the sandbox; its output to a log file.
mkdir -p "$LOG_DIR/$cname"
touch "$POD_WORK/app"
"${CTR[@]}" run -d --with-ns "network:/run/netns/$NETNS" \
  --with-ns "ipc:/proc/$pause_pid/ns/ipc" --with-ns "uts:/proc/$pause_pid/ns/uts" \
  --log-uri "file://$LOG_DIR/$cname/0.log" --pid-file "$POD_WORK/app.pid" \
  "$image" "$APP"

# 7. Status Running, the fields a kubelet reports for a started pod.
# Every value is an IP, a timestamp, a DNS label or an image reference:
# nothing JSON would need to escape.
TZ=UTC printf -v now '%(%Y-%m-%dT%H:%M:%SZ)T' -1
conditions=
for t in PodReadyToStartContainers Initialized Ready ContainersReady; do
  conditions+="${conditions:+,}{\"type\":\"$t\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}"
done
patch="{\"status\":{\"phase\":\"Running\",\"podIP\":\"$pod_ip\",\"podIPs\":[{\"ip\":\"$pod_ip\"}],\
\"hostIP\":\"$NODE_IP\",\"hostIPs\":[{\"ip\":\"$NODE_IP\"}],\"startTime\":\"$start\",\
\"qosClass\":\"BestEffort\",\"conditions\":[$conditions],\
\"containerStatuses\":[{\"name\":\"$cname\",\"image\":\"$image\",\"imageID\":\"\",\
\"containerID\":\"containerd://$APP\",\"ready\":true,\"started\":true,\"restartCount\":0,\
\"state\":{\"running\":{\"startedAt\":\"$now\"}}}]}}"
api PATCH "/api/v1/namespaces/$NAMESPACE/pods/$POD/status" \
  application/strategic-merge-patch+json "$patch" >/dev/null
echo "$POD running, pod IP $pod_ip"
