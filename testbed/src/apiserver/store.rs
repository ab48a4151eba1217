//! The objects, their resourceVersions and the event log watches read.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ApiError;
use super::meta;
use super::resources::Resource;
use super::select::{FieldSelector, LabelSelector};
use super::smp;

/// Events kept for watches that resume from a resourceVersion; older ones
/// are answered with 410 Gone, as etcd compaction makes the real server do.
const LOG_LEN: usize = 1000;

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub plural: &'static str,
    pub kind: &'static str,
    pub object: Value,
}

type Key = (&'static str, String, String);

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Event>,
    tx: broadcast::Sender<Event>,
    next_cluster_ip: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

fn name_of(o: &Value) -> String {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn has_spec(r: &Resource) -> bool {
    !matches!(r.plural, "endpoints" | "endpointslices")
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            rv: 1,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            tx,
            next_cluster_ip: 1,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let r = Resource::find("", "v1", "namespaces").unwrap_or_else(|| unreachable!());
            let _ = s.create(r, "", json!({"metadata": {"name": ns}}));
        }
        s
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Events after `rv` for `plural`; 410 when the log no longer has them.
    pub fn events_since(&self, plural: &str, rv: u64) -> Result<Vec<Event>, ApiError> {
        if let Some(first) = self.log.front()
            && rv + 1 < first.rv
            && rv < self.rv
        {
            return Err(ApiError::Gone(format!(
                "too old resource version: {rv} ({})",
                first.rv - 1
            )));
        }
        Ok(self
            .log
            .iter()
            .filter(|e| e.rv > rv && e.plural == plural)
            .cloned()
            .collect())
    }

    fn commit(&mut self, r: &Resource, key: Key, mut obj: Value, kind: &'static str) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, obj.clone());
        }
        let ev = Event {
            rv: self.rv,
            plural: r.plural,
            kind,
            object: obj.clone(),
        };
        self.log.push_back(ev.clone());
        while self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
        let _ = self.tx.send(ev);
        obj
    }

    pub fn get(&self, r: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(r.plural, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    pub fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((p, n, _), _)| *p == r.plural && ns.is_none_or(|ns| ns == n))
            .map(|(_, o)| o)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .cloned()
            .collect()
    }

    fn check_kind(r: &Resource, body: &Value) -> Result<(), ApiError> {
        let kind = body.get("kind").and_then(Value::as_str);
        let api = body.get("apiVersion").and_then(Value::as_str);
        if kind.is_some_and(|k| k != r.kind) || api.is_some_and(|a| a != r.api_version()) {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                api.unwrap_or(""),
                r.api_version()
            )));
        }
        Ok(())
    }

    fn validate(r: &Resource, name: &str, o: &Value) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        if !meta::valid_name(name) {
            causes.push((
                "metadata.name".to_string(),
                "FieldValueInvalid",
                format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        if r.plural == "pods" {
            let containers = o.pointer("/spec/containers").and_then(Value::as_array);
            if containers.is_none_or(|c| c.is_empty()) {
                causes.push((
                    "spec.containers".into(),
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
            for (i, c) in containers.into_iter().flatten().enumerate() {
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push((
                        format!("spec.containers[{i}].image"),
                        "FieldValueRequired",
                        "Required value".into(),
                    ));
                }
            }
        }
        if r.plural == "services"
            && o.pointer("/spec/ports")
                .and_then(Value::as_array)
                .is_none_or(|p| p.is_empty())
            && o.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None")
        {
            causes.push((
                "spec.ports".into(),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: r.kind.to_string(),
                name: name.to_string(),
                causes,
            })
        }
    }

    /// The defaults clients rely on.
    fn defaults(&mut self, r: &Resource, o: &mut Value) {
        match r.plural {
            "nodes" => {
                if let Some(cidr) = o.pointer("/spec/podCIDR").cloned()
                    && o.pointer("/spec/podCIDRs").is_none()
                {
                    o["spec"]["podCIDRs"] = json!([cidr]);
                }
            }
            "pods" => {
                let spec = &mut o["spec"];
                for (k, v) in [
                    ("restartPolicy", json!("Always")),
                    ("dnsPolicy", json!("ClusterFirst")),
                    ("schedulerName", json!("default-scheduler")),
                    ("terminationGracePeriodSeconds", json!(30)),
                    ("securityContext", json!({})),
                    ("enableServiceLinks", json!(true)),
                ] {
                    if spec.get(k).is_none() {
                        spec[k] = v;
                    }
                }
                if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                    for c in cs {
                        let latest = c.get("image").and_then(Value::as_str).is_some_and(|i| {
                            i.ends_with(":latest")
                                || !i.rsplit('/').next().unwrap_or("").contains(':')
                        });
                        for (k, v) in [
                            (
                                "imagePullPolicy",
                                json!(if latest { "Always" } else { "IfNotPresent" }),
                            ),
                            ("terminationMessagePath", json!("/dev/termination-log")),
                            ("terminationMessagePolicy", json!("File")),
                            ("resources", json!({})),
                        ] {
                            if c.get(k).is_none() {
                                c[k] = v;
                            }
                        }
                        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                            for p in ports {
                                if p.get("protocol").is_none() {
                                    p["protocol"] = json!("TCP");
                                }
                            }
                        }
                    }
                }
                if o.pointer("/status/phase").is_none() {
                    o["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                }
            }
            "services" => {
                let spec = &mut o["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec.get("clusterIP").is_none() {
                    // 10.254.0.0/16, the tutorial's service range.
                    let ip = std::net::Ipv4Addr::from(0x0afe_0000u32 + self.next_cluster_ip);
                    self.next_cluster_ip += 1;
                    spec["clusterIP"] = json!(ip.to_string());
                }
                if spec.get("clusterIPs").is_none() {
                    spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
                }
                for (k, v) in [
                    ("sessionAffinity", json!("None")),
                    ("ipFamilies", json!(["IPv4"])),
                    ("ipFamilyPolicy", json!("SingleStack")),
                    ("internalTrafficPolicy", json!("Cluster")),
                ] {
                    if spec.get(k).is_none() {
                        spec[k] = v;
                    }
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none() {
                            p["targetPort"] = p["port"].clone();
                        }
                    }
                }
                if o.get("status").is_none() {
                    o["status"] = json!({"loadBalancer": {}});
                }
            }
            "namespaces" => {
                o["spec"] = json!({"finalizers": ["kubernetes"]});
                o["status"] = json!({"phase": "Active"});
                let name = name_of(o);
                o["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            _ => {}
        }
    }

    pub fn create(&mut self, r: &Resource, ns: &str, mut body: Value) -> Result<Value, ApiError> {
        Self::check_kind(r, &body)?;
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "the body of the request was in an unknown format".into(),
            ));
        }
        if body.get("metadata").is_none() {
            body["metadata"] = json!({});
        }
        let mut name = name_of(&body);
        if name.is_empty()
            && let Some(g) = body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
        {
            name = format!("{g}{}", meta::name_suffix());
            body["metadata"]["name"] = json!(name);
        }
        if name.is_empty() {
            return Err(ApiError::Invalid {
                kind: r.kind.into(),
                name: String::new(),
                causes: vec![(
                    "metadata.name".into(),
                    "FieldValueRequired",
                    "Required value: name or generateName is required".into(),
                )],
            });
        }
        if r.namespaced {
            match body.pointer("/metadata/namespace").and_then(Value::as_str) {
                Some(n) if n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => body["metadata"]["namespace"] = json!(ns),
            }
            if !self
                .objects
                .contains_key(&("namespaces", String::new(), ns.to_string()))
            {
                return Err(ApiError::NotFoundNamespace(ns.to_string()));
            }
        }
        let key = (
            r.plural,
            if r.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        Self::validate(r, &name, &body)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                res: r.qualified(),
                name,
            });
        }
        body["apiVersion"] = json!(r.api_version());
        body["kind"] = json!(r.kind);
        let m = &mut body["metadata"];
        m["uid"] = json!(meta::uuid());
        m["creationTimestamp"] = json!(meta::now());
        if let Some(o) = m.as_object_mut() {
            o.remove("deletionTimestamp");
            o.remove("resourceVersion");
        }
        if has_spec(r) && r.plural != "namespaces" {
            body["metadata"]["generation"] = json!(1);
        }
        self.defaults(r, &mut body);
        Ok(self.commit(r, key, body, "ADDED"))
    }

    /// PUT: the whole object, or only its status with `status_only`.
    pub fn update(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        Self::check_kind(r, &body)?;
        if name_of(&body) != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&body)
            )));
        }
        let current = self.get(r, ns, name)?;
        if let Some(rv) = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::Conflict {
                res: r.qualified(),
                name: name.into(),
            });
        }
        self.replace(r, ns, name, current, body, status_only)
    }

    /// Installs `next` over `current`, keeping what the server owns.
    fn replace(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        current: Value,
        mut next: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if status_only {
            let mut o = current.clone();
            o["status"] = next.get("status").cloned().unwrap_or(json!({}));
            next = o;
        } else if r.status {
            // The main resource ignores status changes.
            next["status"] = current.get("status").cloned().unwrap_or(Value::Null);
            if next["status"].is_null()
                && let Some(m) = next.as_object_mut()
            {
                m.remove("status");
            }
        }
        Self::validate(r, name, &next)?;
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{k}")) {
                Some(v) => next["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        next["apiVersion"] = json!(r.api_version());
        next["kind"] = json!(r.kind);
        if !status_only && has_spec(r) && next.get("spec") != current.get("spec") {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            next["metadata"]["generation"] = json!(g + 1);
        }
        if r.plural == "nodes" {
            self.defaults(r, &mut next);
        }
        if next == current {
            return Ok(current);
        }
        let key = (
            r.plural,
            if r.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        // Removing the last finalizer of an object being deleted deletes it.
        let finalizers_gone = next
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if next.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers_gone
            && r.plural != "pods"
        {
            return Ok(self.commit(r, key, next, "DELETED"));
        }
        Ok(self.commit(r, key, next, "MODIFIED"))
    }

    pub fn patch(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(r, ns, name)?;
        let next = match kind {
            PatchType::Merge => {
                let mut doc = current.clone();
                json_patch::merge(&mut doc, &patch);
                doc
            }
            PatchType::Strategic => {
                if !patch.is_object() {
                    return Err(ApiError::BadRequest(
                        "strategic merge patch must be an object".into(),
                    ));
                }
                smp::apply(&current, &patch)
            }
            PatchType::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch)
                    .map_err(|e| ApiError::BadRequest(format!("json patch: {e}")))?;
                let mut doc = current.clone();
                json_patch::patch(&mut doc, &ops).map_err(|e| ApiError::Invalid {
                    kind: r.kind.into(),
                    name: name.into(),
                    causes: vec![(
                        String::new(),
                        "FieldValueInvalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )],
                })?;
                doc
            }
        };
        // A patch may pin a resourceVersion (optimistic concurrency).
        if let Some(rv) = next
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::Conflict {
                res: r.qualified(),
                name: name.into(),
            });
        }
        if name_of(&next) != name {
            return Err(ApiError::BadRequest(
                "the name cannot be changed by a patch".into(),
            ));
        }
        self.replace(r, ns, name, current, next, status_only)
    }

    /// DELETE. A pod bound to a node (or any object with finalizers) is
    /// marked with deletionTimestamp and stays until its grace period ends
    /// (pods) or a delete with grace 0 arrives.
    pub fn delete(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        precondition_uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self.get(r, ns, name)?;
        if let Some(uid) = precondition_uid
            && Some(uid) != current.pointer("/metadata/uid").and_then(Value::as_str)
        {
            return Err(ApiError::Conflict {
                res: r.qualified(),
                name: name.into(),
            });
        }
        let key = (
            r.plural,
            if r.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        let bound = r.plural == "pods" && current.pointer("/spec/nodeName").is_some();
        let finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let grace = grace.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        if (bound && grace > 0) || finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_some() && !(bound && grace == 0) {
                return Ok(current);
            }
            let mut o = current.clone();
            let until = SystemTime::now() + Duration::from_secs(grace.max(0) as u64);
            o["metadata"]["deletionTimestamp"] = json!(meta::rfc3339(until));
            o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if bound && grace > 0 || finalizers {
                return Ok(self.commit(r, key, o, "MODIFIED"));
            }
        }
        Ok(self.commit(r, key, current, "DELETED"))
    }

    /// Removes pods whose grace period has ended.
    pub fn expire(&mut self, pods: &Resource) {
        let now = meta::now();
        let due: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|((p, _, _), o)| {
                *p == "pods"
                    && o.pointer("/metadata/deletionTimestamp")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t <= now.as_str())
                    && o.pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|f| f.is_empty())
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (k, o) in due {
            self.commit(pods, k, o, "DELETED");
        }
    }

    /// POST pods/<name>/binding.
    pub fn bind(
        &mut self,
        pods: &Resource,
        ns: &str,
        name: &str,
        binding: &Value,
    ) -> Result<(), ApiError> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::Invalid {
                kind: "Binding".into(),
                name: name.into(),
                causes: vec![(
                    "target.name".into(),
                    "FieldValueRequired",
                    "Required value".into(),
                )],
            })?
            .to_string();
        let current = self.get(pods, ns, name)?;
        if let Some(n) = current.pointer("/spec/nodeName").and_then(Value::as_str) {
            return Err(ApiError::ConflictMsg {
                res: pods.qualified(),
                name: name.into(),
                msg: format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{n}\""
                ),
            });
        }
        let mut o = current.clone();
        o["spec"]["nodeName"] = json!(node);
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                          "lastTransitionTime": meta::now()});
        let mut conds: Vec<Value> = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conds.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
        conds.insert(0, cond);
        o["status"]["conditions"] = Value::Array(conds);
        let key = (pods.plural, ns.to_string(), name.to_string());
        self.commit(pods, key, o, "MODIFIED");
        Ok(())
    }

    /// Everything, for persistence.
    pub fn dump(&self) -> Value {
        let objs: Vec<Value> = self.objects.values().cloned().collect();
        json!({"resourceVersion": self.rv, "objects": objs})
    }

    pub fn restore(&mut self, saved: &Value) {
        self.rv = saved["resourceVersion"].as_u64().unwrap_or(self.rv);
        self.objects.clear();
        for o in saved["objects"].as_array().into_iter().flatten() {
            let api = o["apiVersion"].as_str().unwrap_or("");
            let (group, version) = api.split_once('/').unwrap_or(("", api));
            let Some(r) = super::resources::RESOURCES.iter().find(|r| {
                r.group == group && r.version == version && Some(r.kind) == o["kind"].as_str()
            }) else {
                continue;
            };
            let ns = o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.objects.insert((r.plural, ns, name_of(o)), o.clone());
        }
    }
}

/// A `<Kind>List` at resourceVersion `rv`.
pub fn list_value(r: &Resource, items: Vec<Value>, rv: u64) -> Value {
    json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
           "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}
