//! node-sync's end-to-end tests live in `tests/`. They run the static
//! release binary (`scripts/build-plugins.sh -p node-sync`, as
//! `scripts/test.sh` does) against the real control plane, so node-sync's
//! own manifest needs no test support crate.
