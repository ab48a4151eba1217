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

/// apimachinery's `duration.HumanDuration`, as the printers show a time
/// since: "5s", "2m3s", "3h40m", "4d2h", "6y341d".
fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let years = hours / 24 / 365;
        return match (hours / 24) % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The time since an RFC 3339 time, or "<unknown>" for none.
fn since(t: &Value) -> String {
    let Some(t) = t.as_str().and_then(meta::parse_rfc3339) else {
        return "<unknown>".into();
    };
    human_duration(meta::unix_now() as i64 - t as i64)
}

/// The real server's column definitions (descriptions and all), by
/// resource.
const COLUMNS: &str = include_str!("columns.json");

fn columns(r: &Resource) -> Vec<Value> {
    static C: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let all = C.get_or_init(|| serde_json::from_str(COLUMNS).unwrap_or(Value::Null));
    all.get(r.plural)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| {
            vec![
                json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
                json!({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}),
            ]
        })
}

/// "a,b,c", or the first three and " + N more...", as kubectl's printers
/// shorten lists.
fn first_three(items: &[String]) -> String {
    if items.len() > 3 {
        format!("{} + {} more...", items[..3].join(","), items.len() - 3)
    } else {
        items.join(",")
    }
}

fn selector_text(sel: Option<&Value>) -> String {
    sel.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
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
                json!(restarts.to_string()),
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
            let (k, a) = (
                s(o, "/status/nodeInfo/kernelVersion"),
                s(o, "/status/nodeInfo/architecture"),
            );
            let kernel = if a.is_empty() {
                k
            } else {
                format!("{k} ({a})")
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
                json!(kernel),
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
            vec![
                json!(name),
                json!(or_none(first_three(&eps))),
                json!(age(o)),
            ]
        }
        "namespaces" => vec![json!(name), json!(s(o, "/status/phase")), json!(age(o))],
        "events" => {
            // printEvent: the first time, or the event time; the last, or
            // the first; a series' count and time over the Event's own.
            let mut first = since(&o["firstTimestamp"]);
            if o["firstTimestamp"].is_null() {
                first = since(&o["eventTime"]);
            }
            let mut last = since(&o["lastTimestamp"]);
            if o["lastTimestamp"].is_null() {
                last = first.clone();
            }
            let mut count = o["count"].as_i64().unwrap_or(0);
            if let Some(series) = o.get("series").filter(|v| v.is_object()) {
                last = since(&series["lastObservedTime"]);
                count = series["count"].as_i64().unwrap_or(0);
            } else if count == 0 {
                count = 1;
            }
            let kind = s(o, "/involvedObject/kind").to_lowercase();
            let involved = s(o, "/involvedObject/name");
            let target = if involved.is_empty() {
                kind
            } else {
                format!("{kind}/{involved}")
            };
            let first_non_empty = |a: String, b: String| if a.is_empty() { b } else { a };
            let component = first_non_empty(s(o, "/source/component"), s(o, "/reportingComponent"));
            let instance = first_non_empty(s(o, "/source/host"), s(o, "/reportingInstance"));
            let source = match (component.is_empty(), instance.is_empty()) {
                (true, _) => "<unknown>".to_string(),
                (false, true) => component,
                (false, false) => format!("{component}, {instance}"),
            };
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(target),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message").trim()),
                json!(first),
                json!(count),
                json!(name),
            ]
        }
        "leases" => vec![
            json!(name),
            json!(s(o, "/spec/holderIdentity")),
            json!(age(o)),
        ],
        "endpointslices" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["port"].to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let unset = |x: String| {
                if x.is_empty() {
                    "<unset>".to_string()
                } else {
                    x
                }
            };
            vec![
                json!(name),
                json!(s(o, "/addressType")),
                json!(unset(first_three(&ports))),
                json!(unset(first_three(&addrs))),
                json!(age(o)),
            ]
        }
        "clusterroles" | "roles" => vec![json!(name), json!(s(o, "/metadata/creationTimestamp"))],
        "clusterrolebindings" | "rolebindings" => {
            let subjects = |kind: &str| {
                o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| {
                        let n = x["name"].as_str().unwrap_or("");
                        match x["namespace"].as_str() {
                            Some(ns) if kind == "ServiceAccount" => format!("{ns}/{n}"),
                            _ => n.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                json!(age(o)),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        "replicasets" => {
            let containers = o
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array);
            let list = |k: &str| {
                containers
                    .into_iter()
                    .flatten()
                    .map(|c| c[k].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            vec![
                json!(name),
                json!(n("/spec/replicas")),
                json!(n("/status/replicas")),
                json!(n("/status/readyReplicas")),
                json!(age(o)),
                json!(list("name")),
                json!(list("image")),
                json!(selector_text(o.pointer("/spec/selector/matchLabels"))),
            ]
        }
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
    let defs = columns(r);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (5, "5s"),
            (119, "119s"),
            (123, "2m3s"),
            (600, "10m"),
            (3 * 3600 + 40 * 60, "3h40m"),
            (20 * 3600, "20h"),
            (4 * 86_400 + 2 * 3600, "4d2h"),
            (100 * 86_400, "100d"),
            ((6 * 365 + 341) * 86_400, "6y341d"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
