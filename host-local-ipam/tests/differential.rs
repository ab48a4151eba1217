//! Ours against the Go reference: same configs, same call sequences, each
//! with its own data directory; exit status, stdout, error codes and the
//! lease directory must match after every step.

mod common;

use common::{differential, netconf, result_ips, step};
use serde_json::json;

/// Every version the reference speaks. 1.1.0 is ours only (see gc_status.rs).
const VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

#[test]
fn round_robin_sequences_in_every_version() {
    for v in VERSIONS {
        let conf = netconf(v, json!({"subnet": "10.1.2.0/24"}));
        let mut steps = vec![
            step("ADD", "a"),
            step("ADD", "b"),
            step("ADD", "c"),
            step("DEL", "b"),
            // Round-robin goes on after c rather than reusing b's address.
            step("ADD", "d"),
            step("ADD", "b"),
            step("DEL", "a"),
            step("DEL", "a"),
            step("DEL", "never-added"),
            step("ADD", "a").ifname("net1"),
        ];
        if *v >= "0.4.0" {
            steps.push(step("CHECK", "c"));
            steps.push(step("CHECK", "a"));
            steps.push(step("CHECK", "a").ifname("net1"));
        }
        differential(&format!("round robin {v}"), &conf, &steps);
    }
}

#[test]
fn round_robin_addresses_are_the_expected_ones() {
    let conf = netconf("0.3.1", json!({"subnet": "10.1.2.0/24"}));
    let outs = differential(
        "addresses",
        &conf,
        &[
            step("ADD", "a"),
            step("ADD", "b"),
            step("DEL", "a"),
            step("ADD", "c"),
        ],
    );
    assert_eq!(result_ips(&outs[0]), ["10.1.2.2"]);
    assert_eq!(result_ips(&outs[1]), ["10.1.2.3"]);
    assert_eq!(result_ips(&outs[3]), ["10.1.2.4"]);
}

#[test]
fn range_bounds_gateway_exhaustion_and_wrap_around() {
    let conf = netconf(
        "0.3.1",
        json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10",
                            "rangeEnd": "10.1.2.13", "gateway": "10.1.2.11"}]]}),
    );
    let outs = differential(
        "exhaustion",
        &conf,
        &[
            step("ADD", "a"),
            step("ADD", "b"),
            step("ADD", "c"),
            step("ADD", "d"), // exhausted: the gateway is never handed out
            step("DEL", "b"),
            step("ADD", "e"), // wraps around to the freed address
            step("ADD", "f"), // exhausted again
            step("DEL", "d"), // never got an address
        ],
    );
    assert_eq!(result_ips(&outs[0]), ["10.1.2.10"]);
    assert_eq!(result_ips(&outs[2]), ["10.1.2.13"]);
    assert_eq!(outs[3].error_code(), 999);
    assert_eq!(result_ips(&outs[5]), ["10.1.2.12"]);
}

#[test]
fn two_range_sets_dual_stack_with_routes() {
    for v in ["0.3.1", "1.0.0"] {
        let conf = netconf(
            v,
            json!({
                "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:10::/120"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:10::1"},
                           {"dst": "192.168.0.0/16", "gw": "10.1.2.1"}]
            }),
        );
        let outs = differential(
            &format!("dual stack {v}"),
            &conf,
            &[
                step("ADD", "a"),
                step("ADD", "a").ifname("net1"),
                step("DEL", "a"),
                step("ADD", "b"),
                step("CHECK", "a").ifname("net1"),
                step("DEL", "a").ifname("net1"),
            ],
        );
        assert_eq!(result_ips(&outs[0]), ["10.1.2.2", "fd00:10::2"]);
    }
}

