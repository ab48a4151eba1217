//! Shared by the host-local integration tests: the two binaries, config
//! builders and a side-by-side runner for differential tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;
use testbed::{Call, Entry, Outcome, reference_plugin, snapshot};

pub const NET: &str = "testnet";

pub fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host-local"))
}

pub fn reference() -> PathBuf {
    reference_plugin("host-local")
}

/// A network config around `ipam` (without `dataDir`, which [`conf`] adds).
pub fn netconf(version: &str, ipam: Value) -> Value {
    json!({"cniVersion": version, "name": NET, "type": "host-local", "ipam": ipam})
}

/// `netconf` with `ipam.type` and `ipam.dataDir` filled in, as stdin bytes.
pub fn conf(mut netconf: Value, data_dir: &Path) -> String {
    let ipam = netconf["ipam"].as_object_mut().expect("ipam is an object");
    ipam.insert("type".into(), json!("host-local"));
    ipam.insert("dataDir".into(), json!(data_dir.display().to_string()));
    netconf.to_string()
}

/// One step of a call sequence, run against both plugins.
#[derive(Clone, Debug)]
pub struct Step {
    pub command: &'static str,
    pub id: String,
    pub ifname: String,
    pub cni_args: Option<String>,
    /// Replaces the scenario's config for this step.
    pub netconf: Option<Value>,
}

pub fn step(command: &'static str, id: &str) -> Step {
    Step {
        command,
        id: id.into(),
        ifname: "eth0".into(),
        cni_args: None,
        netconf: None,
    }
}

impl Step {
    pub fn ifname(mut self, ifname: &str) -> Self {
        self.ifname = ifname.into();
        self
    }
    pub fn cni_args(mut self, args: &str) -> Self {
        self.cni_args = Some(args.into());
        self
    }
    pub fn netconf(mut self, netconf: Value) -> Self {
        self.netconf = Some(netconf);
        self
    }
}

/// A fresh data directory for each implementation.
pub struct Side {
    pub bin: PathBuf,
    pub dir: TempDir,
}

impl Side {
    pub fn new(bin: PathBuf) -> Self {
        Side {
            bin,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn run(&self, netconf: &Value, s: &Step) -> Outcome {
        let netconf = s.netconf.as_ref().unwrap_or(netconf);
        let mut call = Call::new(&self.bin, s.command, &s.id)
            .ifname(&s.ifname)
            .stdin(conf(netconf.clone(), self.dir.path()));
        if let Some(a) = &s.cni_args {
            call = call.args(a);
        }
        call.run()
    }

    pub fn net_snapshot(&self) -> BTreeMap<String, Entry> {
        snapshot(&self.dir.path().join(NET))
    }
}

/// Runs `steps` through ours and the reference, each with its own data
/// directory, and asserts after every step: same exit status, the same
/// stdout bytes on success (the same error `code` on failure), and the
/// same files with the same contents and modes.
pub fn differential(name: &str, netconf: &Value, steps: &[Step]) -> Vec<Outcome> {
    let ours = Side::new(ours());
    let theirs = Side::new(reference());
    let mut outs = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let a = ours.run(netconf, s);
        let b = theirs.run(netconf, s);
        let at = format!("{name}: step {i} {s:?}\n ours: {a:?}\n  ref: {b:?}");
        assert_eq!(a.code, b.code, "exit status differs at {at}");
        if a.success() {
            assert_eq!(a.stdout, b.stdout, "stdout differs at {at}");
        } else {
            assert_eq!(a.error_code(), b.error_code(), "error code differs at {at}");
        }
        assert_eq!(
            ours.net_snapshot(),
            theirs.net_snapshot(),
            "lease directory differs at {at}"
        );
        outs.push(a);
    }
    // Beside the reference's layout we keep only our index directory.
    let mut top = names_in(ours.dir.path());
    top.retain(|n| n != ".host-local");
    let theirs_top = names_in(theirs.dir.path());
    assert_eq!(top, theirs_top, "{name}: data directory top level differs");
    outs
}

/// The IP addresses (without prefix) in a 0.3.0+ result.
pub fn result_ips(out: &Outcome) -> Vec<String> {
    let v = out.json();
    v["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {out:?}"))
        .iter()
        .map(|ip| {
            let a = ip["address"].as_str().expect("address");
            a.split('/').next().expect("ip").to_string()
        })
        .collect()
}

/// Lease files in `<dataDir>/<net>`: file name (the IP) → content.
pub fn leases(data_dir: &Path) -> BTreeMap<String, String> {
    snapshot(&data_dir.join(NET))
        .into_iter()
        .filter(|(name, _)| name != "lock" && !name.starts_with("last_reserved_ip."))
        .map(|(name, e)| (name, e.text().unwrap_or_default()))
        .collect()
}

/// Everything under the data directory's network dir except leases.
pub fn non_lease_names(data_dir: &Path) -> Vec<String> {
    snapshot(&data_dir.join(NET))
        .into_keys()
        .filter(|name| name.parse::<std::net::IpAddr>().is_err())
        .collect()
}

/// The names of a directory's entries, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
