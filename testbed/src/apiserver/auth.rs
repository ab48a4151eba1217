//! Who may do what, as kube-apiserver decides it with
//! `--authorization-mode=Node,RBAC` and the NodeRestriction admission
//! plugin: the Node authorizer first (a node's own Node, Lease and the
//! Pods bound to it, plus its static rules), then RBAC over the stored
//! ClusterRoles, ClusterRoleBindings, Roles and RoleBindings and the
//! bootstrap bindings a fresh cluster has (`system:masters` may do
//! everything; discovery and health for the authenticated; health and
//! version for everyone). NodeRestriction then limits what a node may
//! write. The messages are the real ones, reasons included.

use serde_json::{Value, json};

use super::ApiError;
use super::resources::Resource;
use super::select::FieldSelector;
use super::store::Store;
use crate::pki::Identity;

/// A request as the authorizers see it.
pub struct Request<'a> {
    pub verb: &'a str,
    /// "" for the core group.
    pub group: &'a str,
    /// The resource's plural, known to the stand-in or not (a
    /// SelfSubjectAccessReview may ask of any).
    pub plural: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub fields: &'a FieldSelector,
}

fn groups(who: &Identity) -> Vec<String> {
    let mut g = who.groups.clone();
    if who.user == "system:anonymous" {
        g.push("system:unauthenticated".into());
    } else {
        g.push("system:authenticated".into());
    }
    g
}

fn node_name(who: &Identity) -> Option<&str> {
    who.user
        .strip_prefix("system:node:")
        .filter(|_| who.groups.iter().any(|g| g == "system:nodes"))
}

/// A non-resource path (`/api`, `/version`): the bootstrap roles
/// system:discovery and system:public-info-viewer, or system:masters.
pub fn authorize_path(who: &Identity, path: &str) -> Result<(), ApiError> {
    let g = groups(who);
    let public = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let discovery = ["/api", "/apis", "/openapi"];
    let ok = g.iter().any(|g| g == "system:masters")
        || public.contains(&path)
        || (g.iter().any(|g| g == "system:authenticated")
            && discovery
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/"))));
    if ok {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        msg: format!(
            "forbidden: User \"{}\" cannot get path \"{path}\"",
            who.user
        ),
        details: json!({}),
    })
}

fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({"kind": plural});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn subject(group: &str, plural: &str, name: &str) -> String {
    let q = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    if name.is_empty() {
        q
    } else {
        format!("{q} \"{name}\"")
    }
}

/// An admission plugin's refusal.
pub fn refused(r: &Resource, name: &str, msg: &str) -> ApiError {
    ApiError::Forbidden {
        msg: format!("{} is forbidden: {msg}", subject(r.group, r.plural, name)),
        details: details(r.group, r.plural, name),
    }
}

fn forbidden(who: &Identity, req: &Request<'_>, reason: &str) -> ApiError {
    let res = match req.subresource {
        Some(s) => format!("{}/{s}", req.plural),
        None => req.plural.to_string(),
    };
    // A namespace is its own namespace in the request's attributes.
    let ns = if req.group.is_empty() && req.plural == "namespaces" {
        req.name
    } else {
        req.namespace
    };
    let scope = if !ns.is_empty() {
        format!("in the namespace \"{ns}\"")
    } else {
        "at the cluster scope".to_string()
    };
    let mut msg = format!(
        "{} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
        subject(req.group, req.plural, req.name),
        who.user,
        req.verb,
        req.group
    );
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    ApiError::Forbidden {
        msg,
        details: details(req.group, req.plural, req.name),
    }
}

enum Decision {
    Allow,
    NoOpinion(String),
}

