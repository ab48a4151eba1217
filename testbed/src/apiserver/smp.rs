//! Strategic merge patch with the list rules of the real API for the
//! objects the stand-in serves. Lists with a merge key merge element by
//! element (the patch's elements in patch order and the ones only the
//! server has in live order, interleaved by their live positions, as
//! apimachinery's normalizeElementOrder does);
//! every other list is atomic and replaced whole. Supported directives:
//! `$patch: replace|delete` on maps and list elements, `$setElementOrder/`,
//! `$deleteFromPrimitiveList/`, and `$retainKeys`.

use serde_json::{Map, Value};

/// The merge key of the list at `path` (field names from the root, list
/// elements as `[]`), or `None` when the list is atomic.
fn merge_key(path: &[String]) -> Option<&'static str> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let last = *path.last()?;
    let parent = path.iter().rev().nth(1).copied().unwrap_or("");
    match (parent, last) {
        // Pod and node conditions, node addresses.
        ("status", "conditions") => Some("type"),
        ("status", "addresses") => Some("type"),
        // A pod's IPs and its host's: merged by address.
        ("status", "podIPs") | ("status", "hostIPs") => Some("ip"),
        ("spec", "containers") | ("spec", "initContainers") | ("spec", "ephemeralContainers") => {
            Some("name")
        }
        ("spec", "volumes") => Some("name"),
        ("spec", "taints") => Some("key"),
        ("spec", "tolerations") => None,
        ("[]", "ports") if path.contains(&"containers") || path.contains(&"initContainers") => {
            Some("containerPort")
        }
        ("spec", "ports") => Some("port"),
        ("[]", "env") => Some("name"),
        ("[]", "volumeMounts") => Some("mountPath"),
        ("metadata", "ownerReferences") => Some("uid"),
        _ => None,
    }
}

/// Lists of scalars merged as sets.
fn is_primitive_set(path: &[String]) -> bool {
    path.len() >= 2 && path[path.len() - 2] == "metadata" && path[path.len() - 1] == "finalizers"
}

pub fn apply(original: &Value, patch: &Value) -> Value {
    merge(original, patch, &mut Vec::new())
}

fn merge(original: &Value, patch: &Value, path: &mut Vec<String>) -> Value {
    let (Value::Object(o), Value::Object(p)) = (original, patch) else {
        return strip_directives(patch);
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut r = p.clone();
        r.remove("$patch");
        return strip_directives(&Value::Object(r));
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Value::Object(Map::new());
    }
    let mut out = o.clone();
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match (out.get(k), pv) {
            (Some(Value::Array(ov)), Value::Array(pl)) => {
                let order = p
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                merge_list(ov, pl, order, path)
            }
            (Some(ov @ Value::Object(_)), Value::Object(_)) => merge(ov, pv, path),
            _ => strip_directives(pv),
        };
        path.pop();
        out.insert(k.clone(), merged);
    }
    // Deletions from primitive lists.
    for (k, v) in p {
        if let (Some(field), Value::Array(doomed)) =
            (k.strip_prefix("$deleteFromPrimitiveList/"), v)
            && let Some(Value::Array(list)) = out.get_mut(field)
        {
            list.retain(|x| !doomed.contains(x));
        }
    }
    Value::Object(out)
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    order: Option<&Vec<Value>>,
    path: &mut Vec<String>,
) -> Value {
    if is_primitive_set(path) {
        let mut out: Vec<Value> = patch.to_vec();
        for v in original {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Value::Array(out);
    }
    let Some(key) = merge_key(path) else {
        return Value::Array(patch.iter().map(strip_directives).collect());
    };
    // `{"$patch": "replace"}` among the elements: the list becomes the
    // patch's other elements.
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            patch
                .iter()
                .filter(|v| v.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        );
    }
    let id = |v: &Value| v.get(key).cloned();
    let mut merged: Vec<Value> = Vec::new();
    path.push("[]".to_string());
    for pv in patch {
        let Some(k) = id(pv) else { continue };
        let deleted = pv.get("$patch").and_then(Value::as_str) == Some("delete");
        if deleted {
            continue;
        }
        let base = original.iter().find(|o| id(o).as_ref() == Some(&k));
        merged.push(match base {
            Some(b) => merge(b, pv, path),
            None => strip_directives(pv),
        });
    }
    path.pop();
    let deleted: Vec<Value> = patch
        .iter()
        .filter(|pv| pv.get("$patch").and_then(Value::as_str) == Some("delete"))
        .filter_map(id)
        .collect();
    let in_patch: Vec<Value> = patch.iter().filter_map(id).collect();
    let server_only = original
        .iter()
        .filter(|o| id(o).is_some_and(|k| !in_patch.contains(&k) && !deleted.contains(&k)));
    // apimachinery's normalizeElementOrder: the patch's elements in the
    // patch's order (or $setElementOrder's), the server-only ones in the
    // live order, merged by where each stood in the live list.
    let pos = |list: &[Value], v: &Value| {
        id(v).and_then(|k| list.iter().position(|o| o.get(key) == Some(&k)))
    };
    let patch_order: Vec<Value> = order.cloned().unwrap_or_else(|| patch.to_vec());
    let mut right = merged;
    right.sort_by_key(|v| pos(&patch_order, v).map_or(-1, |i| i as i64));
    let left: Vec<Value> = server_only.cloned().collect();
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        let take_left = if i >= left.len() {
            false
        } else if j >= right.len() {
            true
        } else {
            matches!((pos(original, &left[i]), pos(original, &right[j])), (Some(l), Some(r)) if l < r)
        };
        if take_left {
            out.push(left[i].clone());
            i += 1;
        } else {
            out.push(right[j].clone());
            j += 1;
        }
    }
    Value::Array(out)
}