#[test]
fn several_ranges_in_one_set() {
    let conf = netconf(
        "0.4.0",
        json!({"ranges": [[{"subnet": "10.1.2.0/30"}, {"subnet": "10.1.3.0/29"}]]}),
    );
    let steps: Vec<_> = (0..9).map(|i| step("ADD", &format!("c{i}"))).collect();
    let outs = differential("one set, two ranges", &conf, &steps);
    assert_eq!(result_ips(&outs[0]), ["10.1.2.2"]);
    assert_eq!(result_ips(&outs[1]), ["10.1.3.2"]);
    assert!(!outs[8].success(), "both ranges are full by then");
}

#[test]
fn legacy_single_subnets_v4_and_v6() {
    for v in ["0.1.0", "0.2.0", "0.3.1"] {
        let conf = netconf(
            v,
            json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.100",
                   "rangeEnd": "10.1.2.101", "gateway": "10.1.2.254"}),
        );
        differential(
            &format!("legacy v4 {v}"),
            &conf,
            &[
                step("ADD", "a"),
                step("ADD", "b"),
                step("ADD", "c"),
                step("DEL", "a"),
                step("ADD", "c"),
            ],
        );
        let conf = netconf(v, json!({"subnet": "fd00:20::/64"}));
        differential(
            &format!("legacy v6 {v}"),
            &conf,
            &[step("ADD", "a"), step("ADD", "b"), step("DEL", "a")],
        );
    }
}

#[test]
fn requested_ip_from_each_source() {
    let base = json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:10::/120"}]]});
    // CNI_ARGS IP=, as a runtime passes it next to the Kubernetes pod keys.
    let conf = netconf("0.3.1", base.clone());
    let outs = differential(
        "requested via CNI_ARGS",
        &conf,
        &[
            step("ADD", "a").cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.2.50"),
            // The same address again is taken: the reference's error code.
            step("ADD", "b").cni_args("IgnoreUnknown=1;IP=10.1.2.50"),
            step("ADD", "c"),
            step("DEL", "a"),
        ],
    );
    assert_eq!(result_ips(&outs[0]), ["10.1.2.50", "fd00:10::2"]);
    assert_eq!(outs[1].error_code(), 999);

    // args.cni.ips in the network config.
    let mut with_args = netconf("0.3.1", base.clone());
    with_args["args"] = json!({"cni": {"ips": ["10.1.2.60", "fd00:10::60"]}});
    let outs = differential(
        "requested via args.cni.ips",
        &with_args,
        &[step("ADD", "a"), step("ADD", "b"), step("DEL", "a")],
    );
    assert_eq!(result_ips(&outs[0]), ["10.1.2.60", "fd00:10::60"]);

    // runtimeConfig.ips, from the ips capability.
    let mut with_rc = netconf("1.0.0", base);
    with_rc["runtimeConfig"] = json!({"ips": ["10.1.2.70/24"]});
    let outs = differential(
        "requested via runtimeConfig.ips",
        &with_rc,
        &[step("ADD", "a"), step("DEL", "a"), step("ADD", "b")],
    );
    assert_eq!(result_ips(&outs[0]), ["10.1.2.70", "fd00:10::2"]);
}

#[test]
fn del_of_something_never_added() {
    let conf = netconf("0.3.1", json!({"subnet": "10.1.2.0/24"}));
    differential(
        "DEL on a fresh directory",
        &conf,
        &[step("DEL", "ghost"), step("DEL", "ghost").ifname("net9")],
    );
}

#[test]
fn resolv_conf_becomes_the_dns_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    std::fs::write(
        &path,
        "# comment\nnameserver 10.96.0.10\nnameserver fd00::a\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:1\ndomain cluster.local\n",
    )
    .expect("write resolv.conf");
    for v in ["0.2.0", "0.3.1", "1.0.0"] {
        let conf = netconf(
            v,
            json!({"subnet": "10.1.2.0/24", "resolvConf": path.display().to_string()}),
        );
        let outs = differential(&format!("resolvConf {v}"), &conf, &[step("ADD", "a")]);
        assert!(outs[0].stdout.contains("10.96.0.10"), "{:?}", outs[0]);
    }
}
