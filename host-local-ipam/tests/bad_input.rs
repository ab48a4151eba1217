//! Bad input: a CNI error JSON with the right code, a non-zero exit, and no
//! file created anywhere. Where the reference answers with the same code we
//! assert that too; where we deliberately differ (README, "Deviations") the
//! reference's code is recorded next to the case.

mod common;

use std::path::Path;

use common::{NET, ours, reference};
use serde_json::{Value, json};
use testbed::{Call, Outcome, snapshot};

struct Case {
    name: &'static str,
    command: Option<&'static str>,
    id: &'static str,
    cni_args: Option<&'static str>,
    stdin: Stdin,
    ours: u64,
    /// The reference's code when it differs from ours.
    reference: Option<u64>,
}

enum Stdin {
    Raw(&'static str),
    /// A config; `dataDir` is filled in per run.
    Conf(Value),
}

fn ipam(extra: Value) -> Value {
    let mut ipam = json!({"type": "host-local"});
    for (k, v) in extra.as_object().expect("object") {
        ipam[k] = v.clone();
    }
    json!({"cniVersion": "0.3.1", "name": NET, "type": "host-local", "ipam": ipam})
}

fn case(name: &'static str, stdin: Stdin, code: u64) -> Case {
    Case {
        name,
        command: Some("ADD"),
        id: "c1",
        cni_args: None,
        stdin,
        ours: code,
        reference: None,
    }
}

fn run(bin: &Path, c: &Case, root: &Path) -> Outcome {
    let data = root.join("data");
    let stdin = match &c.stdin {
        Stdin::Raw(s) => s.to_string(),
        Stdin::Conf(v) => {
            let mut v = v.clone();
            v["ipam"]["dataDir"] = json!(data.display().to_string());
            v.to_string()
        }
    };
    let mut call = Call::new(bin, c.command.unwrap_or(""), c.id)
        .stdin(stdin)
        .current_dir(root);
    if c.command.is_none() {
        call = call.unset("CNI_COMMAND");
    }
    if let Some(a) = c.cni_args {
        call = call.args(a);
    }
    call.run()
}

fn cases() -> Vec<Case> {
    let good = || ipam(json!({"subnet": "10.1.2.0/24"}));
    let mut evil = good();
    evil["name"] = json!("../evil");
    let mut v999 = good();
    v999["cniVersion"] = json!("9.9.9");
    let mut with_ips = good();
    with_ips["args"] = json!({"cni": {"ips": ["10.9.9.9"]}});
    let mut rc_gateway = good();
    rc_gateway["runtimeConfig"] = json!({"ips": ["10.1.2.1/24"]});
    vec![
        case("malformed JSON", Stdin::Raw("{\"cniVersion\": "), 6),
        Case {
            command: Some("FOO"),
            ..case("unknown CNI_COMMAND", Stdin::Conf(good()), 4)
        },
        case("cniVersion 9.9.9", Stdin::Conf(v999), 1),
        Case {
            reference: Some(999),
            ..case(
                "invalid subnet",
                Stdin::Conf(ipam(json!({"subnet": "10.1.2.0/33"}))),
                7,
            )
        },
        Case {
            reference: Some(999),
            ..case(
                "subnet with host bits",
                Stdin::Conf(ipam(json!({"subnet": "10.1.2.7/24"}))),
                7,
            )
        },
        Case {
            reference: Some(999),
            ..case(
                "inverted range",
                Stdin::Conf(ipam(json!({"ranges": [[{"subnet": "10.1.2.0/24",
                    "rangeStart": "10.1.2.50", "rangeEnd": "10.1.2.10"}]]}))),
                7,
            )
        },
        Case {
            reference: Some(999),
            ..case("no range at all", Stdin::Conf(ipam(json!({}))), 7)
        },
        case("network name ../evil", Stdin::Conf(evil), 7),
        Case {
            id: "pod/../../etc",
            ..case("container id with a slash", Stdin::Conf(good()), 4)
        },
        Case {
            cni_args: Some("IgnoreUnknown=1;IP=10.9.9.9"),
            reference: Some(999),
            ..case("CNI_ARGS IP outside every range", Stdin::Conf(good()), 4)
        },
        Case {
            cni_args: Some("IP=10.1.2.1"),
            reference: Some(999),
            ..case("CNI_ARGS IP is the gateway", Stdin::Conf(good()), 4)
        },
        Case {
            reference: Some(999),
            ..case("args.cni.ips outside every range", Stdin::Conf(with_ips), 7)
        },
        Case {
            reference: Some(999),
            ..case(
                "runtimeConfig.ips is the gateway",
                Stdin::Conf(rc_gateway),
                7,
            )
        },
        Case {
            cni_args: Some("FOO=bar"),
            reference: Some(999),
            ..case("unknown CNI_ARGS key", Stdin::Conf(good()), 4)
        },
        Case {
            cni_args: Some("IP"),
            reference: Some(999),
            ..case("CNI_ARGS without =", Stdin::Conf(good()), 4)
        },
    ]
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    for c in cases() {
        for (bin, expect) in [
            (ours(), c.ours),
            (reference(), c.reference.unwrap_or(c.ours)),
        ] {
            let root = tempfile::tempdir().expect("tempdir");
            let out = run(&bin, &c, root.path());
            let who = bin.display();
            assert_ne!(out.code, 0, "{}: {who} succeeded: {out:?}", c.name);
            assert_eq!(out.error_code(), expect, "{}: {who}: {out:?}", c.name);
            assert!(!out.json()["msg"].as_str().unwrap_or("").is_empty());
            // Only ours is held to this: the reference creates the lease
            // directory (and a last_reserved_ip) before it checks a
            // requested address.
            if bin == ours() {
                let left = snapshot(root.path());
                assert!(left.is_empty(), "{}: created {:?}", c.name, left.keys());
            }
        }
    }
}

#[test]
fn missing_cni_command_prints_about_like_the_reference() {
    let c = Case {
        command: None,
        ..case("no CNI_COMMAND", Stdin::Raw("{}"), 0)
    };
    for bin in [ours(), reference()] {
        let root = tempfile::tempdir().expect("tempdir");
        let out = run(&bin, &c, root.path());
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.contains("CNI protocol versions supported"),
            "{out:?}"
        );
        assert!(snapshot(root.path()).is_empty());
    }
}

#[test]
fn a_data_dir_that_cannot_be_created_is_an_io_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write");
    let conf = json!({"cniVersion": "0.3.1", "name": NET, "type": "host-local",
        "ipam": {"type": "host-local", "subnet": "10.1.2.0/24",
                 "dataDir": file.join("sub").display().to_string()}});
    let out = Call::new(ours(), "ADD", "c1").stdin(conf.to_string()).run();
    assert_eq!(out.error_code(), 5, "{out:?}");
}
