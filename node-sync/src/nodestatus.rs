//! The Node as the kubelet reports it: registration, the status (a pure
//! function of the machine's facts, unit-tested), and the heartbeat Lease
//! in `kube-node-lease`.

use std::time::SystemTime;

use k8s_conditions::{Check, NodeCondition, Time};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch};
use serde_json::{Value, json};

use crate::config::Config;
use crate::machine::Machine;

/// What the status is computed from.
pub struct Inputs<'a> {
    pub cfg: &'a Config,
    pub hostname: &'a str,
    pub machine: &'a Machine,
    /// containerd's version, or why it cannot be reached.
    pub runtime: Result<String, String>,
    /// Whether a CNI network config is in place (or why not).
    pub cni: Result<(), String>,
    /// The routes to other nodes' pods are programmed.
    pub routes_ready: bool,
    /// Why the Nodes cannot be read (a 403), while they cannot.
    pub routes_forbidden: Option<String>,
}

/// A condition as the kubelet reports it, its clocks kept by
/// k8s-conditions (the transition time holds while the status does).
fn condition(
    kind: &str,
    ok_status: bool,
    reason: &str,
    msg: &str,
    old: &[NodeCondition],
    now: &Time,
) -> Value {
    let c = NodeCondition {
        type_: kind.into(),
        status: k8s_conditions::status_of(ok_status).into(),
        reason: Some(reason.into()),
        message: Some(msg.into()),
        ..NodeCondition::default()
    };
    serde_json::to_value(k8s_conditions::stamp(old, c, now, Check::Now)).unwrap_or_default()
}

/// The Node object to create when it is missing.
pub fn node_object(cfg: &Config, hostname: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": hostname,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": crate::machine::goarch(std::env::consts::ARCH),
    });
    for (k, v) in &cfg.labels {
        labels[k] = json!(v);
    }
    let mut node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels}, "spec": {}});
    if let Some(cidr) = cfg.pod_cidr {
        node["spec"]["podCIDR"] = json!(cidr.to_string());
        node["spec"]["podCIDRs"] = json!([cidr.to_string()]);
    }
    node
}

/// The status patch. `old` is the Node's current `status.conditions`.
pub fn status(i: &Inputs<'_>, old: &Value, now: SystemTime) -> Value {
    let old: &[NodeCondition] = &k8s_conditions::parse(old);
    let now = k8s_conditions::time(now);
    let m = i.machine;
    let not_ready = match (&i.runtime, &i.cni) {
        (Err(e), _) => Some(format!("container runtime is down: {e}")),
        (_, Err(e)) => Some(format!("container runtime network not ready: {e}")),
        _ => None,
    };
    let ready = match &not_ready {
        None => condition(
            "Ready",
            true,
            "KubeletReady",
            "node-sync is posting ready status",
            old,
            &now,
        ),
        Some(msg) => condition("Ready", false, "KubeletNotReady", msg, old, &now),
    };
    let pressure = |kind: &str, on: bool, yes: &str, no: &str, msg_yes: &str, msg_no: &str| {
        if on {
            condition(kind, true, yes, msg_yes, old, &now)
        } else {
            condition(kind, false, no, msg_no, old, &now)
        }
    };
    // Forbidden Nodes are named here: it is where an operator looks first
    // when the node's pods cannot reach other nodes. Routes made earlier
    // stay, so the status follows what is programmed.
    let mut network = match (i.routes_ready, &i.routes_forbidden) {
        (true, None) => condition(
            "NetworkUnavailable",
            false,
            "RouteCreated",
            "node-sync created routes",
            old,
            &now,
        ),
        (false, None) => condition(
            "NetworkUnavailable",
            true,
            "NoRouteCreated",
            "node-sync has not created routes yet",
            old,
            &now,
        ),
        (true, Some(e)) => condition(
            "NetworkUnavailable",
            false,
            "NodesForbidden",
            &format!("node-sync created routes but cannot follow the Nodes: {e}"),
            old,
            &now,
        ),
        (false, Some(e)) => condition("NetworkUnavailable", true, "NodesForbidden", e, old, &now),
    };
    // The network condition is the route controller's, which does not beat.
    if let Some(o) = network.as_object_mut() {
        o.remove("lastHeartbeatTime");
    }
    let conditions = vec![
        pressure(
            "MemoryPressure",
            m.memory_pressure(),
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "node has memory pressure",
            "node has sufficient memory available",
        ),
        pressure(
            "DiskPressure",
            m.disk_pressure(),
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "node has disk pressure",
            "node has no disk pressure",
        ),
        pressure(
            "PIDPressure",
            m.pid_pressure(),
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "node has PID pressure",
            "node has sufficient PID available",
        ),
        ready,
        network,
    ];
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_bytes / 1024),
        "pods": "110",
    });
    json!({"status": {
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": i.cfg.node_ip.to_string()},
            {"type": "Hostname", "address": i.hostname},
        ],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.machine_id,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel_version,
            "osImage": m.os_image,
            "containerRuntimeVersion": i.runtime.as_ref().map(|v| format!("containerd://{v}")).unwrap_or_default(),
            "kubeletVersion": format!("v{}-node-sync", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": m.operating_system,
            "architecture": m.architecture,
        },
    }})
}

