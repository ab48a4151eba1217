//! The VLAN options on a kernel with bridge VLAN filtering: Debian's, in
//! the testbed's qemu VM (this host's kernel lacks it). One boot runs
//! everything:
//!
//! - differential cases: the same ADD and DEL through our static plugins
//!   and through the Go reference 1.1.1 (each in its own host and
//!   container netns with its own dataDir), comparing exit status, result
//!   JSON, `bridge -j vlan show`, links (with `vlan_filtering`), addresses,
//!   routes and nat rules, MACs and veth names normalised. 1.1.1 knows
//!   `vlan` only; for `vlanTrunk` and `preserveDefaultVlan` (later
//!   releases) everything but the VLAN table and `vlan_filtering` is still
//!   compared with it, and those two with what the later releases program;
//! - our CHECK after each ADD, and CHECK failing once a port's VLAN or the
//!   bridge's filtering is taken away;
//! - traffic: two pods on VLAN 100 reach each other and their gateway
//!   `cni0.100`, a pod on VLAN 200 in the same subnet reaches neither, a
//!   trunk pod reaches VLAN 100 through its tagged `eth0.100`;
//! - a bridge that exists without filtering gets it, and a failed ADD
//!   turns it off again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{addrs_json, links_json, normalise, tutorial};
use serde_json::{Value, json};
use testbed::vm::Vm;