/// The Node authorizer's static rules: (groups, resources, verbs).
const NODE_RULES: &[(&str, &[&str], &[&str])] = &[
    ("", &["services"], &["get", "list", "watch"]),
    (
        "",
        &["nodes"],
        &["create", "get", "list", "watch", "update", "patch"],
    ),
    ("", &["nodes/status"], &["update", "patch"]),
    ("", &["events"], &["create", "update", "patch"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("", &["pods"], &["get", "list", "watch", "create", "delete"]),
    ("", &["pods/status"], &["update", "patch"]),
    ("", &["pods/eviction"], &["create"]),
    (
        "certificates.k8s.io",
        &["certificatesigningrequests"],
        &["create", "get", "list", "watch"],
    ),
    ("", &["serviceaccounts/token"], &["create"]),
    ("", &["endpoints"], &["get"]),
    (
        "node.k8s.io",
        &["runtimeclasses"],
        &["get", "list", "watch"],
    ),
];

fn node_rules_allow(req: &Request<'_>) -> bool {
    let res = match req.subresource {
        Some(s) => format!("{}/{s}", req.plural),
        None => req.plural.to_string(),
    };
    NODE_RULES
        .iter()
        .any(|(g, rs, vs)| *g == req.group && rs.contains(&res.as_str()) && vs.contains(&req.verb))
}

fn node_authorizer(node: &str, req: &Request<'_>, store: &Store) -> Decision {
    let rules = |req: &Request<'_>| {
        if node_rules_allow(req) {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        }
    };
    match (req.group, req.plural) {
        ("", "nodes") if req.subresource.is_none() => match req.verb {
            "get" if req.name.is_empty() => Decision::NoOpinion(format!(
                "node '{node}' cannot read all nodes, only its own Node object"
            )),
            "get" if req.name != node => Decision::NoOpinion(format!(
                "node '{node}' cannot read '{}', only its own Node object",
                req.name
            )),
            "list" | "watch" if !req.fields.requires("metadata.name", node) => Decision::NoOpinion(
                format!("node '{node}' cannot read all nodes, only its own Node object"),
            ),
            _ => rules(req),
        },
        ("", "pods") if req.subresource.is_none() => match req.verb {
            "get" => {
                let bound = Resource::find("", "v1", "pods")
                    .and_then(|r| store.get(r, req.namespace, req.name).ok())
                    .and_then(|p| p.pointer("/spec/nodeName").cloned())
                    == Some(json!(node));
                if bound {
                    Decision::Allow
                } else {
                    Decision::NoOpinion(format!(
                        "no relationship found between node '{node}' and this object"
                    ))
                }
            }
            "list" | "watch" if !req.fields.requires("spec.nodeName", node) => Decision::NoOpinion(
                "can only list/watch pods with spec.nodeName field selector".into(),
            ),
            _ => rules(req),
        },
        ("coordination.k8s.io", "leases") => {
            if !matches!(req.verb, "get" | "create" | "update" | "patch" | "delete") {
                Decision::NoOpinion(
                    "can only get, create, update, patch, or delete a node lease".into(),
                )
            } else if req.namespace != "kube-node-lease" {
                Decision::NoOpinion(
                    "can only access leases in the \"kube-node-lease\" system namespace".into(),
                )
            } else if req.verb != "create" && req.name != node {
                Decision::NoOpinion(
                    "can only access node lease with the same name as the requesting node".into(),
                )
            } else {
                Decision::Allow
            }
        }
        _ => rules(req),
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn rule_allows(rule: &Value, req: &Request<'_>) -> bool {
    let any = |list: Vec<&str>, x: &str| list.iter().any(|v| *v == "*" || *v == x);
    let res = match req.subresource {
        Some(s) => format!("{}/{s}", req.plural),
        None => req.plural.to_string(),
    };
    let names = strs(&rule["resourceNames"]);
    any(strs(&rule["verbs"]), req.verb)
        && any(strs(&rule["apiGroups"]), req.group)
        && strs(&rule["resources"]).iter().any(|r| {
            *r == "*"
                || *r == res
                || (req.subresource.is_some() && *r == format!("{}/*", req.plural))
        })
        && (names.is_empty() || names.contains(&req.name))
}

/// The subject of `binding` that names this identity, as RBAC's reason
/// says it (`Group "system:nodes"`).
fn bound(binding: &Value, who: &Identity, groups: &[String]) -> Option<String> {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| {
            let name = s["name"].as_str().unwrap_or("");
            let ns = s["namespace"].as_str().unwrap_or("");
            let hit = match s["kind"].as_str() {
                Some("User") => name == who.user,
                Some("Group") => groups.iter().any(|g| g == name),
                Some("ServiceAccount") => who.user == format!("system:serviceaccount:{ns}:{name}"),
                _ => false,
            };
            hit.then(|| match s["kind"].as_str() {
                Some("ServiceAccount") => format!("ServiceAccount \"{name}/{ns}\""),
                Some(k) => format!("{k} \"{name}\""),
                None => String::new(),
            })
        })
}

/// RBAC's decision: `Some(reason)` when allowed ("" for system:masters
/// and the bootstrap grants, whose reasons no client of ours reads).
fn rbac_allows(who: &Identity, req: &Request<'_>, store: &Store) -> Option<String> {
    let g = groups(who);
    if g.iter().any(|g| g == "system:masters") {
        return Some(String::new());
    }
    // system:basic-user: anyone authenticated may ask what it may do.
    if g.iter().any(|g| g == "system:authenticated")
        && req.group == "authorization.k8s.io"
        && matches!(
            req.plural,
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
        && req.verb == "create"
    {
        return Some(String::new());
    }
    let find = |plural: &str| Resource::find("rbac.authorization.k8s.io", "v1", plural);
    let (cr, crb, role, rb) = (
        find("clusterroles")?,
        find("clusterrolebindings")?,
        find("roles")?,
        find("rolebindings")?,
    );
    let rules_of = |r: &Resource, ns: &str, name: &str| -> Vec<Value> {
        store
            .get(r, ns, name)
            .ok()
            .and_then(|o| o["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    for b in store.all(crb) {
        let Some(subject) = bound(&b, who, &g) else {
            continue;
        };
        let role_name = b["roleRef"]["name"].as_str().unwrap_or("");
        if rules_of(cr, "", role_name)
            .iter()
            .any(|rule| rule_allows(rule, req))
        {
            return Some(format!(
                "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{role_name}\" to {subject}",
                b["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
    }
    if req.namespace.is_empty() {
        return None;
    }
    for b in store.all(rb) {
        if b.pointer("/metadata/namespace") != Some(&json!(req.namespace)) {
            continue;
        }
        let Some(subject) = bound(&b, who, &g) else {
            continue;
        };
        let role_name = b["roleRef"]["name"].as_str().unwrap_or("");
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or("Role");
        let rules = if role_kind == "ClusterRole" {
            rules_of(cr, "", role_name)
        } else {
            rules_of(role, req.namespace, role_name)
        };
        if rules.iter().any(|rule| rule_allows(rule, req)) {
            return Some(format!(
                "RBAC: allowed by RoleBinding \"{}/{}\" of {role_kind} \"{role_name}\" to {subject}",
                b["metadata"]["name"].as_str().unwrap_or(""),
                req.namespace
            ));
        }
    }
    None
}

/// The authorizers, in the real server's order: Node, then RBAC. `Ok`
/// carries the allowing reason, `Err` the Node authorizer's ("" when
/// there is none).
pub fn decide(who: &Identity, req: &Request<'_>, store: &Store) -> Result<String, String> {
    let mut reason = String::new();
    if let Some(node) = node_name(who) {
        match node_authorizer(node, req, store) {
            Decision::Allow => return Ok(String::new()),
            Decision::NoOpinion(r) => reason = r,
        }
    }
    rbac_allows(who, req, store).ok_or(reason)
}

pub fn authorize(who: &Identity, req: &Request<'_>, store: &Store) -> Result<(), ApiError> {
    decide(who, req, store)
        .map(drop)
        .map_err(|reason| forbidden(who, req, &reason))
}

/// A SelfSubjectAccessReview: the question echoed (empty fields
/// dropped) and the answer, as the real server gives them.
pub fn review(who: &Identity, body: &Value, store: &Store) -> Value {
    let mut attrs = body
        .pointer("/spec/resourceAttributes")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = attrs.as_object_mut() {
        m.retain(|_, v| !(v.is_null() || v == "" || v == &json!({})));
    }
    let get = |k: &str| attrs.get(k).and_then(Value::as_str).unwrap_or("");
    let fields = FieldSelector::parse(
        attrs
            .pointer("/fieldSelector/rawSelector")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )
    .unwrap_or_default();
    let sub = get("subresource");
    let req = Request {
        verb: get("verb"),
        group: get("group"),
        plural: get("resource"),
        subresource: (!sub.is_empty()).then_some(sub),
        namespace: get("namespace"),
        name: get("name"),
        fields: &fields,
    };
    let status = match decide(who, &req, store) {
        Ok(reason) if reason.is_empty() => json!({"allowed": true}),
        Ok(reason) => json!({"allowed": true, "reason": reason}),
        Err(reason) if reason.is_empty() => json!({"allowed": false}),
        Err(reason) => json!({"allowed": false, "reason": reason}),
    };
    json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
           "metadata": {}, "spec": {"resourceAttributes": attrs}, "status": status})
}

/// NodeRestriction: what a node may write, once authorized. `existing` is
/// the object acted on, `next` the object a create or update would store.
pub fn admit(
    who: &Identity,
    req: &Request<'_>,
    existing: Option<&Value>,
    next: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_name(who) else {
        return Ok(());
    };
    let Some(r) = Resource::find(req.group, "v1", req.plural) else {
        return Ok(());
    };
    let bound_here =
        |o: Option<&Value>| o.and_then(|p| p.pointer("/spec/nodeName")) == Some(&json!(node));
    match (r.group, r.plural, req.verb) {
        ("", "nodes", "create" | "update" | "patch") => {
            if req.name != node {
                return Err(refused(
                    r,
                    req.name,
                    &format!(
                        "node \"{node}\" is not allowed to modify node \"{}\"",
                        req.name
                    ),
                ));
            }
            if req.verb != "create"
                && req.subresource.is_none()
                && existing.and_then(|o| o.pointer("/spec/taints"))
                    != next.and_then(|o| o.pointer("/spec/taints"))
            {
                return Err(refused(
                    r,
                    req.name,
                    &format!("node \"{node}\" is not allowed to modify taints"),
                ));
            }
        }
        ("", "pods", "create") if req.subresource.is_none() => {
            let mirror = next
                .and_then(|p| p.pointer("/metadata/annotations/kubernetes.io~1config.mirror"))
                .is_some();
            if !mirror {
                return Err(refused(
                    r,
                    req.name,
                    &format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                    ),
                ));
            }
        }
        ("", "pods", "delete") if !bound_here(existing) => {
            return Err(refused(
                r,
                req.name,
                &format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"),
            ));
        }
        ("", "pods", "update" | "patch")
            if req.subresource == Some("status") && !bound_here(existing) =>
        {
            return Err(refused(
                r,
                req.name,
                &format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                ),
            ));
        }
        ("coordination.k8s.io", "leases", "create") if req.name != node => {
            return Err(refused(
                r,
                req.name,
                "can only access node lease with the same name as the requesting node",
            ));
        }
        _ => {}
    }
    Ok(())
}
