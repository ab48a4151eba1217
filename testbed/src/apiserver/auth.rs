//! Who may do what. `system:masters` may do everything. A node
//! (`system:node:<name>` in `system:nodes`) reads everything and writes only
//! its own Node, its own Lease in kube-node-lease, and the status of pods
//! bound to it, like the Node authorizer with NodeRestriction. Anyone else,
//! `system:anonymous` included, is forbidden (no RBAC bindings exist).

use serde_json::Value;

use super::ApiError;
use crate::pki::Identity;
use super::resources::Resource;

pub struct Request<'a> {
    pub verb: &'a str,
    pub resource: &'a Resource,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
}

fn forbidden(who: &Identity, req: &Request<'_>) -> ApiError {
    let res = match req.subresource {
        Some(s) => format!("{}/{s}", req.resource.plural),
        None => req.resource.plural.to_string(),
    };
    let subject = if req.name.is_empty() {
        res.clone()
    } else {
        format!("{res} \"{}\"", req.name)
    };
    let scope = if req.resource.namespaced && !req.namespace.is_empty() {
        format!(" in the namespace \"{}\"", req.namespace)
    } else if req.resource.namespaced {
        String::new()
    } else {
        " at the cluster scope".to_string()
    };
    ApiError::Forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\"{scope}",
        who.user, req.verb, req.resource.group
    ))
}

/// `existing` is the object the request acts on, when there is one.
pub fn authorize(
    who: &Identity,
    req: &Request<'_>,
    existing: Option<&Value>,
) -> Result<(), ApiError> {
    if who.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let node = who
        .user
        .strip_prefix("system:node:")
        .filter(|_| who.groups.iter().any(|g| g == "system:nodes"));
    let Some(node) = node else {
        return Err(forbidden(who, req));
    };
    if matches!(req.verb, "get" | "list" | "watch") {
        return Ok(());
    }
    let ok = match (req.resource.plural, req.subresource) {
        ("nodes", _) => req.name == node,
        ("leases", None) => req.namespace == "kube-node-lease" && req.name == node,
        ("pods", Some("status")) => {
            existing
                .and_then(|p| p.pointer("/spec/nodeName"))
                .and_then(Value::as_str)
                == Some(node)
        }
        ("pods", None) => {
            req.verb == "delete"
                && existing
                    .and_then(|p| p.pointer("/spec/nodeName"))
                    .and_then(Value::as_str)
                    == Some(node)
        }
        _ => false,
    };
    if ok { Ok(()) } else { Err(forbidden(who, req)) }
}
