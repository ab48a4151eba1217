# heartful-node. The scripts do the work; make is a shorthand for them.
#   make demo        the tutorial's story on this machine (as root)
#   make test        fmt, clippy and the whole test suite (as root)
#   make install     binaries, systemd unit, an example CNI config and
#                    node-sync's RBAC; then, once per cluster, as a cluster
#                    admin: kubectl apply -f /usr/local/share/node-sync/node-sync-rbac.yaml
#   make uninstall   removes what install put there
# Paths: PREFIX (/usr/local), BINDIR, CNI_BIN_DIR (/opt/cni/bin),
# CNI_CONF_DIR (/etc/cni/net.d), SYSTEMD_DIR (/etc/systemd/system),
# DATADIR ($PREFIX/share), DESTDIR.

export PREFIX BINDIR CNI_BIN_DIR CNI_CONF_DIR SYSTEMD_DIR DATADIR DESTDIR

.PHONY: all build demo demo-down test install uninstall

all: build

build:
	./scripts/build-plugins.sh -p pod-runner -p node-sync -p testbed

demo:
	./scripts/demo.sh

demo-down:
	./scripts/demo.sh down

test:
	./scripts/test.sh

install:
	./scripts/install.sh install

uninstall:
	./scripts/install.sh uninstall
