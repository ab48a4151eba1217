#!/usr/bin/env bash
# `make install` / `make uninstall` (this script is the equivalent without
# make): the static release binaries onto a node.
#
#   CNI plugins bridge, host-local, loopback   -> $CNI_BIN_DIR  (/opt/cni/bin)
#   pod-runner, pause, node-sync                -> $BINDIR       ($PREFIX/bin, /usr/local/bin)
#   node-sync.service, pod-runner.service       -> $SYSTEMD_DIR  (/etc/systemd/system)
#   node-sync-rbac.yaml, for the cluster admin  -> $DATADIR/node-sync ($PREFIX/share)
#   an example 10-bridge.conflist (the tutorial's) -> $CNI_CONF_DIR (/etc/cni/net.d),
#     only where none exists: an operator's config is never replaced
#
# DESTDIR prefixes every path (staged installs, packaging).
#   ./scripts/install.sh [install|uninstall]
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
DATADIR=${DATADIR:-$PREFIX/share}
DESTDIR=${DESTDIR:-}

plugins=(bridge host-local loopback)
programs=(pod-runner pause node-sync)
conflist=deploy/10-bridge.conflist
units=(node-sync/node-sync.service pod-runner/pod-runner.service)
rbac=deploy/node-sync-rbac.yaml

case "${1:-install}" in
  install)
    # The same package set as the test suite and the demo, so one build
    # serves all three.
    bins=$(./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed)
    install -d "$DESTDIR$CNI_BIN_DIR" "$DESTDIR$BINDIR" "$DESTDIR$SYSTEMD_DIR" "$DESTDIR$CNI_CONF_DIR"
    for p in "${plugins[@]}"; do
      install -m 0755 "$bins/$p" "$DESTDIR$CNI_BIN_DIR/$p"
      echo "installed $DESTDIR$CNI_BIN_DIR/$p"
    done
    for p in "${programs[@]}"; do
      install -m 0755 "$bins/$p" "$DESTDIR$BINDIR/$p"
      echo "installed $DESTDIR$BINDIR/$p"
    done
    for unit in "${units[@]}"; do
      name=$(basename "$unit")
      sed "s|/usr/local/bin/|$BINDIR/|" "$unit" >"$DESTDIR$SYSTEMD_DIR/$name"
      chmod 0644 "$DESTDIR$SYSTEMD_DIR/$name"
      echo "installed $DESTDIR$SYSTEMD_DIR/$name"
    done
    install -D -m 0644 "$rbac" "$DESTDIR$DATADIR/node-sync/node-sync-rbac.yaml"
    echo "installed $DESTDIR$DATADIR/node-sync/node-sync-rbac.yaml"
    if [[ -e $DESTDIR$CNI_CONF_DIR/10-bridge.conflist ]]; then
      echo "kept $DESTDIR$CNI_CONF_DIR/10-bridge.conflist (exists)"
    else
      install -m 0644 "$conflist" "$DESTDIR$CNI_CONF_DIR/10-bridge.conflist"
      echo "installed $DESTDIR$CNI_CONF_DIR/10-bridge.conflist (edit its subnet to the node's podCIDR)"
    fi
    # The node's own identity may not list every Node nor read Endpoints
    # and EndpointSlices: without this, no routes and no Services.
    echo "node-sync needs list/watch on nodes, services, endpoints and endpointslices beyond what the Node authorizer gives;"
    echo "  once per cluster, as a cluster admin: kubectl apply -f $DATADIR/node-sync/node-sync-rbac.yaml"
    ;;
  uninstall)
    for p in "${plugins[@]}"; do rm -fv "$DESTDIR$CNI_BIN_DIR/$p"; done
    for p in "${programs[@]}"; do rm -fv "$DESTDIR$BINDIR/$p"; done
    for unit in "${units[@]}"; do rm -fv "$DESTDIR$SYSTEMD_DIR/$(basename "$unit")"; done
    rm -fv "$DESTDIR$DATADIR/node-sync/node-sync-rbac.yaml"
    rmdir "$DESTDIR$DATADIR/node-sync" 2>/dev/null || true
    # The example config goes only if it is still ours, unedited.
    if cmp -s "$conflist" "$DESTDIR$CNI_CONF_DIR/10-bridge.conflist"; then
      rm -fv "$DESTDIR$CNI_CONF_DIR/10-bridge.conflist"
    fi
    ;;
  *)
    echo "usage: $0 [install|uninstall]" >&2
    exit 2
    ;;
esac
