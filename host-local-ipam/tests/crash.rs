//! SIGKILL at random moments must never leave an empty or partial lease,
//! a duplicate, or a store that later calls cannot use.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{NET, conf, netconf, non_lease_names, ours, reference, result_ips};
use serde_json::json;
use testbed::{Call, Entry, snapshot};

const KILLS: usize = 200;

/// xorshift64*: reproducible from the printed seed, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn sigkill_during_adds_and_dels_never_corrupts_the_store() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(0x9e37_79b9)
        });
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // A /22 leaves room for every id we add.
    let stdin = conf(netconf("0.3.1", json!({"subnet": "10.2.0.0/22"})), dir);

    // How long a whole ADD takes here (the slowest of a few), so the kill
    // moments spread over the plugin's whole run and a little past it.
    let slowest = (0..5)
        .map(|n| {
            let t = Instant::now();
            let out = Call::new(ours(), "ADD", &format!("warmup{n}"))
                .stdin(stdin.clone())
                .run();
            assert!(out.success(), "{out:?}");
            t.elapsed().as_micros() as u64
        })
        .max()
        .unwrap_or(1000);
    let span = slowest.clamp(200, 20_000) * 3 / 2;

    let (mut killed, mut finished, mut i) = (0usize, 0usize, 0usize);
    while killed < KILLS {
        assert!(i < 20 * KILLS, "could not kill {KILLS} running plugins");
        // Mostly ADDs; every fourth call a DEL of an earlier container.
        let (cmd, id) = if i % 4 == 3 {
            ("DEL", format!("k{}", rng.next() as usize % i))
        } else {
            ("ADD", format!("k{i}"))
        };
        let mut child = Call::new(ours(), cmd, &id)
            .stdin(stdin.clone())
            .spawn()
            .expect("spawn");
        sleep(Duration::from_micros(rng.next() % span));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill");
            killed += 1;
        } else {
            finished += 1;
        }
        child.wait().expect("wait");
        i += 1;
    }
    eprintln!("{killed} killed mid-call, {finished} finished first (span {span} us)");

    // Every file is a complete lease, a last_reserved_ip or the lock.
    let snap = snapshot(&dir.join(NET));
    let mut owners = BTreeMap::new();
    for (name, entry) in &snap {
        let Entry::File { content, .. } = entry else {
            panic!("unexpected non-file {name}");
        };
        let text = String::from_utf8(content.clone()).expect("utf-8");
        if name == "lock" {
            assert!(text.is_empty());
        } else if let Some(idx) = name.strip_prefix("last_reserved_ip.") {
            assert_eq!(idx, "0");
            // A hint, overwritten in place: a kill between the write and
            // the trim may leave a longer mix, but never nothing.
            assert!(!text.is_empty(), "last_reserved_ip is empty");
        } else {
            name.parse::<IpAddr>()
                .unwrap_or_else(|_| panic!("stray file {name:?} holding {text:?}"));
            let (id, ifname) = text
                .split_once("\r\n")
                .unwrap_or_else(|| panic!("partial lease {name}: {text:?}"));
            assert!(
                id.starts_with('k') || id.starts_with("warmup"),
                "lease {name}: {text:?}"
            );
            assert_eq!(ifname, "eth0", "lease {name}: {text:?}");
            if let Some(prev) = owners.insert(id.to_string(), name.clone()) {
                panic!("{id} holds both {prev} and {name}");
            }
        }
    }

    // Both plugins still work on the store and do not hand out a held IP.
    let held: BTreeSet<String> = owners.values().cloned().collect();
    for (bin, id) in [(ours(), "after-ours"), (reference(), "after-ref")] {
        let out = Call::new(&bin, "ADD", id).stdin(stdin.clone()).run();
        assert!(out.success(), "{out:?}");
        let ip = result_ips(&out).remove(0);
        assert!(!held.contains(&ip), "{id} got the held address {ip}");
    }
    // DEL of every container ever named leaves a clean directory.
    let ids = (0..i)
        .map(|n| format!("k{n}"))
        .chain((0..5).map(|n| format!("warmup{n}")))
        .chain(["after-ours", "after-ref"].map(String::from));
    for id in ids {
        let out = Call::new(ours(), "DEL", &id).stdin(stdin.clone()).run();
        assert!(out.success(), "DEL {id}: {out:?}");
    }
    assert_eq!(non_lease_names(dir), ["last_reserved_ip.0", "lock"]);
    assert_eq!(snapshot(&dir.join(NET)).len(), 2, "no lease is left");
}
