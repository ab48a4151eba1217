//! What the real server adds to an object on its way in: the API's
//! defaults for the fields a Go struct always has (a Node's
//! `daemonEndpoints`, a container status's `restartCount`), canonical
//! quantities, and the default admission plugins a Pod or Node meets
//! (ServiceAccount, DefaultTolerationSeconds, Priority,
//! TaintNodesByCondition).

use serde_json::{Value, json};

use super::meta;

/// `resource.Quantity`'s canonical form: "2000m" is "2", "4096Mi" is
/// "4Gi", "131072Ki" is "128Mi"; binary suffixes stay binary, decimal
/// ones decimal. A value it cannot read is left as it is.
pub fn canonical_quantity(q: &str) -> String {
    const BIN: [(&str, u32); 6] = [
        ("Ki", 1),
        ("Mi", 2),
        ("Gi", 3),
        ("Ti", 4),
        ("Pi", 5),
        ("Ei", 6),
    ];
    const DEC: [(&str, i32); 8] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
    ];
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() || num.contains('.') {
        return q.to_string();
    }
    let Ok(n) = num.parse::<u128>() else {
        return q.to_string();
    };
    if let Some((_, p)) = BIN.iter().find(|(s, _)| *s == suffix) {
        let mut bytes = n << (10 * p);
        if n == 0 {
            return "0".into();
        }
        let mut k = 0;
        while k < 6 && bytes % 1024 == 0 {
            bytes /= 1024;
            k += 1;
        }
        return if k == 0 {
            bytes.to_string()
        } else {
            format!("{bytes}{}", BIN[k - 1].0)
        };
    }
    let Some((_, e)) = DEC.iter().find(|(s, _)| *s == suffix) else {
        return q.to_string();
    };
    if n == 0 {
        return "0".into();
    }
    // The value as mantissa * 10^exp, then the largest exponent (a
    // multiple of 3, at most 10^18) that keeps the mantissa whole.
    let (mut m, mut exp) = (n, *e);
    while m % 10 == 0 {
        m /= 10;
        exp += 1;
    }
    let mut e3 = exp.div_euclid(3) * 3;
    e3 = e3.clamp(-9, 12);
    let shift = exp - e3;
    let m = m * 10u128.pow(shift as u32);
    let suffix = DEC.iter().find(|(_, x)| *x == e3).map_or("", |(s, _)| *s);
    format!("{m}{suffix}")
}

fn canonical_map(v: Option<&mut Value>) {
    if let Some(Value::Object(m)) = v {
        for q in m.values_mut() {
            if let Some(s) = q.as_str() {
                *q = json!(canonical_quantity(s));
            }
        }
    }
}

fn default_fields(o: &mut Value, fields: &[(&str, Value)]) {
    if !o.is_object() {
        return;
    }
    for (k, v) in fields {
        if o.get(*k).is_none() {
            o[*k] = v.clone();
        }
    }
}

/// What a Node's status always has, and canonical quantities.
pub fn node(o: &mut Value) {
    if let Some(cidr) = o.pointer("/spec/podCIDR").cloned()
        && o.pointer("/spec/podCIDRs").is_none()
    {
        o["spec"]["podCIDRs"] = json!([cidr]);
    }
    if o.get("status").is_none_or(Value::is_null) {
        o["status"] = json!({});
    }
    let st = &mut o["status"];
    canonical_map(st.get_mut("capacity"));
    canonical_map(st.get_mut("allocatable"));
    // What can be given is what there is, unless said otherwise.
    if st.get("allocatable").is_none()
        && let Some(c) = st.get("capacity").cloned()
    {
        st["allocatable"] = c;
    }
    default_fields(
        st,
        &[("daemonEndpoints", json!({"kubeletEndpoint": {"Port": 0}}))],
    );
    if st.get("nodeInfo").is_none() {
        st["nodeInfo"] = json!({});
    }
    let info: Vec<(&str, Value)> = [
        "machineID",
        "systemUUID",
        "bootID",
        "kernelVersion",
        "osImage",
        "containerRuntimeVersion",
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
    ]
    .into_iter()
    .map(|k| (k, json!("")))
    .collect();
    default_fields(&mut st["nodeInfo"], &info);
    if let Some(cs) = st.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            default_fields(
                c,
                &[
                    ("lastHeartbeatTime", Value::Null),
                    ("lastTransitionTime", Value::Null),
                ],
            );
        }
    }
}

/// TaintNodesByCondition: a new Node is not ready until its kubelet says
/// so.
pub fn node_create(o: &mut Value) {
    let taint = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    if !o.get("spec").is_some_and(Value::is_object) {
        o["spec"] = json!({});
    }
    let taints = o["spec"]
        .as_object_mut()
        .map(|s| s.entry("taints").or_insert_with(|| json!([])));
    if let Some(Value::Array(t)) = taints
        && !t
            .iter()
            .any(|x| x["key"] == taint["key"] && x["effect"] == taint["effect"])
    {
        t.push(taint);
    }
}

fn containers_mut(spec: &mut Value) -> impl Iterator<Item = &mut Value> {
    let Value::Object(spec) = spec else {
        return Vec::new().into_iter();
    };
    spec.iter_mut()
        .filter(|(k, _)| k.as_str() == "containers" || k.as_str() == "initContainers")
        .filter_map(|(_, v)| v.as_array_mut())
        .flat_map(|a| a.iter_mut())
        .collect::<Vec<_>>()
        .into_iter()
}