/// Differential cases: name, config changes, whether 1.1.1 knows them.
fn cases() -> Vec<(&'static str, Value, bool)> {
    let dual = json!({"type": "host-local",
        "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]});
    vec![
        ("v-masq", json!({"vlan": 100}), true),
        (
            "v-nogw",
            json!({"vlan": 100, "isGateway": false, "ipMasq": false}),
            true,
        ),
        (
            "v-dual",
            json!({"vlan": 100, "ipMasq": false, "ipam": dual}),
            true,
        ),
        ("v-l2", json!({"vlan": 4094, "ipam": {}}), true),
        (
            "v-mtu",
            json!({"vlan": 100, "mtu": 9000, "hairpinMode": true, "ipMasq": false}),
            true,
        ),
        (
            "e-nodefault",
            json!({"vlan": 100, "preserveDefaultVlan": false, "ipMasq": false}),
            false,
        ),
        (
            "e-trunk",
            json!({"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}], "ipMasq": false}),
            false,
        ),
        (
            "e-trunk-only",
            json!({"vlanTrunk": [{"id": 5}, {"minID": 1000, "maxID": 4094}],
                   "preserveDefaultVlan": false, "isGateway": false, "ipMasq": false}),
            false,
        ),
    ]
}

/// The tutorial's config with `extra` merged in and dataDir left for the
/// script to fill in per side.
fn conf(extra: &Value) -> Value {
    let mut c = tutorial("1.0.0");
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    if c["ipam"]["type"] == "host-local" {
        c["ipam"]["dataDir"] = json!("@DATA@");
    }
    c
}

/// What 1.1.1 cannot show for the `e-` cases, as the later releases
/// program it (`bridge -j vlan show` with ranges expanded, veth names
/// normalised).
fn expected_vlans(case: &str, after_del: bool) -> Value {
    let untagged_pvid = |v: u16| json!({"vlan": v, "flags": ["PVID", "Egress Untagged"]});
    let tagged = |vids: &mut dyn Iterator<Item = u16>| -> Vec<Value> {
        vids.map(|v| json!({ "vlan": v })).collect()
    };
    let cni0 = json!({"ifname": "cni0", "vlans": [untagged_pvid(1)]});
    let port = |vlans: Vec<Value>| json!({"ifname": "<veth>", "vlans": vlans});
    match (case, after_del) {
        // The pod's port and the gateway's, each on VLAN 100 only.
        ("e-nodefault", false) => json!([
            cni0,
            port(vec![untagged_pvid(100)]),
            port(vec![untagged_pvid(100)])
        ]),
        ("e-nodefault", true) => json!([cni0, port(vec![untagged_pvid(100)])]),
        ("e-trunk", false) => {
            let mut vlans = vec![untagged_pvid(1)];
            vlans.extend(tagged(&mut [101].into_iter().chain(200..=202)));
            json!([cni0, port(vlans)])
        }
        ("e-trunk-only", false) => {
            json!([cni0, port(tagged(&mut [5].into_iter().chain(1000..=4094)))])
        }
        (_, _) => json!([cni0]),
    }
}

/// The traffic and existing-bridge part's configs.
fn traffic_confs() -> Vec<(&'static str, Value)> {
    vec![
        ("t-v100", conf(&json!({"vlan": 100, "ipMasq": false}))),
        ("t-v200", conf(&json!({"vlan": 200, "ipam": {}}))),
        (
            "t-trunk",
            conf(&json!({"vlanTrunk": [{"id": 100}], "preserveDefaultVlan": false, "ipam": {}})),
        ),
    ]
}

/// Output sections start with `@@ <key>` lines.
const SCRIPT: &str = r#"
PATH=/usr/sbin:/usr/bin:/sbin:/bin
# call SIDE CMD CONF NETNS ID: the plugin in host netns h, env cleared.
call() {
  ip netns exec h env -i CNI_COMMAND=$2 CNI_CONTAINERID=$5 CNI_NETNS=/run/netns/$4 \
    CNI_IFNAME=eth0 CNI_PATH=/opt/$1 PATH=$PATH /opt/$1/bridge < $3 > /tmp/out
  echo "rc=$?"
  cat /tmp/out; echo
}
# mkcheck CONF RESULT: CONF with RESULT as prevResult.
mkcheck() {
  sed 's/}[[:space:]]*$//' $1; printf ',"prevResult":'; cat $2; printf '}'
}
dump() { # LABEL DATADIR
  echo "@@ $1 vlans"; ip netns exec h bridge -j vlan show; echo
  echo "@@ $1 links"; ip -n h -d -j link show; echo
  echo "@@ $1 addrs"; ip -n h -j addr show; echo
  echo "@@ $1 routes"; ip -n h route; ip -n h -6 route | grep -v '^fe80'
  echo "@@ $1 nat"; ip netns exec h iptables-save -t nat | grep -v '^#'
  echo "@@ $1 forwarding"; ip netns exec h cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding
  echo "@@ $1 c-links"; ip -n c -d -j link show; echo
  echo "@@ $1 c-addrs"; ip -n c -j addr show; echo
  echo "@@ $1 c-routes"; ip -n c route; ip -n c -6 route | grep -v '^fe80'
  echo "@@ $1 leases"; ls $2/bridge 2>/dev/null | grep -v lock
}
one() { # SIDE CASE
  conf=/tmp/$1-$2.json
  data=/tmp/ipam-$1-$2
  sed "s#@DATA@#$data#" /opt/conf/$2.json > "$conf"
  ip netns add h; ip netns add c
  echo "@@ $1 $2 add"; call $1 ADD "$conf" c web-002; cp /tmp/out /tmp/add.out
  dump "$1 $2 after-add" $data
  if [ $1 = ours ]; then
    mkcheck "$conf" /tmp/add.out > /tmp/check.json
    echo "@@ $1 $2 check"; call $1 CHECK /tmp/check.json c web-002
  fi
  echo "@@ $1 $2 del"; call $1 DEL "$conf" c web-002
  dump "$1 $2 after-del" $data
  ip netns del c; ip netns del h
}
up() { cut -d' ' -f1 /proc/uptime; }
echo "@@ time start"; up
for case in $CASES; do
  echo "@@ time $case"; up
  one ours $case
  one ref $case
done

echo "@@ time traffic"; up
# Traffic: a and b on VLAN 100 (gateway cni0.100), x on VLAN 200 in the
# same subnet, d a trunk of VLAN 100 without the default VLAN.
ip netns add h
for n in a b x d; do ip netns add $n; done
for t in t-v100 t-v200 t-trunk; do sed "s#@DATA@#/tmp/ipam-t#" /opt/conf/$t.json > /tmp/$t.json; done
echo "@@ t add-a"; call ours ADD /tmp/t-v100.json a pod-a; cp /tmp/out /tmp/a.out
echo "@@ t add-b"; call ours ADD /tmp/t-v100.json b pod-b; cp /tmp/out /tmp/b.out
echo "@@ t add-x"; call ours ADD /tmp/t-v200.json x pod-x
echo "@@ t add-d"; call ours ADD /tmp/t-trunk.json d pod-d
ip -n x addr add 10.244.1.201/24 dev eth0
ip -n d link add link eth0 name eth0.100 type vlan id 100
ip -n d addr add 10.244.1.202/24 dev eth0.100
ip -n d link set eth0.100 up
ip4() { grep -o '10\.244\.1\.[0-9]*/' $1 | tr -d /; }
A=$(ip4 /tmp/a.out); B=$(ip4 /tmp/b.out)
echo "@@ t ips"; echo "$A $B"
png() { # NAME NETNS DST
  if ip netns exec $2 ping -c1 -W$4 $3 >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 fail"; fi
}
echo "@@ t ping"
png a-b a $B 3
png a-gw a 10.244.1.1 3
png d-a d $A 3
png a-x a 10.244.1.201 1
png d-x d 10.244.1.201 1
echo "@@ t vlans"; ip netns exec h bridge -j vlan show; echo
mkcheck /tmp/t-v100.json /tmp/a.out > /tmp/check-a.json
mkcheck /tmp/t-v100.json /tmp/b.out > /tmp/check-b.json
echo "@@ t check-a"; call ours CHECK /tmp/check-a.json a pod-a
VA=$(grep -o '"veth[0-9a-f]*"' /tmp/a.out | head -1 | tr -d '"')
ip netns exec h bridge vlan del dev $VA vid 100
echo "@@ t check-a-vlan-gone"; call ours CHECK /tmp/check-a.json a pod-a
ip netns exec h ip link set cni0 type bridge vlan_filtering 0
echo "@@ t check-b-no-filtering"; call ours CHECK /tmp/check-b.json b pod-b
ip netns exec h ip link set cni0 type bridge vlan_filtering 1
echo "@@ t del-a"; call ours DEL /tmp/t-v100.json a pod-a
echo "@@ t del-b"; call ours DEL /tmp/t-v100.json b pod-b
echo "@@ t del-x"; call ours DEL /tmp/t-v200.json x pod-x
echo "@@ t del-d"; call ours DEL /tmp/t-trunk.json d pod-d
echo "@@ t links-after"; ip -n h -o link show | sed 's/@[^:]*:/:/' | cut -d: -f2 | tr -d ' '
echo "@@ t leases-after"; ls /tmp/ipam-t/bridge | grep -v lock
for n in a b x d h; do ip netns del $n; done

# A bridge made without filtering: a failed ADD (eth0 taken) leaves it
# off, the next ADD turns it on.
ip netns add h; ip netns add c
ip -n h link add cni0 type bridge
ip -n h link set cni0 up
ip -n c link add eth0 type dummy
fl() { ip -n h -d link show cni0 | grep -o 'vlan_filtering [01]'; }
echo "@@ x add-fails"; call ours ADD /tmp/t-v100.json c pod-e
echo "@@ x after-fail"; fl; ip -n h -o link show | grep -c veth
ip -n c link del eth0
echo "@@ x add"; call ours ADD /tmp/t-v100.json c pod-e
echo "@@ x after-add"; fl
echo "@@ x vlans"; ip netns exec h bridge -j vlan show; echo
echo "@@ time end"; up
echo "@@ end"
"#;

/// The script's output by `@@` key.
fn sections(out: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut key: Option<String> = None;
    for line in out.lines() {
        if let Some(k) = line.strip_prefix("@@ ") {
            key = Some(k.to_string());
            map.insert(k.to_string(), String::new());
        } else if let Some(k) = &key
            && let Some(v) = map.get_mut(k)
        {
            v.push_str(line);
            v.push('\n');
        }
    }
    map
}

/// `rc=N` and the plugin's stdout.
fn outcome(text: &str) -> (i32, Value) {
    let (rc, rest) = text.split_once('\n').unwrap_or((text, ""));
    let rc = rc
        .strip_prefix("rc=")
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(-1);
    (rc, serde_json::from_str(rest).unwrap_or(Value::Null))
}

/// A section made comparable: parsed where it is JSON, MACs and veth
/// names normalised, and for `links` without `vlan_filtering` if asked.
fn comparable(what: &str, text: &str, keep_filtering: bool) -> String {
    let s = match what {
        "links" | "c-links" => {
            let mut l = links_json(text);
            if !keep_filtering {
                for v in &mut l {
                    v["vlan_filtering"] = Value::Null;
                }
            }
            format!("{l:#?}")
        }
        "addrs" | "c-addrs" => format!("{:#?}", addrs_json(text)),
        "vlans" if !keep_filtering => String::new(),
        // The bridge's carrier drops a moment after its last port goes:
        // whether `linkdown` shows yet is timing, not behaviour.
        "routes" | "c-routes" => text.replace(" linkdown", ""),
        _ => text.to_string(),
    };
    normalise(&s, &[])
}

/// `bridge -j vlan show` output, normalised, a range (`vlanEnd`) as its
/// single VLANs.
fn vlans(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(&normalise(text, &[])).unwrap_or(Value::Null);
    for port in v.as_array_mut().into_iter().flatten() {
        let mut single = Vec::new();
        for e in port["vlans"].as_array().into_iter().flatten() {
            let first = e["vlan"].as_u64().unwrap_or(0);
            let last = e["vlanEnd"].as_u64().unwrap_or(first);
            for vid in first..=last {
                let mut one = e.clone();
                one["vlan"] = json!(vid);
                if let Some(o) = one.as_object_mut() {
                    o.remove("vlanEnd");
                }
                single.push(one);
            }
        }
        port["vlans"] = json!(single);
    }
    v
}

/// The bridge's `vlan_filtering` in a `links` section.
fn filtering(text: &str) -> Value {
    links_json(text)
        .into_iter()
        .find(|l| l["name"] == "cni0")
        .map(|l| l["vlan_filtering"].clone())
        .unwrap_or(Value::Null)
}

/// A test that used a stale static build would pass on old code.
fn assert_fresh(bin: &Path) {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .expect("static bridge mtime");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newest = newest_mtime(&src);
    assert!(
        newest <= built,
        "{} is older than cni-bridge/src: rebuild it with ./scripts/build-plugins.sh",
        bin.display()
    );
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p: PathBuf = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

#[test]
fn vlan_options_in_the_vm_match_the_reference_and_isolate() {
    let started = Instant::now();
    let ours_bridge = testbed::image::static_bin("bridge");
    assert_fresh(&ours_bridge);
    let mut vm = Vm::builder()
        .file(&ours_bridge, "/opt/ours/bridge")
        .file(
            testbed::image::static_bin("host-local"),
            "/opt/ours/host-local",
        )
        .file(testbed::image::static_bin("loopback"), "/opt/ours/loopback");
    for p in ["bridge", "host-local", "loopback"] {
        vm = vm.file(testbed::reference_plugin(p), format!("/opt/ref/{p}"));
    }
    let cases = cases();
    let mut names = Vec::new();
    for (name, extra, _) in &cases {
        vm = vm.contents(
            format!("/opt/conf/{name}.json"),
            conf(extra).to_string(),
            0o644,
        );
        names.push(*name);
    }
    for (name, c) in traffic_confs() {
        vm = vm.contents(format!("/opt/conf/{name}.json"), c.to_string(), 0o644);
    }
    let script = format!("CASES='{}'\n{SCRIPT}", names.join(" "));
    let out = vm
        .script(script)
        .timeout(Duration::from_secs(400))
        .run()
        .expect("vm");
    eprintln!(
        "VLAN VM: qemu {:.1?}, in all {:.1?}",
        out.took,
        started.elapsed()
    );
    assert_eq!(out.exit_code, 0, "{out}");
    let s = sections(&out.stdout);
    assert!(s.contains_key("end"), "{out}");
    let get = |k: &str| -> &str {
        s.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no section {k:?} in\n{out}"))
    };

    for (name, _, reference_knows) in &cases {
        for step in ["add", "del"] {
            let (a, b) = (
                outcome(get(&format!("ours {name} {step}"))),
                outcome(get(&format!("ref {name} {step}"))),
            );
            assert_eq!(a.0, 0, "ours {name} {step}: {a:?}");
            assert_eq!(a.0, b.0, "{name} {step}: ours {a:?}, ref {b:?}");
            assert_eq!(
                normalise(&format!("{:#}", a.1), &[]),
                normalise(&format!("{:#}", b.1), &[]),
                "{name} {step} result"
            );
        }
        let check = outcome(get(&format!("ours {name} check")));
        assert_eq!(check.0, 0, "{name} CHECK after ADD: {check:?}");
        for phase in ["after-add", "after-del"] {
            for what in [
                "vlans",
                "links",
                "addrs",
                "routes",
                "nat",
                "forwarding",
                "c-links",
                "c-addrs",
                "c-routes",
                "leases",
            ] {
                let a = get(&format!("ours {name} {phase} {what}"));
                let b = get(&format!("ref {name} {phase} {what}"));
                assert_eq!(
                    comparable(what, a, *reference_knows),
                    comparable(what, b, *reference_knows),
                    "{name} {phase} {what}:\n ours: {a}\n  ref: {b}"
                );
            }
            let ours_links = get(&format!("ours {name} {phase} links"));
            assert_eq!(filtering(ours_links), json!(1), "{name} {phase}");
            if !reference_knows {
                let got = vlans(get(&format!("ours {name} {phase} vlans")));
                let want = expected_vlans(name, phase == "after-del");
                assert_eq!(got, want, "{name} {phase} vlans");
            }
        }
        // The access VLAN's gateway interface comes last in the result.
        let add = outcome(get(&format!("ours {name} add"))).1;
        let ifs = add["interfaces"].as_array().cloned().unwrap_or_default();
        let gw_if = ifs.iter().any(|i| i["name"] == "cni0.100");
        let wants_gw_if = (name.starts_with("v-") && *name != "v-nogw" && *name != "v-l2")
            || *name == "e-nodefault";
        assert_eq!(gw_if, wants_gw_if, "{name}: {add:#}");
    }

    // Traffic stays within a VLAN; the trunk carries it tagged.
    for k in ["add-a", "add-b", "add-x", "add-d", "check-a"] {
        assert_eq!(outcome(get(&format!("t {k}"))).0, 0, "{k}: {out}");
    }
    let ping = get("t ping");
    for want in ["a-b ok", "a-gw ok", "d-a ok", "a-x fail", "d-x fail"] {
        assert!(ping.lines().any(|l| l == want), "{want} in\n{ping}");
    }
    // CHECK notices the VLAN and the filtering taken away.
    let (rc, err) = outcome(get("t check-a-vlan-gone"));
    assert_ne!(rc, 0);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("lacks VLAN 100 as its PVID"),
        "{err}"
    );
    let (rc, err) = outcome(get("t check-b-no-filtering"));
    assert_ne!(rc, 0);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains("does not filter VLANs"),
        "{err}"
    );
    for k in ["del-a", "del-b", "del-x", "del-d"] {
        assert_eq!(outcome(get(&format!("t {k}"))).0, 0, "{k}: {out}");
    }
    // DEL leaves the bridge and the VLAN's gateway pair (as the reference
    // does), and no pod port or lease.
    let links: Vec<String> = normalise(get("t links-after"), &[])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(links, ["lo", "cni0", "<veth>", "cni0.100"], "{out}");
    assert_eq!(get("t leases-after").trim(), "last_reserved_ip.0", "{out}");

    // An existing bridge without filtering.
    assert_ne!(outcome(get("x add-fails")).0, 0, "{out}");
    assert_eq!(get("x after-fail"), "vlan_filtering 0\n0\n", "{out}");
    assert_eq!(outcome(get("x add")).0, 0, "{out}");
    assert_eq!(get("x after-add"), "vlan_filtering 1\n", "{out}");
    let v = vlans(get("x vlans"));
    let pvid100 = json!({"vlan": 100, "flags": ["PVID", "Egress Untagged"]});
    for port in v.as_array().into_iter().flatten().skip(1) {
        assert!(
            port["vlans"]
                .as_array()
                .is_some_and(|l| l.contains(&pvid100)),
            "{v}"
        );
    }
}
