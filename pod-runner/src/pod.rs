//! What pod-runner takes from a Pod: the checks that make it safe to act
//! on (names that become paths, the node it is bound to), the parts of the
//! spec we run, and a warning for every field we do not.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::Value;

use crate::quantity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("pod {0} has no {1}")]
    Missing(String, &'static str),
    #[error("pod {pod}: invalid {what} {value:?}")]
    Invalid {
        pod: String,
        what: &'static str,
        value: String,
    },
    #[error("pod {pod} is not bound to a node yet (no spec.nodeName); the scheduler binds it")]
    Unbound { pod: String },
    #[error("pod {pod} is bound to node {bound:?}, not to this node {node:?}")]
    OtherNode {
        pod: String,
        bound: String,
        node: String,
    },
    #[error("pod {pod}: {msg}")]
    Unsupported { pod: String, msg: String },
}

/// A volume we can provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    EmptyDir { memory: bool, size: Option<u64> },
    HostPath { path: String, kind: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// An env var before the pod's IP is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Value(String),
    /// A `fieldRef` path (`metadata.name`, `status.podIP`, ...).
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub pull_policy: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, EnvValue)>,
    pub working_dir: Option<String>,
    pub memory_limit: Option<i64>,
    pub cpu_limit_milli: Option<i64>,
    pub cpu_request_milli: Option<i64>,
    pub mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub hostname: String,
    pub grace_seconds: i64,
    pub containers: Vec<ContainerPlan>,
    pub volumes: BTreeMap<String, VolumeSource>,
    pub warnings: Vec<String>,
}

impl PodPlan {
    /// `<ns>/<name>`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The kubelet's pod directory name: `<ns>_<name>_<uid>`.
    pub fn dir_name(&self) -> String {
        format!("{}_{}_{}", self.namespace, self.name, self.uid)
    }
}

/// A DNS-1123 label (namespaces, container and volume names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (pod names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

// Fields the scheduler, the API server or controllers act on: nothing for
// a node to do, so no warning.
const POD_FIELDS_OK: &[&str] = &[
    "containers",
    "volumes",
    "nodeName",
    "hostname",
    "restartPolicy",
    "dnsPolicy",
    "schedulerName",
    "terminationGracePeriodSeconds",
    "priority",
    "priorityClassName",
    "preemptionPolicy",
    "tolerations",
    "affinity",
    "nodeSelector",
    "topologySpreadConstraints",
    "serviceAccountName",
    "serviceAccount",
];

const CONTAINER_FIELDS_OK: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "workingDir",
    "resources",
    "volumeMounts",
    "ports",
    "terminationMessagePath",
    "terminationMessagePolicy",
];

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        _ => false,
    }
}

fn unknown_fields(v: &Value, ok: &[&str], at: &str, warnings: &mut Vec<String>) {
    for (k, val) in v.as_object().into_iter().flatten() {
        if !ok.contains(&k.as_str()) && !is_empty(val) {
            warnings.push(format!("{at}.{k} is not supported by pod-runner; ignored"));
        }
    }
}