/// The status without its clocks: two reports that differ only in
/// heartbeat times need not both be sent.
pub fn without_times(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(cs) = s
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// API calls for this node, with its own identity (`system:node:<name>`).
#[derive(Clone)]
pub struct Reporter {
    nodes: Api<Node>,
    leases: Api<Lease>,
    name: String,
}

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_SECONDS: i32 = 40;

impl Reporter {
    pub fn new(client: Client, name: &str) -> Self {
        Reporter {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            name: name.to_string(),
        }
    }

    /// The Node, created when missing (from `object`).
    pub async fn ensure_node(&self, object: &Value) -> Result<Node, kube::Error> {
        if let Some(n) = self.nodes.get_opt(&self.name).await? {
            return Ok(n);
        }
        let node: Node = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
        match self.nodes.create(&crate::ident::post(), &node).await {
            Ok(n) => Ok(n),
            // Another start of ours won the race.
            Err(kube::Error::Api(s)) if s.code == 409 => self.nodes.get(&self.name).await,
            Err(e) => Err(e),
        }
    }

    pub async fn patch_status(&self, patch: &Value) -> Result<Node, kube::Error> {
        self.nodes
            .patch_status(&self.name, &crate::ident::patch(), &Patch::Strategic(patch))
            .await
    }

    /// Renews (or makes) the node's Lease, owned by its Node as the
    /// kubelet's is.
    pub async fn renew_lease(&self, node_uid: Option<&str>) -> Result<(), kube::Error> {
        let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let spec = json!({"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now});
        match self.leases.get_opt(&self.name).await? {
            Some(_) => {
                self.leases
                    .patch(
                        &self.name,
                        &crate::ident::patch(),
                        &Patch::Merge(json!({"spec": spec})),
                    )
                    .await?;
            }
            None => {
                let mut lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE}, "spec": spec});
                if let Some(uid) = node_uid {
                    lease["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
                        "name": self.name, "uid": uid}]);
                }
                let lease: Lease =
                    serde_json::from_value(lease).map_err(kube::Error::SerdeError)?;
                self.leases.create(&crate::ident::post(), &lease).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn cfg() -> Config {
        let f = FileConfig {
            node_name: Some("inajob".into()),
            node_ip: Some("192.168.43.111".parse().expect("ip")),
            pod_cidr: Some("10.244.1.0/24".parse().expect("cidr")),
            ..FileConfig::default()
        };
        Config::merge(f, FileConfig::default(), "h").expect("cfg")
    }

    fn machine() -> Machine {
        Machine {
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            cpus: 2,
            memory_bytes: 2 << 30,
            memory_available_bytes: 1 << 30,
            disk_free_fraction: 0.5,
            pids_in_use: 100,
            pid_max: 32768,
        }
    }

    fn cond<'a>(s: &'a Value, t: &str) -> &'a Value {
        s["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t))
            .expect("condition")
    }

    #[test]
    fn ready_with_real_facts() {
        let (c, m) = (cfg(), machine());
        let i = Inputs {
            cfg: &c,
            hostname: "inajob",
            machine: &m,
            runtime: Ok("1.6.20".into()),
            cni: Ok(()),
            routes_ready: true,
            routes_forbidden: None,
        };
        let s = status(&i, &Value::Null, SystemTime::UNIX_EPOCH);
        assert_eq!(cond(&s, "Ready")["status"], "True");
        assert_eq!(cond(&s, "MemoryPressure")["status"], "False");
        assert_eq!(cond(&s, "NetworkUnavailable")["status"], "False");
        assert_eq!(
            s["status"]["nodeInfo"]["containerRuntimeVersion"],
            "containerd://1.6.20"
        );
        assert_eq!(s["status"]["addresses"][0]["address"], "192.168.43.111");
        assert_eq!(s["status"]["capacity"]["memory"], "2097152Ki");
        let n = node_object(&c, "inajob");
        assert_eq!(n["spec"]["podCIDR"], "10.244.1.0/24");
    }

    #[test]
    fn not_ready_says_why_and_transitions_are_kept() {
        let (c, m) = (cfg(), machine());
        let i = Inputs {
            cfg: &c,
            hostname: "inajob",
            machine: &m,
            runtime: Err("connection refused".into()),
            cni: Ok(()),
            routes_ready: true,
            routes_forbidden: None,
        };
        let old = json!([{"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"},
                         {"type": "MemoryPressure", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let s = status(&i, &old, SystemTime::UNIX_EPOCH);
        let r = cond(&s, "Ready");
        assert_eq!(r["status"], "False");
        assert!(
            r["message"]
                .as_str()
                .unwrap_or("")
                .contains("connection refused")
        );
        assert_eq!(r["lastTransitionTime"], "2020-01-01T00:00:00Z");
        // MemoryPressure went True -> False: a new transition time.
        assert_eq!(
            cond(&s, "MemoryPressure")["lastTransitionTime"],
            "1970-01-01T00:00:00Z"
        );
        let no_cni = Inputs {
            runtime: Ok("1.6".into()),
            cni: Err("no network config".into()),
            ..i
        };
        let s = status(&no_cni, &Value::Null, SystemTime::UNIX_EPOCH);
        assert!(
            cond(&s, "Ready")["message"]
                .as_str()
                .unwrap_or("")
                .contains("no network config")
        );
        // Only clocks differ: no need to send again.
        let later = status(
            &no_cni,
            &Value::Null,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5),
        );
        assert_eq!(without_times(&s), without_times(&later));
    }

    #[test]
    fn forbidden_nodes_are_the_network_conditions_reason() {
        let (c, m) = (cfg(), machine());
        let e = "list nodes at the cluster scope is forbidden for system:node:inajob; ...";
        let never = Inputs {
            cfg: &c,
            hostname: "inajob",
            machine: &m,
            runtime: Ok("1.6.20".into()),
            cni: Ok(()),
            routes_ready: false,
            routes_forbidden: Some(e.into()),
        };
        let s = status(&never, &Value::Null, SystemTime::UNIX_EPOCH);
        let n = cond(&s, "NetworkUnavailable");
        assert_eq!(
            (&n["status"], &n["reason"], &n["message"]),
            (&json!("True"), &json!("NodesForbidden"), &json!(e))
        );
        // Nothing else is held back by it.
        assert_eq!(cond(&s, "Ready")["status"], "True");
        // Routes made before the refusal stay: the network is there.
        let earlier = Inputs {
            routes_ready: true,
            ..never
        };
        let s = status(&earlier, &Value::Null, SystemTime::UNIX_EPOCH);
        let n = cond(&s, "NetworkUnavailable");
        assert_eq!(
            (&n["status"], &n["reason"]),
            (&json!("False"), &json!("NodesForbidden"))
        );
        assert_eq!(
            n["message"],
            format!("node-sync created routes but cannot follow the Nodes: {e}")
        );
        // Permitted again: the usual reasons.
        let fine = Inputs {
            routes_forbidden: None,
            ..earlier
        };
        let s = status(&fine, &Value::Null, SystemTime::UNIX_EPOCH);
        assert_eq!(cond(&s, "NetworkUnavailable")["reason"], "RouteCreated");
    }
}
