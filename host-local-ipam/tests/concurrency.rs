//! Parallel calls on one network serialize on the lock file.

mod common;

use std::collections::BTreeSet;

use common::{conf, leases, netconf, non_lease_names, ours, result_ips};
use serde_json::json;
use testbed::{Call, Outcome};

const N: usize = 64;

#[test]
fn parallel_adds_get_distinct_addresses_and_parallel_dels_free_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let stdin = conf(netconf("0.3.1", json!({"subnet": "10.1.2.0/24"})), dir);
    let run_all = |cmd: &str| {
        let children: Vec<_> = (0..N)
            .map(|i| {
                Call::new(ours(), cmd, &format!("pod-{i}"))
                    .stdin(stdin.clone())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect::<Vec<_>>()
    };

    let mut ips = BTreeSet::new();
    for out in run_all("ADD") {
        let o = Outcome::from(out);
        assert!(o.success(), "{o:?}");
        ips.extend(result_ips(&o));
    }
    assert_eq!(ips.len(), N, "every ADD got its own address");
    let on_disk = leases(dir);
    assert_eq!(on_disk.len(), N);
    let owners: BTreeSet<&String> = on_disk.values().collect();
    assert_eq!(owners.len(), N, "one lease per container");

    for out in run_all("DEL") {
        assert!(out.status.success(), "{out:?}");
    }
    assert!(leases(dir).is_empty());
    assert_eq!(non_lease_names(dir), ["last_reserved_ip.0", "lock"]);
}
