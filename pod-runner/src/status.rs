//! The Pod status the kubelet would report, as a strategic-merge patch of
//! `pods/<name>/status`. `conditions` merge by `type` on the server, but
//! `containerStatuses` is atomic: every patch carries all of them.
//! `podIPs` and `hostIPs` merge by `ip`: a patch naming a new IP would add
//! it to the old one (two IPv4s, which the API rejects), so when the pod
//! holds other IPs than ours the list is replaced instead.

use std::time::SystemTime;

use k8s_conditions::{Check, PodCondition, Time};
use serde_json::{Value, json};

/// A container as observed.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: SystemTime,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started: Option<SystemTime>,
        finished: SystemTime,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerObs {
    pub name: String,
    pub id: String,
    pub image: String,
    pub image_id: String,
    pub state: State,
    /// Running and its readiness probe (if any) passes.
    pub ready: bool,
    /// Running and its startup probe (if any) passed.
    pub started: bool,
    pub restart_count: u32,
    /// How the previous instance ended: `Terminated`, or nothing.
    pub last_state: Option<State>,
}

impl ContainerObs {
    /// A container as `create` reports it: running, ready, first instance.
    pub fn running(name: &str, id: &str, image: &str, image_id: &str, started: SystemTime) -> Self {
        ContainerObs {
            name: name.into(),
            id: id.into(),
            image: image.into(),
            image_id: image_id.into(),
            state: State::Running { started },
            ready: true,
            started: true,
            restart_count: 0,
            last_state: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodObs {
    pub sandbox_ready: bool,
    pub pod_ips: Vec<String>,
    pub host_ip: Option<String>,
    pub start_time: SystemTime,
    pub containers: Vec<ContainerObs>,
    /// The pod is being torn down for good (`phase` goes terminal).
    pub terminal: bool,
    pub qos: &'static str,
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: String,
}

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn state_json(st: &State, id: &str) -> Value {
    match st {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        }
        State::Running { started } => json!({"running": {"startedAt": ts(*started)}}),
        State::Terminated {
            exit_code,
            reason,
            started,
            finished,
        } => {
            let mut t =
                json!({"exitCode": exit_code, "reason": reason, "finishedAt": ts(*finished)});
            if let Some(s) = started {
                t["startedAt"] = json!(ts(*s));
            }
            if !id.is_empty() {
                t["containerID"] = json!(format!("containerd://{id}"));
            }
            json!({"terminated": t})
        }
    }
}

fn container_status(c: &ContainerObs) -> Value {
    let last = match &c.last_state {
        // The previous instance's ID is not kept apart: the terminated
        // state says only how it ended.
        Some(st) => state_json(st, ""),
        None => json!({}),
    };
    let mut s = json!({
        "name": c.name, "image": c.image, "imageID": c.image_id,
        "ready": c.ready, "started": c.started, "restartCount": c.restart_count,
        "state": state_json(&c.state, &c.id), "lastState": last,
    });
    if !c.id.is_empty() {
        s["containerID"] = json!(format!("containerd://{}", c.id));
    }
    s
}

/// The kubelet's phase (getPhase, without init containers).
fn phase(obs: &PodObs) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &obs.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting to restart counts as stopped: it ran before.
            State::Waiting { .. } if c.last_state.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if obs.containers.is_empty() {
        return "Pending";
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if obs.terminal || obs.restart_policy != "Always" {
        if stopped == succeeded {
            return "Succeeded";
        }
        if obs.terminal || obs.restart_policy == "Never" {
            return "Failed";
        }
    }
    // Always, or OnFailure with a failed container: it restarts.
    "Running"
}

/// A condition as the kubelet reports it: a reason only when False, no
/// probe time (the kubelet never sets one on a Pod condition), the
/// transition time kept by k8s-conditions while the status holds.
fn condition(
    kind: &str,
    ok: bool,
    reason: Option<(&str, &str)>,
    old: &[PodCondition],
    now: &Time,
) -> Value {
    let (reason, message) = match reason.filter(|_| !ok) {
        Some((r, m)) => (
            Some(r.to_string()),
            Some(m.to_string()).filter(|m| !m.is_empty()),
        ),
        None => (None, None),
    };
    let c = PodCondition {
        type_: kind.into(),
        status: k8s_conditions::status_of(ok).into(),
        reason,
        message,
        ..PodCondition::default()
    };
    let mut v =
        serde_json::to_value(k8s_conditions::stamp(old, c, now, Check::Unset)).unwrap_or_default();
    if ok {
        // Conditions merge by type: a reason the server holds from when
        // it was False goes only when the patch says so.
        v["reason"] = Value::Null;
        v["message"] = Value::Null;
    }
    v
}

/// `ips` as a `podIPs`/`hostIPs` patch over the pod's `old` list: the
/// list itself when the server would end up with just these, else with
/// the `$patch: replace` directive. (The directive only when needed: the
/// API server stand-in of the tests knows no merge key for these lists.)
fn ip_list(ips: &[String], old: &Value) -> Value {
    let new: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let stale = old
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["ip"].as_str())
        .any(|o| !ips.iter().any(|ip| ip == o));
    if stale {
        let mut l = vec![json!({"$patch": "replace"})];
        l.extend(new);
        Value::Array(l)
    } else {
        Value::Array(new)
    }
}

/// The patch. `old` is the pod's current `status`.
pub fn patch(obs: &PodObs, old: &Value, now: SystemTime) -> Value {
    let old_conditions: &[PodCondition] = &k8s_conditions::parse(&old["conditions"]);
    let now_s = k8s_conditions::time(now);
    let unready: Vec<&str> = obs
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let ready = !obs.containers.is_empty() && unready.is_empty() && !obs.terminal;
    let why = format!("containers with unready status: [{}]", unready.join(" "));
    let phase = phase(obs);
    // A finished pod is not ready, whatever its containers did last.
    let not_ready = if matches!(phase, "Succeeded" | "Failed") {
        ("PodCompleted", "")
    } else {
        ("ContainersNotReady", why.as_str())
    };
    let ready = ready && !matches!(phase, "Succeeded" | "Failed");
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            obs.sandbox_ready,
            None,
            old_conditions,
            &now_s,
        ),
        condition("Initialized", true, None, old_conditions, &now_s),
        condition("Ready", ready, Some(not_ready), old_conditions, &now_s),
        condition(
            "ContainersReady",
            ready,
            Some(not_ready),
            old_conditions,
            &now_s,
        ),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "startTime": ts(obs.start_time),
        "containerStatuses": obs.containers.iter().map(container_status).collect::<Vec<_>>(),
        "qosClass": obs.qos,
    });
    if let Some(ip) = &obs.host_ip {
        status["hostIP"] = json!(ip);
        status["hostIPs"] = ip_list(std::slice::from_ref(ip), &old["hostIPs"]);
    }
    if !obs.pod_ips.is_empty() {
        status["podIP"] = json!(obs.pod_ips[0]);
        status["podIPs"] = ip_list(&obs.pod_ips, &old["podIPs"]);
    }
    json!({ "status": status })
}

