use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn v4(a: [u8; 4], p: u8) -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a)), p).expect("v4 net")
}

#[test]
fn prints_what_the_reference_prints_for_031() {
    let r = CniResult {
        ips: vec![IpConfig {
            interface: None,
            address: v4([10, 1, 0, 32], 16),
            gateway: Some("10.1.0.1".parse().expect("ip")),
        }],
        ..CniResult::default()
    };
    let out = String::from_utf8(r.to_json(SpecVersion::V0_3_1)).expect("utf8");
    assert_eq!(
        out,
        "{\n    \"cniVersion\": \"0.3.1\",\n    \"ips\": [\n        {\n            \"version\": \"4\",\n            \"address\": \"10.1.0.32/16\",\n            \"gateway\": \"10.1.0.1\"\n        }\n    ],\n    \"dns\": {}\n}"
    );
}

#[test]
fn legacy_keeps_first_address_per_family_and_routes_by_family() {
    let r = CniResult {
        ips: vec![
            IpConfig {
                interface: None,
                address: v4([10, 0, 0, 2], 24),
                gateway: None,
            },
            IpConfig {
                interface: None,
                address: v4([10, 0, 1, 2], 24),
                gateway: None,
            },
            IpConfig {
                interface: None,
                address: IpNetwork::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 64).expect("v6"),
                gateway: None,
            },
        ],
        routes: vec![Route::new(v4([0, 0, 0, 0], 0), None)],
        ..CniResult::default()
    };
    let v: serde_json::Value =
        serde_json::from_slice(&r.to_json(SpecVersion::V0_2_0)).expect("json");
    assert_eq!(v["ip4"]["ip"], "10.0.0.2/24");
    assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(v["ip6"]["ip"], "::1/64");
    assert!(v["ip6"].get("routes").is_none());
}

#[test]
fn parses_each_layout() {
    let legacy = br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0"}]},"dns":{}}"#;
    let r = CniResult::parse(legacy, SpecVersion::V0_2_0).expect("legacy");
    assert_eq!(r.ips.len(), 1);
    assert_eq!(r.routes.len(), 1);
    let v04 = br#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","interface":0,"address":"10.0.0.2/24"}]}"#;
    let r = CniResult::parse(v04, SpecVersion::V0_4_0).expect("v04");
    assert_eq!(r.ips[0].interface, Some(0));
    assert_eq!(r.interfaces[0].sandbox, "/x");
    let bad = br#"{"cniVersion":"0.4.0","ips":[{"address":"10.0.0.2"}]}"#;
    assert_eq!(
        CniResult::parse(bad, SpecVersion::V0_4_0)
            .expect_err("no prefix")
            .code,
        6
    );
}

fn arb_net() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| v4(a, p)),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, p)| IpNetwork::new(
            IpAddr::V6(Ipv6Addr::from(a)),
            p
        )
        .expect("v6")),
    ]
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn arb_dns() -> impl Strategy<Value = Dns> {
    (
        proptest::collection::vec("[a-z0-9.:]{1,12}", 0..3),
        "[a-z.]{0,10}",
        proptest::collection::vec("[a-z.]{1,10}", 0..3),
        proptest::collection::vec("[a-z:0-9]{1,10}", 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        })
}

/// A result any 1.x layout can hold, with 1.1-only fields when `v11`.
fn arb_result(v11: bool) -> impl Strategy<Value = CniResult> {
    let iface = (
        "[a-z0-9]{1,15}",
        "[0-9a-f:]{0,17}",
        0u32..9000,
        "[a-z/]{0,12}",
    )
        .prop_map(move |(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu: if v11 { mtu } else { 0 },
            sandbox,
            ..Interface::default()
        });
    (
        proptest::collection::vec(iface, 0..3),
        proptest::collection::vec((arb_net(), proptest::option::of(arb_ip()), 0usize..3), 0..4),
        proptest::collection::vec(
            (arb_net(), proptest::option::of(arb_ip()), 0u32..2000),
            0..4,
        ),
        arb_dns(),
    )
        .prop_map(move |(interfaces, ips, routes, dns)| {
            let n = interfaces.len();
            CniResult {
                ips: ips
                    .into_iter()
                    .map(|(address, gateway, i)| IpConfig {
                        interface: (i < n).then_some(i),
                        address,
                        gateway,
                    })
                    .collect(),
                routes: routes
                    .into_iter()
                    .map(|(dst, gw, mtu)| Route {
                        mtu: if v11 { mtu } else { 0 },
                        ..Route::new(dst, gw)
                    })
                    .collect(),
                interfaces,
                dns,
            }
        })
}

proptest! {
    #[test]
    fn v1_round_trips(r in arb_result(true)) {
        for v in [SpecVersion::V1_0_0, SpecVersion::V1_1_0] {
            let back = CniResult::parse(&r.to_json(v), v).expect("parse");
            prop_assert_eq!(&back, &r);
        }
    }

    #[test]
    fn v04_and_v1_convert_losslessly(r in arb_result(false)) {
        for v in [SpecVersion::V0_3_0, SpecVersion::V0_3_1, SpecVersion::V0_4_0] {
            let as04 = CniResult::parse(&r.to_json(v), v).expect("04");
            prop_assert_eq!(&as04, &r);
            let again = CniResult::parse(&as04.to_json(SpecVersion::V1_0_0), SpecVersion::V1_0_0).expect("1.0");
            prop_assert_eq!(&again, &r);
            // 0.4 output carries the family of each address.
            let json: serde_json::Value = serde_json::from_slice(&r.to_json(v)).expect("json");
            for (i, ip) in r.ips.iter().enumerate() {
                prop_assert_eq!(json["ips"][i]["version"].as_str(), Some(family_of(&ip.address)));
            }
        }
    }

    #[test]
    fn legacy_round_trips_through_current(
        a4 in proptest::option::of((any::<[u8;4]>(), 0u8..=32, proptest::option::of(any::<[u8;4]>()))),
        a6 in proptest::option::of((arb_net().prop_filter("v6", |n| n.is_ipv6()), proptest::option::of(arb_ip()))),
        dns in arb_dns(),
    ) {
        let mut r = CniResult { dns, ..CniResult::default() };
        if let Some((a, p, gw)) = a4 {
            r.ips.push(IpConfig { interface: None, address: v4(a, p), gateway: gw.map(|g| IpAddr::V4(Ipv4Addr::from(g))) });
            r.routes.push(Route::new(v4([0,0,0,0], 0), None));
        }
        if let Some((n, gw)) = a6 {
            r.ips.push(IpConfig { interface: None, address: n, gateway: gw });
        }
        for v in [SpecVersion::V0_1_0, SpecVersion::V0_2_0] {
            let up = CniResult::parse(&r.to_json(v), v).expect("legacy");
            let down = CniResult::parse(&up.to_json(SpecVersion::V0_4_0), SpecVersion::V0_4_0).expect("04");
            let back = CniResult::parse(&down.to_json(v), v).expect("legacy again");
            prop_assert_eq!(&back, &r);
        }
    }
}
