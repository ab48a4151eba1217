//! One lease directory shared by ours and the reference, as on a node that
//! switches plugins with live pods: each must release what the other wrote.

mod common;

use std::path::Path;

use common::{NET, conf, leases, netconf, non_lease_names, ours, reference, result_ips};
use serde_json::json;
use testbed::{Call, Outcome};

fn call(bin: &Path, cmd: &str, id: &str, dir: &Path) -> Outcome {
    let conf = conf(netconf("0.3.1", json!({"subnet": "10.1.2.0/24"})), dir);
    let out = Call::new(bin, cmd, id).stdin(conf).run();
    assert!(out.success(), "{cmd} {id} with {}: {out:?}", bin.display());
    out
}

fn ip_of(out: &Outcome) -> String {
    result_ips(out).remove(0)
}

fn assert_clean(dir: &Path) {
    assert!(leases(dir).is_empty(), "leases left: {:?}", leases(dir));
    assert_eq!(non_lease_names(dir), ["last_reserved_ip.0", "lock"]);
}

#[test]
fn reference_add_then_our_del_and_the_reverse() {
    let (ours, theirs) = (ours(), reference());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    let ip = ip_of(&call(&theirs, "ADD", "ref-made", dir));
    assert_eq!(leases(dir)[&ip], "ref-made\r\neth0");
    call(&ours, "DEL", "ref-made", dir);
    assert_clean(dir);

    let ip = ip_of(&call(&ours, "ADD", "ours-made", dir));
    assert_eq!(leases(dir)[&ip], "ours-made\r\neth0");
    call(&theirs, "DEL", "ours-made", dir);
    assert_clean(dir);
}

#[test]
fn interleaved_calls_keep_one_round_robin_and_no_duplicates() {
    let (ours, theirs) = (ours(), reference());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut got = Vec::new();
    for i in 0..12 {
        let bin = if i % 3 == 0 { &theirs } else { &ours };
        got.push(ip_of(&call(bin, "ADD", &format!("c{i}"), dir)));
    }
    let expect: Vec<String> = (2..14).map(|n| format!("10.1.2.{n}")).collect();
    assert_eq!(got, expect, "one shared round-robin sequence");

    // Our index must notice what the reference did behind its back.
    call(&theirs, "DEL", "c1", dir);
    let again = ip_of(&call(&ours, "ADD", "c1", dir));
    assert_eq!(again, "10.1.2.14");
    let out = Call::new(&ours, "CHECK", "c4")
        .stdin(conf(
            netconf("0.4.0", json!({"subnet": "10.1.2.0/24"})),
            dir,
        ))
        .run();
    assert!(out.success(), "{out:?}");
    call(&theirs, "DEL", "c4", dir);
    let out = Call::new(&ours, "CHECK", "c4")
        .stdin(conf(
            netconf("0.4.0", json!({"subnet": "10.1.2.0/24"})),
            dir,
        ))
        .run();
    assert!(
        !out.success(),
        "CHECK after the reference released it: {out:?}"
    );

    for i in 0..12 {
        let bin = if i % 2 == 0 { &ours } else { &theirs };
        call(bin, "DEL", &format!("c{i}"), dir);
    }
    assert_clean(dir);
}

#[test]
fn legacy_lease_without_ifname_is_released_by_container_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // What reference plugins before v0.8 wrote: the container id alone.
    call(&ours(), "DEL", "prime", dir);
    std::fs::write(dir.join(NET).join("10.1.2.77"), "old-pod").expect("write lease");
    // Ours must not hand out the legacy address, and DEL must free it.
    for i in 0..80 {
        let ip = ip_of(&call(&ours(), "ADD", &format!("n{i}"), dir));
        assert_ne!(ip, "10.1.2.77");
    }
    call(&ours(), "DEL", "old-pod", dir);
    assert!(!dir.join(NET).join("10.1.2.77").exists());
    for i in 0..80 {
        call(&ours(), "DEL", &format!("n{i}"), dir);
    }
    assert_clean(dir);
}
