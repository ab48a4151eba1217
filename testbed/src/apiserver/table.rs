//! `Accept: application/json;as=Table;g=meta.k8s.io;v=v1`: the server-side
//! printing kubectl asks for (`kubectl get`, `-o wide`), with the real
//! server's columns for the resources the tutorial looks at.

use serde_json::{Value, json};

use super::meta;
use super::resources::Resource;

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn age(o: &Value) -> String {
    let Some(t) = meta::parse_rfc3339(&s(o, "/metadata/creationTimestamp")) else {
        return "<unknown>".into();
    };
    let secs = meta::unix_now().saturating_sub(t);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Column names, their priority (1 = only with `-o wide`), and the cells
/// for one object.
fn columns(r: &Resource) -> Vec<(&'static str, u8)> {
    match r.plural {
        "pods" => vec![
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ],
        "nodes" => vec![
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ],
        "services" => vec![
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        "endpoints" => vec![("Name", 0), ("Endpoints", 0), ("Age", 0)],
        "namespaces" => vec![("Name", 0), ("Status", 0), ("Age", 0)],
        "leases" => vec![("Name", 0), ("Holder", 0), ("Age", 0)],
        _ => vec![("Name", 0), ("Age", 0)],
    }
}

fn cells(r: &Resource, o: &Value) -> Vec<Value> {
    let name = s(o, "/metadata/name");
    match r.plural {
        "pods" => {
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses.map_or(0, |c| {
                c.iter().filter(|c| c["ready"] == json!(true)).count()
            });
            let restarts: i64 = statuses.map_or(0, |c| {
                c.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                s(o, "/status/phase")
            };
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts),
                json!(age(o)),
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "nodes" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| {
                    c.iter()
                        .find(|c| c["type"] == "Ready")
                        .map(|c| c["status"] == "True")
                });
            let status = if ready == Some(true) {
                "Ready"
            } else {
                "NotReady"
            };
            let addr = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|a| a["type"] == t)
                            .and_then(|a| a["address"].as_str().map(str::to_string))
                    })
            };
            vec![
                json!(name),
                json!(status),
                json!("<none>"),
                json!(age(o)),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(or_none(addr("InternalIP").unwrap_or_default())),
                json!(or_none(addr("ExternalIP").unwrap_or_default())),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "services" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            let selector: Vec<String> = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                json!(name),
                json!(s(o, "/spec/type")),
                json!(s(o, "/spec/clusterIP")),
                json!("<none>"),
                json!(or_none(ports.join(","))),
                json!(age(o)),
                json!(or_none(selector.join(","))),
            ]
        }
        "endpoints" => {
            let mut eps = Vec::new();
            for sub in o
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    for p in sub["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", a["ip"].as_str().unwrap_or(""), p["port"]));
                    }
                }
            }
            vec![json!(name), json!(or_none(eps.join(","))), json!(age(o))]
        }
        "namespaces" => vec![json!(name), json!(s(o, "/status/phase")), json!(age(o))],
        "leases" => vec![
            json!(name),
            json!(s(o, "/spec/holderIdentity")),
            json!(age(o)),
        ],
        _ => vec![json!(name), json!(age(o))],
    }
}

pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

pub fn table(r: &Resource, items: &[Value], rv: u64) -> Value {
    let defs: Vec<Value> = columns(r)
        .into_iter()
        .map(|(n, p)| {
            json!({"name": n, "type": "string", "format": if n == "Name" { "name" } else { "" },
                             "description": "", "priority": p})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({"cells": cells(r, o), "object": {"kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": defs, "rows": rows})
}