/// Checks the pod and takes what we run from it. `node` is this node.
pub fn plan(pod: &Pod, node: &str) -> Result<PodPlan, PodError> {
    let m = &pod.metadata;
    let name = m.name.clone().unwrap_or_default();
    let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
    let key = format!("{namespace}/{name}");
    let invalid = |what, value: &str| PodError::Invalid {
        pod: key.clone(),
        what,
        value: value.to_string(),
    };
    if !is_dns_subdomain(&name) {
        return Err(invalid("name", &name));
    }
    if !is_dns_label(&namespace) {
        return Err(invalid("namespace", &namespace));
    }
    let uid = m
        .uid
        .clone()
        .ok_or_else(|| PodError::Missing(key.clone(), "metadata.uid"))?;
    if !is_uid(&uid) {
        return Err(invalid("uid", &uid));
    }
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PodError::Missing(key.clone(), "spec"))?;
    let bound = spec.node_name.clone().unwrap_or_default();
    if bound.is_empty() {
        return Err(PodError::Unbound { pod: key });
    }
    if bound != node {
        return Err(PodError::OtherNode {
            pod: key,
            bound,
            node: node.to_string(),
        });
    }
    if spec.host_network == Some(true) {
        return Err(PodError::Unsupported {
            pod: key,
            msg: "hostNetwork pods are not supported".into(),
        });
    }
    let mut warnings = Vec::new();
    let spec_json = serde_json::to_value(spec).unwrap_or(Value::Null);
    unknown_fields(&spec_json, POD_FIELDS_OK, "spec", &mut warnings);

    let mut volumes = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        if !is_dns_label(&v.name) {
            return Err(invalid("volume name", &v.name));
        }
        if let Some(e) = &v.empty_dir {
            let size = match &e.size_limit {
                Some(q) => Some(
                    quantity::parse_units(&q.0)
                        .ok()
                        .and_then(|b| u64::try_from(b).ok())
                        .ok_or_else(|| invalid("emptyDir sizeLimit", &q.0))?,
                ),
                None => None,
            };
            volumes.insert(
                v.name.clone(),
                VolumeSource::EmptyDir {
                    memory: e.medium.as_deref() == Some("Memory"),
                    size,
                },
            );
        } else if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err(invalid("hostPath path", &h.path));
            }
            volumes.insert(
                v.name.clone(),
                VolumeSource::HostPath {
                    path: h.path.clone(),
                    kind: h.type_.clone().unwrap_or_default(),
                },
            );
        } else {
            warnings.push(format!(
                "volume {:?}: only emptyDir and hostPath volumes are supported; it is skipped, with its mounts",
                v.name
            ));
        }
    }

    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        containers.push(container_plan(c, i, &volumes, &key, &mut warnings)?);
    }
    if containers.is_empty() {
        return Err(PodError::Missing(key, "containers"));
    }
    for kind in ["initContainers", "ephemeralContainers"] {
        if spec_json.get(kind).is_some_and(|v| !is_empty(v)) {
            // Named already by unknown_fields; running the app containers
            // without their init containers would be wrong.
            return Err(PodError::Unsupported {
                pod: key,
                msg: format!("spec.{kind} is not supported"),
            });
        }
    }
    Ok(PodPlan {
        hostname: spec.hostname.clone().unwrap_or_else(|| name.clone()),
        grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30).max(0),
        namespace,
        name,
        uid,
        node: bound,
        containers,
        volumes,
        warnings,
    })
}

fn container_plan(
    c: &Container,
    i: usize,
    volumes: &BTreeMap<String, VolumeSource>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Result<ContainerPlan, PodError> {
    let invalid = |what, value: &str| PodError::Invalid {
        pod: key.to_string(),
        what,
        value: value.to_string(),
    };
    if !is_dns_label(&c.name) {
        return Err(invalid("container name", &c.name));
    }
    let at = format!("spec.containers[{i}]");
    let json = serde_json::to_value(c).unwrap_or(Value::Null);
    unknown_fields(&json, CONTAINER_FIELDS_OK, &at, warnings);
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| PodError::Missing(key.to_string(), "container image"))?;
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        env.push((e.name.clone(), env_value(e, &at, warnings)));
    }
    let mut plan = ContainerPlan {
        name: c.name.clone(),
        image,
        pull_policy: c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into()),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        memory_limit: None,
        cpu_limit_milli: None,
        cpu_request_milli: None,
        mounts: Vec::new(),
    };
    if let Some(r) = &c.resources {
        for (kind, list) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (res, q) in list.iter().flatten() {
                let parsed = |f: fn(&str) -> Result<i128, quantity::QuantityError>| {
                    f(&q.0)
                        .ok()
                        .and_then(|v| i64::try_from(v).ok())
                        .ok_or_else(|| invalid("resource quantity", &q.0))
                };
                match (kind, res.as_str()) {
                    ("limits", "memory") => {
                        plan.memory_limit = Some(parsed(quantity::parse_units)?)
                    }
                    ("limits", "cpu") => {
                        plan.cpu_limit_milli = Some(parsed(quantity::parse_milli)?)
                    }
                    ("requests", "cpu") => {
                        plan.cpu_request_milli = Some(parsed(quantity::parse_milli)?)
                    }
                    // A memory request only informs the scheduler.
                    ("requests", "memory") => {}
                    _ => warnings.push(format!(
                        "{at}.resources.{kind}.{res} is not supported by pod-runner; ignored"
                    )),
                }
            }
        }
    }
    for vm in c.volume_mounts.iter().flatten() {
        if !vm.mount_path.starts_with('/') {
            return Err(invalid("mountPath", &vm.mount_path));
        }
        if vm.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
            warnings.push(format!(
                "{at}.volumeMounts {:?}: subPath is not supported; the whole volume is mounted",
                vm.name
            ));
        }
        if !volumes.contains_key(&vm.name) {
            // Named in the volume's own warning (or an invalid pod).
            continue;
        }
        plan.mounts.push(VolumeMount {
            volume: vm.name.clone(),
            path: vm.mount_path.clone(),
            read_only: vm.read_only.unwrap_or(false),
        });
    }
    for p in c.ports.iter().flatten() {
        if p.host_port.is_some_and(|h| h != 0) {
            warnings.push(format!(
                "{at}.ports: hostPort {} is not supported; ignored",
                p.host_port.unwrap_or(0)
            ));
        }
    }
    Ok(plan)
}

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
];

