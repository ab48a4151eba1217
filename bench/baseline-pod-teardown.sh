#!/usr/bin/env bash
# Undoes baseline-pod.sh for one pod (same flags), in reverse, like the
# tutorial's 13-pod-delete.sh and 21-cni-pod-teardown.sh: the app, then
# pause (SIGTERM, SIGKILL after 10 s), their tasks and containers (with
# their snapshots), CNI DEL bridge then loopback, the pinned netns, the
# pod's work directory. Only what the work directory says was made is
# undone, so it also cleans up after a create that failed half way; a
# second run does nothing. The API object is left alone, as with
# `pod-runner delete`.
set -uo pipefail
. "$(dirname "$0")/baseline-common.sh"
parse_args "$@"

[[ -d $POD_WORK ]] || {
  echo "$POD: nothing to do"
  exit 0
}
rc=0

# ctr_quiet ARGS...: a ctr call for which a missing object is fine.
ctr_quiet() {
  local out
  if ! out=$("${CTR[@]}" "$@" 2>&1); then
    [[ $out == *"not found"* ]] || {
      echo "ctr $*: $out" >&2
      rc=1
    }
  fi
}

# stop ID PIDFILE: SIGTERM, wait for the process to go, SIGKILL after 10 s.
stop() {
  local pid=
  [[ -s $2 ]] && pid=$(<"$2")
  ctr_quiet tasks kill -s SIGTERM "$1"
  if [[ -n $pid ]]; then
    for _ in $(seq 500); do
      [[ -e /proc/$pid ]] || break
      sleep 0.02
    done
    [[ -e /proc/$pid ]] && ctr_quiet tasks kill -s SIGKILL "$1"
  fi
  ctr_quiet tasks delete "$1"
  ctr_quiet containers delete "$1"
}

[[ -e $POD_WORK/app ]] && stop "$APP" "$POD_WORK/app.pid"
[[ -e $POD_WORK/sandbox ]] && stop "$SANDBOX" "$POD_WORK/pause.pid"
if [[ -e $POD_WORK/cni ]]; then
  cni bridge DEL eth0 "$CNI_CONF" || rc=1
  cni loopback DEL lo "$LO_CONF" || rc=1
fi
if [[ -e $POD_WORK/netns && -e /run/netns/$NETNS ]]; then
  ip netns del "$NETNS" || rc=1
fi
if ((rc == 0)); then
  rm -rf "$POD_WORK"
  echo "$POD: deleted"
else
  echo "$POD: teardown incomplete; $POD_WORK kept for another try" >&2
fi
exit "$rc"
