//! The objects, their resourceVersions and the event log watches read.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ApiError;
use super::admission;
use super::auth;
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
        // The ServiceAccount Pods in `default` need, as the real control
        // plane's bootstrap makes it.
        if let Some(r) = Resource::find("", "v1", "serviceaccounts") {
            let _ = s.create(r, "default", json!({"metadata": {"name": "default"}}));
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

    /// Every object of `r`.
    pub fn all(&self, r: &Resource) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((p, _, _), _)| *p == r.plural)
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn taken_cluster_ip(&self, ip: &str) -> bool {
        self.objects.iter().any(|((p, _, _), o)| {
            *p == "services" && o.pointer("/spec/clusterIP") == Some(&json!(ip))
        })
    }

    /// The `kubernetes` Service the real server keeps in `default`,
    /// pointing at its own port.
    pub fn kubernetes_service(&mut self, port: u16) {
        let Some(r) = Resource::find("", "v1", "services") else {
            return;
        };
        let _ = self.create(
            r,
            "default",
            json!({"metadata": {"name": "kubernetes",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
              "spec": {"clusterIP": "10.254.0.1", "ports": [{"name": "https", "port": 443,
                "protocol": "TCP", "targetPort": port}]}}),
        );
    }

    fn check_kind(r: &Resource, body: &Value) -> Result<(), ApiError> {
        let kind = body.get("kind").and_then(Value::as_str);
        let api = body.get("apiVersion").and_then(Value::as_str);
        if let (Some(k), Some(a)) = (kind, api)
            && k != r.kind
            && a == r.api_version()
        {
            // The real decoder finds the kind and fails to convert it.
            let version = a.rsplit('/').next().unwrap_or(a);
            let internal = r
                .group
                .split('.')
                .next()
                .filter(|g| !g.is_empty())
                .unwrap_or("core");
            return Err(ApiError::BadRequest(format!(
                "{k} in version \"{version}\" cannot be handled as a {}: converting ({version}.{k}) to ({internal}.{}): unknown conversion",
                r.kind, r.kind
            )));
        }
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
                format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
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
        if r.plural == "pods" {
            // One address of each family at most: a pod's IPs merge by
            // address, so a patch naming only a new one is refused here.
            for field in ["podIPs", "hostIPs"] {
                let ips: Vec<&str> = o["status"][field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["ip"].as_str())
                    .collect();
                let v4 = ips.iter().filter(|ip| !ip.contains(':')).count();
                if v4 > 1 || ips.len() - v4 > 1 {
                    let go: Vec<Value> = ips.iter().map(|ip| json!({"IP": ip})).collect();
                    causes.push((
                        format!("status.{field}"),
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {}: may specify no more than one IP for each IP family",
                            Value::Array(go)
                        ),
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
        if r.plural == "endpoints" {
            for (i, sub) in o["subsets"].as_array().into_iter().flatten().enumerate() {
                for key in ["addresses", "notReadyAddresses"] {
                    for (j, a) in sub[key].as_array().into_iter().flatten().enumerate() {
                        let ip = a["ip"].as_str().unwrap_or("");
                        if ip.parse::<std::net::IpAddr>().is_err() {
                            let f = format!("subsets[{i}].{key}[{j}].ip");
                            causes.push((f.clone(), "FieldValueInvalid", format!(
                                "Invalid value: {ip:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")));
                            causes.push((
                                f,
                                "FieldValueInvalid",
                                format!("Invalid value: {ip:?}: must be a valid IP address"),
                            ));
                        }
                    }
                }
            }
        }
        if r.plural == "events" {
            // An Event without an eventTime (core/v1's, as the kubelet
            // writes it) is about an object in its own namespace, or, for
            // a cluster-scoped one, in "default".
            let ns = o.pointer("/metadata/namespace").and_then(Value::as_str);
            let involved = o
                .pointer("/involvedObject/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let legacy = o.get("eventTime").is_none_or(Value::is_null);
            let agree = if involved.is_empty() {
                ns.is_none_or(|n| n.is_empty() || n == "default")
            } else {
                ns == Some(involved)
            };
            if legacy && !agree {
                causes.push((
                    "involvedObject.namespace".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: {involved:?}: does not match event.namespace"),
                ));
            }
        }
        if r.plural == "endpointslices" && o.get("addressType").is_none_or(Value::is_null) {
            causes.push((
                "addressType".into(),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: r.qualified_kind(),
                name: name.to_string(),
                causes,
            })
        }
    }

    /// The defaults and admission a new object meets; `Err` when an
    /// admission plugin refuses it.
    fn defaults(&mut self, r: &Resource, ns: &str, o: &mut Value) -> Result<(), ApiError> {
        match r.plural {
            "nodes" => {
                admission::node_create(o);
                admission::node(o);
            }
            "pods" => {
                // ServiceAccount admission: the account must exist.
                let sa = o
                    .pointer("/spec/serviceAccountName")
                    .or_else(|| o.pointer("/spec/serviceAccount"))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    .to_string();
                let key = ("serviceaccounts", ns.to_string(), sa.clone());
                if !self.objects.contains_key(&key) {
                    return Err(auth::refused(
                        r,
                        &name_of(o),
                        &format!(
                            "error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
                        ),
                    ));
                }
                admission::pod_spec(&mut o["spec"]);
                admission::pod_create(o);
            }
            "replicasets" => {
                if let Some(spec) = o.pointer_mut("/spec/template/spec") {
                    admission::pod_spec(spec);
                }
                if o.pointer("/spec/template/metadata").is_some() {
                    o["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
                }
                o["status"] = json!({"replicas": 0});
            }
            "services" => {
                let svc_name = name_of(o);
                let spec = &mut o["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                match spec.get("clusterIP").and_then(Value::as_str) {
                    Some(ip) if ip != "None" && !ip.is_empty() => {
                        if self.taken_cluster_ip(ip) {
                            return Err(ApiError::Invalid {
                                kind: r.qualified_kind(),
                                name: svc_name,
                                causes: vec![(
                                    "spec.clusterIPs".into(),
                                    "FieldValueInvalid",
                                    format!(
                                        "Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"
                                    ),
                                )],
                            });
                        }
                    }
                    Some(_) => {}
                    None => {
                        // 10.254.0.0/16, the tutorial's service range;
                        // the real server picks at random.
                        let ip = loop {
                            let ip =
                                std::net::Ipv4Addr::from(0x0afe_0000u32 + self.next_cluster_ip);
                            self.next_cluster_ip += 1;
                            if !self.taken_cluster_ip(&ip.to_string()) {
                                break ip;
                            }
                        };
                        o["spec"]["clusterIP"] = json!(ip.to_string());
                    }
                }
                let spec = &mut o["spec"];
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
            "events" => admission::event(o),
            "namespaces" => {
                o["spec"] = json!({"finalizers": ["kubernetes"]});
                o["status"] = json!({"phase": "Active"});
                let name = name_of(o);
                o["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            _ => {}
        }
        Ok(())
    }

    pub fn create(&mut self, r: &Resource, ns: &str, mut body: Value) -> Result<Value, ApiError> {
        if !body.is_object() {
            // What Go's decoder says of JSON that is not an object.
            let ty = match &body {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "bool",
                _ => "array",
            };
            let hex: String = body
                .to_string()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            return Err(ApiError::BadRequest(format!(
                "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: json: cannot unmarshal {ty} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }} ({hex})",
                r.kind
            )));
        }
        Self::check_kind(r, &body)?;
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
        if r.generation {
            body["metadata"]["generation"] = json!(1);
        }
        self.defaults(r, ns, &mut body)?;
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
        if !status_only && r.generation && next.get("spec") != current.get("spec") {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            next["metadata"]["generation"] = json!(g + 1);
        }
        match r.plural {
            "nodes" => admission::node(&mut next),
            "pods" => admission::pod_status(&mut next),
            "events" => admission::event(&mut next),
            _ => {}
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

    /// The object a patch would make, not stored.
    pub fn patched(
        &self,
        r: &Resource,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch: Value,
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
                json_patch::patch(&mut doc, &ops).map_err(|_| ApiError::PatchFailed)?;
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
        Ok(next)
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
        let next = self.patched(r, ns, name, kind, patch)?;
        self.replace(r, ns, name, current, next, status_only)
    }

    /// DELETE, as the real registry does it: a Pod bound to a node is
    /// marked (`deletionTimestamp`, `deletionGracePeriodSeconds`, a new
    /// generation) and stays until a delete with grace 0 (the kubelet's
    /// last word; nothing here expires it); an unscheduled Pod goes at
    /// once, with the marks on the object returned; an object with
    /// finalizers is marked. Pods, Services, Namespaces and
    /// ServiceAccounts answer with the object, the rest with a Success
    /// Status.
    pub fn delete(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        precondition_uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self.get(r, ns, name)?;
        let uid = current
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(want) = precondition_uid
            && want != uid
        {
            return Err(ApiError::ConflictMsg {
                res: r.kind.to_string(),
                name: name.into(),
                msg: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated",
                    r.kind
                ),
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
        let finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let returns_object = matches!(
            r.plural,
            "pods" | "services" | "namespaces" | "serviceaccounts"
        );
        let answer = |o: Value| {
            if returns_object {
                o
            } else {
                let mut d = json!({"name": name, "kind": r.plural, "uid": uid});
                if !r.group.is_empty() {
                    d["group"] = json!(r.group);
                }
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Success", "details": d})
            }
        };
        let mark = |o: &mut Value, grace: i64| {
            let until = SystemTime::now() + Duration::from_secs(grace.max(0) as u64);
            o["metadata"]["deletionTimestamp"] = json!(meta::rfc3339(until));
            o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        };
        if r.plural == "pods" {
            let bound = current.pointer("/spec/nodeName").is_some();
            let grace = if bound {
                grace.unwrap_or_else(|| {
                    current
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                })
            } else {
                0
            };
            let mut o = current.clone();
            match current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
            {
                Some(now) if grace >= now => return Ok(answer(current)),
                Some(_) => mark(&mut o, grace),
                None => {
                    mark(&mut o, grace);
                    let g = o["metadata"]["generation"].as_i64().unwrap_or(0);
                    o["metadata"]["generation"] = json!(g + 1);
                }
            }
            // A graceful delete is an update of the marks first; with
            // grace 0 and no finalizers the object then goes, so a watch
            // sees both.
            let o = self.commit(r, key.clone(), o, "MODIFIED");
            if grace == 0 && !finalizers {
                return Ok(answer(self.commit(r, key, o, "DELETED")));
            }
            return Ok(answer(o));
        }
        if finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(answer(current));
            }
            let mut o = current;
            mark(&mut o, 0);
            return Ok(answer(self.commit(r, key, o, "MODIFIED")));
        }
        Ok(answer(self.commit(r, key, current, "DELETED")))
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
                res: "pods/binding".into(),
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
pub fn list_value(r: &Resource, mut items: Vec<Value>, rv: u64) -> Value {
    // A typed list's items carry no apiVersion and kind.
    for o in &mut items {
        if let Some(m) = o.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
    }
    json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
           "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}