fn env_value(e: &EnvVar, at: &str, warnings: &mut Vec<String>) -> EnvValue {
    let Some(from) = &e.value_from else {
        return EnvValue::Value(e.value.clone().unwrap_or_default());
    };
    match &from.field_ref {
        Some(f) if FIELDS.contains(&f.field_path.as_str()) => EnvValue::Field(f.field_path.clone()),
        _ => {
            warnings.push(format!(
                "{at}.env {:?}: only fieldRef to {} is supported; set to \"\"",
                e.name,
                FIELDS.join(", ")
            ));
            EnvValue::Value(String::new())
        }
    }
}

/// Values of the fieldRef paths once the pod runs.
pub struct Fields<'a> {
    pub plan: &'a PodPlan,
    pub service_account: &'a str,
    pub pod_ips: &'a [String],
    pub host_ip: &'a str,
}

impl Fields<'_> {
    fn get(&self, path: &str) -> String {
        match path {
            "metadata.name" => self.plan.name.clone(),
            "metadata.namespace" => self.plan.namespace.clone(),
            "metadata.uid" => self.plan.uid.clone(),
            "spec.nodeName" => self.plan.node.clone(),
            "spec.serviceAccountName" => self.service_account.to_string(),
            "status.podIP" => self.pod_ips.first().cloned().unwrap_or_default(),
            "status.podIPs" => self.pod_ips.join(","),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            _ => String::new(),
        }
    }
}