/// The pod's current status as JSON, what a patch is made against.
pub fn current(pod: &k8s_openapi::api::core::v1::Pod) -> Value {
    pod.status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// [`patch`] over `pod`'s status, with the pod's own `reason` and message
/// (FailedCreatePodSandBox, say); without one, a reason the pod holds
/// from an earlier failure is cleared.
pub fn patch_pod(
    obs: &PodObs,
    pod: &k8s_openapi::api::core::v1::Pod,
    reason: Option<(&str, &str)>,
    now: SystemTime,
) -> Value {
    let old = current(pod);
    let mut p = patch(obs, &old, now);
    match reason {
        Some((r, m)) => {
            p["status"]["reason"] = json!(r);
            p["status"]["message"] = json!(m);
        }
        None if old.get("reason").is_some() || old.get("message").is_some() => {
            p["status"]["reason"] = Value::Null;
            p["status"]["message"] = Value::Null;
        }
        None => {}
    }
    p
}

/// The kubelet's QoS class from the containers' requests and limits.
pub fn qos_class(pod: &k8s_openapi::api::core::v1::Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[]);
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        any |= limits.is_some_and(|l| !l.is_empty()) || requests.is_some_and(|q| !q.is_empty());
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(res));
            let q = requests.and_then(|q| q.get(res)).or(l);
            if l.is_none() || q != l {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn obs(state: State) -> PodObs {
        PodObs {
            sandbox_ready: true,
            pod_ips: vec!["10.244.1.2".into()],
            host_ip: Some("192.168.43.111".into()),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            containers: vec![ContainerObs {
                ready: matches!(state, State::Running { .. }),
                started: matches!(state, State::Running { .. }),
                name: "web".into(),
                id: "abc".into(),
                image: "localhost/web:latest".into(),
                image_id: "localhost/web@sha256:00".into(),
                state,
                restart_count: 0,
                last_state: None,
            }],
            terminal: false,
            qos: "BestEffort",
            restart_policy: "Always".into(),
        }
    }

    #[test]
    fn running_pod() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let p = patch(&obs(State::Running { started: now }), &Value::Null, now);
        let s = &p["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.1.2");
        assert_eq!(s["hostIPs"][0]["ip"], "192.168.43.111");
        assert_eq!(s["containerStatuses"][0]["containerID"], "containerd://abc");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert!(s["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
        let kinds: Vec<&str> = s["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| c["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady"
            ]
        );
        assert!(
            s["conditions"]
                .as_array()
                .expect("c")
                .iter()
                .all(|c| c["status"] == "True")
        );
    }

    #[test]
    fn transition_times_hold_while_the_status_does() {
        let old = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Initialized", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let p = patch(&obs(State::Running { started: now }), &old, now);
        let c = |t: &str| {
            p["status"]["conditions"]
                .as_array()
                .expect("c")
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .expect("cond")
        };
        assert_eq!(c("Ready")["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(c("Initialized")["lastTransitionTime"], ts(now));
    }

    #[test]
    fn ip_lists_replace_other_ips_the_pod_holds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let o = obs(State::Running { started: now });
        // First report, or the same IPs again: plain lists.
        for old in [Value::Null, json!({"podIPs": [{"ip": "10.244.1.2"}]})] {
            let p = patch(&o, &old, now);
            assert_eq!(p["status"]["podIPs"], json!([{"ip": "10.244.1.2"}]));
            assert_eq!(p["status"]["hostIPs"], json!([{"ip": "192.168.43.111"}]));
        }
        // The pod came back with another IP: the old one must go.
        let old = json!({"podIPs": [{"ip": "10.244.1.7"}], "hostIPs": [{"ip": "192.168.43.111"}]});
        let p = patch(&o, &old, now);
        assert_eq!(
            p["status"]["podIPs"],
            json!([{"$patch": "replace"}, {"ip": "10.244.1.2"}])
        );
        assert_eq!(p["status"]["podIP"], "10.244.1.2");
        assert_eq!(p["status"]["hostIPs"], json!([{"ip": "192.168.43.111"}]));
    }

    #[test]
    fn terminated_pod_goes_terminal() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let mut o = obs(State::Terminated {
            exit_code: 137,
            reason: "Error".into(),
            started: Some(now),
            finished: now,
        });
        o.terminal = true;
        o.sandbox_ready = false;
        let p = patch(&o, &Value::Null, now);
        assert_eq!(p["status"]["phase"], "Failed");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            137
        );
        assert_eq!(p["status"]["conditions"][2]["status"], "False");
        // The kubelet's reason for a finished pod.
        assert_eq!(p["status"]["conditions"][2]["reason"], "PodCompleted");
    }

    #[test]
    fn phase_follows_the_restart_policy() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let exited = |code| State::Terminated {
            exit_code: code,
            reason: "Error".into(),
            started: Some(now),
            finished: now,
        };
        let phase_of = |state: State, last: bool, policy: &str| {
            let mut o = obs(state);
            o.restart_policy = policy.into();
            if last {
                o.containers[0].last_state = Some(exited(1));
                o.containers[0].restart_count = 1;
            }
            let p = patch(&o, &Value::Null, now);
            p["status"]["phase"].as_str().unwrap_or("").to_string()
        };
        let backoff = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        let creating = State::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        };
        // A crash loop is Running: it ran, and it restarts.
        assert_eq!(phase_of(backoff, true, "Always"), "Running");
        assert_eq!(phase_of(creating, false, "Always"), "Pending");
        assert_eq!(phase_of(exited(0), false, "Never"), "Succeeded");
        assert_eq!(phase_of(exited(1), false, "Never"), "Failed");
        assert_eq!(phase_of(exited(0), false, "OnFailure"), "Succeeded");
        // OnFailure restarts a failed container: not finished.
        assert_eq!(phase_of(exited(1), false, "OnFailure"), "Running");
        assert_eq!(phase_of(exited(1), false, "Always"), "Running");
        // A Ready condition that goes True clears its old reason.
        let p = patch(&obs(State::Running { started: now }), &Value::Null, now);
        let ready = &p["status"]["conditions"][2];
        assert_eq!(ready["status"], "True");
        assert!(ready.get("reason").is_some_and(Value::is_null), "{ready}");
    }
}