/// A value from a patch, without directive keys.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_replace_directive_in_a_merged_list_replaces_it() {
        let pod = json!({"status": {"podIPs": [{"ip": "10.244.1.2"}]}});
        let patch = json!({"status": {"podIPs": [{"$patch": "replace"}, {"ip": "10.244.1.3"}]}});
        assert_eq!(
            apply(&pod, &patch)["status"]["podIPs"],
            json!([{"ip": "10.244.1.3"}])
        );
        let merged = apply(&pod, &json!({"status": {"podIPs": [{"ip": "10.244.1.3"}]}}));
        assert_eq!(
            merged["status"]["podIPs"],
            json!([{"ip": "10.244.1.3"}, {"ip": "10.244.1.2"}])
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_merge_by_type_in_apimachinery_order() {
        let pod = json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False"}]}});
        let patch = json!({"status": {"conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"}]}});
        let out = apply(&pod, &patch);
        let types: Vec<&str> = out["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        // New ones before what the live list had in front of them; the
        // rest keep the live order (measured on kube-apiserver v1.36).
        assert_eq!(types, ["Initialized", "PodScheduled", "Ready"]);
        assert_eq!(out["status"]["conditions"][1]["status"], "True");
    }

    #[test]
    fn container_statuses_are_atomic() {
        let pod =
            json!({"status": {"containerStatuses": [{"name": "a", "ready": true}, {"name": "b"}]}});
        let patch = json!({"status": {"containerStatuses": [{"name": "b", "ready": false}]}});
        let out = apply(&pod, &patch);
        assert_eq!(
            out["status"]["containerStatuses"],
            json!([{"name": "b", "ready": false}])
        );
    }

    #[test]
    fn ports_merge_by_container_port_and_null_deletes() {
        let pod = json!({"spec": {"containers": [{"name": "web", "image": "x",
            "ports": [{"containerPort": 8080, "name": "http"}]}]}, "metadata": {"labels": {"a": "1", "b": "2"}}});
        let patch = json!({"spec": {"containers": [{"name": "web",
            "ports": [{"containerPort": 9090}]}]}, "metadata": {"labels": {"a": null}}});
        let out = apply(&pod, &patch);
        let ports = &out["spec"]["containers"][0]["ports"];
        assert_eq!(ports.as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["containers"][0]["image"], "x");
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
    }

    #[test]
    fn delete_directive_and_element_order() {
        let node = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "1"}, {"type": "Hostname", "address": "h"}]}});
        let patch = json!({"status": {
            "$setElementOrder/addresses": [{"type": "Hostname"}, {"type": "InternalIP"}],
            "addresses": [{"type": "InternalIP", "$patch": "delete"}]}});
        let out = apply(&node, &patch);
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "Hostname", "address": "h"}])
        );
    }
}