/// `$(VAR)` references expanded as the kubelet does: from the vars defined
/// before, `$$` escapes a `$`, and an unknown reference stays as written.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the image's, then the pod's (later wins),
/// with references expanded.
pub fn environment(c: &ContainerPlan, image_env: &[String], f: &Fields<'_>) -> Vec<String> {
    let mut vars: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    vars.push(("HOSTNAME".into(), f.plan.hostname.clone()));
    for (k, v) in &c.env {
        let value = match v {
            EnvValue::Value(s) => expand(s, &vars),
            EnvValue::Field(p) => f.get(p),
        };
        vars.push((k.clone(), value));
    }
    // Later definitions of a name replace earlier ones, in place.
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in vars {
        match out.iter_mut().find(|(ok, _)| *ok == k) {
            Some(e) => e.1 = v,
            None => out.push((k, v)),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The process: `command` replaces the image's Entrypoint (and drops its
/// Cmd), `args` replaces Cmd; references expanded from the environment.
pub fn process_args(c: &ContainerPlan, image_config: &Value, env: &[String]) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let entrypoint = strings(&image_config["Entrypoint"]);
    let cmd = strings(&image_config["Cmd"]);
    let vars: Vec<(String, String)> = env
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let x = |l: &[String]| -> Vec<String> { l.iter().map(|s| expand(s, &vars)).collect() };
    match (&c.command, &c.args) {
        (Some(command), Some(args)) => [x(command), x(args)].concat(),
        (Some(command), None) => x(command),
        (None, Some(args)) => [entrypoint, x(args)].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: Value) -> Pod {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-002", "namespace": "default", "uid": "4a1f0c2e-1111-4000-8000-000000000002"},
            "spec": {"nodeName": "inajob", "restartPolicy": "Always", "containers": [
                {"name": "web", "image": "localhost/web:latest", "ports": [{"containerPort": 8080}]}]}
        });
        json_patch::merge(&mut p, &extra);
        serde_json::from_value(p).expect("pod")
    }

    #[test]
    fn refuses_pods_of_other_nodes_and_unbound_ones() {
        assert!(matches!(
            plan(&pod(json!({})), "yuanying"),
            Err(PodError::OtherNode { .. })
        ));
        let unbound = pod(json!({"spec": {"nodeName": null}}));
        assert!(matches!(
            plan(&unbound, "inajob"),
            Err(PodError::Unbound { .. })
        ));
        let p = plan(&pod(json!({})), "inajob").expect("plan");
        assert_eq!(
            p.dir_name(),
            "default_web-002_4a1f0c2e-1111-4000-8000-000000000002"
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn names_that_become_paths_are_checked() {
        let evil = pod(json!({"metadata": {"uid": "../../etc"}}));
        assert!(matches!(
            plan(&evil, "inajob"),
            Err(PodError::Invalid { what: "uid", .. })
        ));
        let evil = pod(
            json!({"spec": {"containers": [{"name": "../x", "image": "localhost/web:latest"}]}}),
        );
        assert!(matches!(
            plan(&evil, "inajob"),
            Err(PodError::Invalid {
                what: "container name",
                ..
            })
        ));
    }

    #[test]
    fn unsupported_fields_are_named() {
        let p = pod(json!({"spec": {
            "containers": [{"name": "web", "image": "i", "livenessProbe": {"exec": {"command": ["true"]}},
                            "volumeMounts": [{"name": "tok", "mountPath": "/var/run/secrets"}],
                            "resources": {"limits": {"memory": "64Mi", "cpu": "500m", "nvidia.com/gpu": "1"}}}],
            "volumes": [{"name": "tok", "projected": {"sources": []}}],
            "hostIPC": true}}));
        let p = plan(&p, "inajob").expect("plan");
        let w = p.warnings.join("\n");
        assert!(w.contains("spec.containers[0].livenessProbe"), "{w}");
        assert!(w.contains("spec.hostIPC"), "{w}");
        assert!(w.contains("volume \"tok\""), "{w}");
        assert!(w.contains("nvidia.com/gpu"), "{w}");
        assert_eq!(p.containers[0].memory_limit, Some(64 << 20));
        assert_eq!(p.containers[0].cpu_limit_milli, Some(500));
        assert!(p.containers[0].mounts.is_empty());
    }

    #[test]
    fn env_and_args_as_the_kubelet_builds_them() {
        let p = pod(json!({"spec": {"containers": [{"name": "web", "image": "i",
            "command": ["/web", "--name=$(POD_NAME)"], "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "GREETING", "value": "hi $(POD_NAME) $$(POD_NAME) $(NOPE)"},
                {"name": "PATH", "value": "/bin"}]}]}}));
        let plan = plan(&p, "inajob").expect("plan");
        let f = Fields {
            plan: &plan,
            service_account: "default",
            pod_ips: &["10.244.1.2".to_string()],
            host_ip: "192.168.43.111",
        };
        let c = &plan.containers[0];
        let env = environment(c, &["PATH=/usr/bin".into(), "A=1".into()], &f);
        assert_eq!(env[0], "PATH=/bin");
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"HOSTNAME=web-002".to_string()));
        assert!(env.contains(&"POD_IP=10.244.1.2".to_string()));
        assert!(env.contains(&"GREETING=hi web-002 $(POD_NAME) $(NOPE)".to_string()));
        let cfg = json!({"Entrypoint": ["/entry"], "Cmd": ["x"]});
        assert_eq!(process_args(c, &cfg, &env), vec!["/web", "--name=web-002"]);
        let mut only_args = c.clone();
        only_args.command = None;
        only_args.args = Some(vec!["a".into()]);
        assert_eq!(process_args(&only_args, &cfg, &env), vec!["/entry", "a"]);
        only_args.args = None;
        assert_eq!(process_args(&only_args, &cfg, &env), vec!["/entry", "x"]);
    }
}