/// The API defaults of a pod spec (also a ReplicaSet's template).
pub fn pod_spec(spec: &mut Value) {
    default_fields(
        spec,
        &[
            ("restartPolicy", json!("Always")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("dnsPolicy", json!("ClusterFirst")),
            ("securityContext", json!({})),
            ("schedulerName", json!("default-scheduler")),
            ("enableServiceLinks", json!(true)),
        ],
    );
    for c in containers_mut(spec) {
        let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| {
            i.ends_with(":latest") || !i.rsplit('/').next().unwrap_or("").contains(':')
        });
        default_fields(
            c,
            &[
                ("resources", json!({})),
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                (
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                ),
            ],
        );
        if let Some(r) = c.get_mut("resources") {
            canonical_map(r.get_mut("requests"));
            canonical_map(r.get_mut("limits"));
        }
        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                default_fields(p, &[("protocol", json!("TCP"))]);
            }
        }
        if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
            for e in env {
                if let Some(f) = e.pointer_mut("/valueFrom/fieldRef") {
                    default_fields(f, &[("apiVersion", json!("v1"))]);
                }
            }
        }
    }
}

/// The kubelet's QoS class, which the API server sets on create.
pub fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in cs {
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        any |= limits.is_some_and(|l| !l.is_empty()) || requests.is_some_and(|r| !r.is_empty());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let r = requests.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The admission plugins a new Pod meets, after the ServiceAccount was
/// found: its token volume and mounts (this build's projected volume has
/// the OpenShift service CA as a fourth source), the NoExecute
/// tolerations, the default priority.
pub fn pod_create(o: &mut Value) {
    let spec = &mut o["spec"];
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    if spec.get("automountServiceAccountToken") != Some(&json!(false)) {
        let name = format!("kube-api-access-{}", meta::name_suffix());
        let volume = json!({"name": name, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            {"configMap": {"name": "openshift-service-ca.crt",
                "items": [{"key": "service-ca.crt", "path": "service-ca.crt"}]}}],
            "defaultMode": 420}});
        if let Some(m) = spec.as_object_mut() {
            match m.entry("volumes").or_insert_with(|| json!([])) {
                Value::Array(v) => v.push(volume),
                other => *other = json!([volume]),
            }
        }
        let mount = json!({"name": name, "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
        for c in containers_mut(spec) {
            if let Some(m) = c.as_object_mut() {
                match m.entry("volumeMounts").or_insert_with(|| json!([])) {
                    Value::Array(v) => v.push(mount.clone()),
                    other => *other = json!([mount.clone()]),
                }
            }
        }
    }
    let tolerations = spec
        .as_object_mut()
        .map(|m| m.entry("tolerations").or_insert_with(|| json!([])));
    if let Some(Value::Array(t)) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let tolerated = t.iter().any(|x| {
                (x["key"] == key || x.get("key").is_none() && x["operator"] == "Exists")
                    && (x["effect"] == "NoExecute" || x.get("effect").is_none())
            });
            if !tolerated {
                t.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                              "tolerationSeconds": 300}),
                );
            }
        }
    }
    if spec.get("priority").is_none() {
        spec["priority"] = json!(0);
    }
    if spec.get("preemptionPolicy").is_none() {
        spec["preemptionPolicy"] = json!("PreemptLowerPriority");
    }
    let qos = qos_class(spec);
    o["status"] = json!({"phase": "Pending", "qosClass": qos});
}

/// What a Pod's status always has: conditions' clocks, every container
/// status's required fields, `podIPs` from `podIP`.
pub fn pod_status(o: &mut Value) {
    let Some(st) = o.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(ip) = st
        .get("podIP")
        .cloned()
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        && st
            .get("podIPs")
            .is_none_or(|v| v.as_array().is_none_or(|a| a.is_empty()))
    {
        st.insert("podIPs".into(), json!([{"ip": ip}]));
    }
    if let Some(cs) = st.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            default_fields(
                c,
                &[
                    ("lastProbeTime", Value::Null),
                    ("lastTransitionTime", Value::Null),
                ],
            );
        }
    }
    for k in ["containerStatuses", "initContainerStatuses"] {
        if let Some(cs) = st.get_mut(k).and_then(Value::as_array_mut) {
            for c in cs {
                default_fields(
                    c,
                    &[
                        ("state", json!({})),
                        ("lastState", json!({})),
                        ("ready", json!(false)),
                        ("restartCount", json!(0)),
                        ("image", json!("")),
                        ("imageID", json!("")),
                    ],
                );
            }
        }
    }
}

/// What a core/v1 Event always has: the Go struct's fields without
/// `omitempty` (or structs, which it does not drop).
pub fn event(o: &mut Value) {
    default_fields(
        o,
        &[
            ("involvedObject", json!({})),
            ("source", json!({})),
            ("firstTimestamp", Value::Null),
            ("lastTimestamp", Value::Null),
            ("eventTime", Value::Null),
            ("reportingComponent", json!("")),
            ("reportingInstance", json!("")),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (q, want) in [
            ("2000m", "2"),
            ("1500m", "1500m"),
            ("2", "2"),
            ("4096Mi", "4Gi"),
            ("4194304Ki", "4Gi"),
            ("131072Ki", "128Mi"),
            ("16318428Ki", "16318428Ki"),
            ("110", "110"),
            ("1000000Ki", "1000000Ki"),
            ("1000", "1k"),
            ("0", "0"),
        ] {
            assert_eq!(canonical_quantity(q), want, "{q}");
        }
    }
}
