//! What the API lets node-sync read. The node's own identity may read its
//! own Node and every Service, but not list every Node nor read Endpoints
//! and EndpointSlices: those take `deploy/node-sync-rbac.yaml`. A 403 is
//! reported as one exact message (what is refused, to whom, what for, the
//! fix), logged once per transition (the watchers retry it for ever), kept
//! in a gauge, and handed to the Node's NetworkUnavailable condition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use kube::api::{Api, PostParams};
use kube::core::Status;
use kube::runtime::watcher::{self, Event};
use serde_json::json;

use crate::metrics::Metrics;

/// The file that grants what node-sync needs beyond the Node authorizer.
pub const RBAC_FILE: &str = "deploy/node-sync-rbac.yaml";

/// The gauge that is 1 while a verb on a resource is forbidden.
pub const FORBIDDEN_METRIC: &str = "node_sync_api_forbidden";

/// What node-sync lists and watches across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Nodes,
    Services,
    Endpoints,
    EndpointSlices,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Nodes,
        Resource::Services,
        Resource::Endpoints,
        Resource::EndpointSlices,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::Services => "services",
            Resource::Endpoints => "endpoints",
            Resource::EndpointSlices => "endpointslices",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }

    /// As RBAC and kubectl name it: `endpointslices.discovery.k8s.io`.
    pub fn qualified(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "endpointslices.discovery.k8s.io",
            r => r.plural(),
        }
    }

    fn purpose(self) -> &'static str {
        match self {
            Resource::Nodes => "the routes to other nodes' pods",
            _ => "ClusterIP Services",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    List,
    Watch,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Watch => "watch",
        }
    }
}

/// The 403 in a kube error, if it is one.
pub fn forbidden(e: &kube::Error) -> Option<&Status> {
    match e {
        kube::Error::Api(s) if s.is_forbidden() => Some(s),
        _ => None,
    }
}

/// The verb a watcher's 403 refused: its list, or its watch.
pub fn watch_forbidden(e: &watcher::Error) -> Option<(Verb, &Status)> {
    match e {
        watcher::Error::InitialListFailed(e) => forbidden(e).map(|s| (Verb::List, s)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            forbidden(e).map(|s| (Verb::Watch, s))
        }
        watcher::Error::WatchError(s) if s.is_forbidden() => Some((Verb::Watch, s)),
        _ => None,
    }
}

/// The user a 403 names (`... forbidden: User "system:node:inajob"
/// cannot list ...`), the authorizer's wording since Kubernetes 1.0.
pub fn user_in(message: &str) -> Option<&str> {
    let rest = &message[message.find("User \"")? + 6..];
    rest.get(..rest.find('"')?).filter(|u| !u.is_empty())
}

/// What node-sync says of a refusal: the verbs refused on `resource`, to
/// whom, what node-sync needs them for, and the fix.
pub fn message(verbs: &[Verb], resource: Resource, user: &str) -> String {
    let verbs: Vec<&str> = verbs.iter().map(|v| v.as_str()).collect();
    format!(
        "{} {} at the cluster scope is forbidden for {user}; node-sync needs list and watch on {} for {}: kubectl apply -f {RBAC_FILE} (as a cluster admin)",
        verbs.join("/"),
        resource.qualified(),
        resource.qualified(),
        resource.purpose(),
    )
}

/// A refused list, as an error of a one-shot command.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Forbidden {
    pub resource: Resource,
    pub verb: Verb,
    pub message: String,
}

/// `e` as [`Forbidden`] when it is a 403 for `verb` on `resource`.
pub fn explain(e: kube::Error, resource: Resource, verb: Verb) -> anyhow::Error {
    match forbidden(&e) {
        Some(s) => Forbidden {
            resource,
            verb,
            message: message(
                &[verb],
                resource,
                user_in(&s.message).unwrap_or("this identity"),
            ),
        }
        .into(),
        None => e.into(),
    }
}

struct Denial {
    user: String,
    message: String,
}

/// What the daemon has been refused, now. Shared by the watch loops (which
/// report), the heartbeat (NetworkUnavailable) and the metrics.
pub struct Access {
    metrics: Arc<Metrics>,
    denied: Mutex<BTreeMap<(Resource, Verb), Denial>>,
}

impl Access {
    pub fn new(metrics: Arc<Metrics>) -> Access {
        Access {
            metrics,
            denied: Mutex::new(BTreeMap::new()),
        }
    }

    fn set_gauge(&self, resource: Resource, verb: Verb, v: f64) {
        self.metrics.set(
            FORBIDDEN_METRIC,
            &[("resource", resource.qualified()), ("verb", verb.as_str())],
            v,
        );
    }

    /// A 403 for `verb` on `resource`; true (and one log line) only when
    /// it was not already refused.
    pub fn deny(&self, resource: Resource, verb: Verb, status: &Status) -> bool {
        let user = user_in(&status.message).unwrap_or("this identity");
        let message = message(&[verb], resource, user);
        let Ok(mut d) = self.denied.lock() else {
            return false;
        };
        if d.contains_key(&(resource, verb)) {
            return false;
        }
        tracing::error!("{message}");
        d.insert(
            (resource, verb),
            Denial {
                user: user.to_string(),
                message,
            },
        );
        drop(d);
        self.set_gauge(resource, verb, 1.0);
        true
    }

    /// `verb` on `resource` worked; true (and one log line) only when it
    /// had been refused.
    pub fn permit(&self, resource: Resource, verb: Verb) -> bool {
        let Some(was) = self
            .denied
            .lock()
            .ok()
            .and_then(|mut d| d.remove(&(resource, verb)))
        else {
            return false;
        };
        tracing::info!(
            "{} {} is permitted again for {}: {} resume",
            verb.as_str(),
            resource.qualified(),
            was.user,
            resource.purpose()
        );
        self.set_gauge(resource, verb, 0.0);
        true
    }

    /// One item of `resource`'s watcher: a 403 is noted; an event clears
    /// what it proves works (objects listed: list; a change: the watch).
    /// A watch that starts and stays quiet proves nothing: see
    /// [`Access::recheck`].
    pub fn observe<K>(&self, resource: Resource, r: &Result<Event<K>, watcher::Error>) {
        match r {
            Err(e) => {
                if let Some((verb, s)) = watch_forbidden(e) {
                    self.deny(resource, verb, s);
                }
            }
            // Sent before the list is asked for.
            Ok(Event::Init) => {}
            Ok(Event::InitApply(_) | Event::InitDone) => {
                self.permit(resource, Verb::List);
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => {
                self.permit(resource, Verb::List);
                self.permit(resource, Verb::Watch);
            }
        }
    }

    /// The error for `resource`, while something of it is refused.
    pub fn denial(&self, resource: Resource) -> Option<String> {
        let d = self.denied.lock().ok()?;
        d.range((resource, Verb::List)..=(resource, Verb::Watch))
            .next()
            .map(|(_, v)| v.message.clone())
    }

    /// Refused watches asked of the authorizer again: a watch that starts
    /// sends nothing until something changes, so its success is not seen
    /// otherwise. Refused lists are cleared by the watcher's next list.
    pub async fn recheck(&self, client: &kube::Client) {
        let watches: Vec<Resource> = match self.denied.lock() {
            Ok(d) => d
                .keys()
                .filter(|(_, v)| *v == Verb::Watch)
                .map(|(r, _)| *r)
                .collect(),
            Err(_) => return,
        };
        for r in watches {
            if let Ok(Review { allowed: true, .. }) = review(client, Verb::Watch, r).await {
                self.permit(r, Verb::Watch);
            }
        }
    }
}

/// The authorizer's answer to a SelfSubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub allowed: bool,
    /// The authorizer's reason, when it gave one.
    pub reason: String,
}

/// May this identity `verb` `resource` at the cluster scope? Every
/// authenticated user may ask (`system:basic-user`).
pub async fn review(
    client: &kube::Client,
    verb: Verb,
    resource: Resource,
) -> Result<Review, kube::Error> {
    let ssar: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": verb.as_str(), "group": resource.group(), "resource": resource.plural()}}
    }))
    .map_err(kube::Error::SerdeError)?;
    let out = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &ssar)
        .await?;
    let st = out.status.unwrap_or_default();
    Ok(Review {
        allowed: st.allowed,
        reason: st.reason.unwrap_or_default(),
    })
}

/// Who this client is, as the API server authenticated it.
pub async fn whoami(client: &kube::Client) -> Result<String, kube::Error> {
    let ssr: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
    }))
    .map_err(kube::Error::SerdeError)?;
    let out = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &ssr)
        .await?;
    Ok(out
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// `status`'s lines on access: per resource, granted, or the error.
pub async fn report(client: &kube::Client, resources: &[Resource]) -> Vec<String> {
    let user = match whoami(client).await {
        Ok(u) if !u.is_empty() => u,
        // Unreachable: every review would wait for the same timeout.
        Err(e) if !matches!(e, kube::Error::Api(_)) => {
            return vec![format!("cannot ask the API server: {e}")];
        }
        _ => "this identity".to_string(),
    };
    let mut out = Vec::new();
    for &r in resources {
        let mut refused = Vec::new();
        let mut failed = None;
        for verb in [Verb::List, Verb::Watch] {
            match review(client, verb, r).await {
                Ok(rv) if rv.allowed => {}
                Ok(_) => refused.push(verb),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        out.push(match failed {
            Some(e) => format!(
                "list/watch {}: cannot ask the API server: {e}",
                r.qualified()
            ),
            None if refused.is_empty() => format!("list/watch {}: granted", r.qualified()),
            None => message(&refused, r, &user),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-apiserver 1.36's answer to a node listing every Node.
    const NODES_403: &str = "nodes is forbidden: User \"system:node:inajob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope: node 'inajob' cannot read all nodes, only its own Node object";

    fn status(code: u16, reason: &str, message: &str) -> Status {
        serde_json::from_value(
            json!({"status": "Failure", "code": code, "reason": reason, "message": message}),
        )
        .expect("status")
    }

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(status(code, reason, NODES_403).boxed())
    }

    #[test]
    fn a_403_is_recognised_in_client_and_watcher_errors() {
        assert!(forbidden(&api(403, "Forbidden")).is_some());
        assert!(forbidden(&api(404, "NotFound")).is_none());
        assert!(forbidden(&api(410, "Expired")).is_none());
        let list = watcher::Error::InitialListFailed(api(403, "Forbidden"));
        assert_eq!(watch_forbidden(&list).map(|(v, _)| v), Some(Verb::List));
        let start = watcher::Error::WatchStartFailed(api(403, "Forbidden"));
        assert_eq!(watch_forbidden(&start).map(|(v, _)| v), Some(Verb::Watch));
        let failed = watcher::Error::WatchFailed(api(403, "Forbidden"));
        assert_eq!(watch_forbidden(&failed).map(|(v, _)| v), Some(Verb::Watch));
        let ev = watcher::Error::WatchError(status(403, "Forbidden", NODES_403).boxed());
        assert_eq!(watch_forbidden(&ev).map(|(v, _)| v), Some(Verb::Watch));
        // Not a 403: an outage, an expired watch, a missing version.
        let gone = watcher::Error::WatchError(status(410, "Expired", "too old").boxed());
        assert!(watch_forbidden(&gone).is_none());
        assert!(
            watch_forbidden(&watcher::Error::InitialListFailed(api(
                500,
                "InternalError"
            )))
            .is_none()
        );
        assert!(watch_forbidden(&watcher::Error::NoResourceVersion).is_none());
    }

    #[test]
    fn the_user_comes_from_the_authorizers_message() {
        assert_eq!(user_in(NODES_403), Some("system:node:inajob"));
        assert_eq!(user_in("forbidden"), None);
        assert_eq!(user_in("User \""), None);
        assert_eq!(user_in("User \"\" cannot"), None);
    }

    #[test]
    fn the_message_names_the_refusal_and_the_fix() {
        assert_eq!(
            message(&[Verb::List], Resource::Nodes, "system:node:inajob"),
            "list nodes at the cluster scope is forbidden for system:node:inajob; node-sync needs list and watch on nodes for the routes to other nodes' pods: kubectl apply -f deploy/node-sync-rbac.yaml (as a cluster admin)"
        );
        assert_eq!(
            message(
                &[Verb::List, Verb::Watch],
                Resource::EndpointSlices,
                "system:node:yuanying"
            ),
            "list/watch endpointslices.discovery.k8s.io at the cluster scope is forbidden for system:node:yuanying; node-sync needs list and watch on endpointslices.discovery.k8s.io for ClusterIP Services: kubectl apply -f deploy/node-sync-rbac.yaml (as a cluster admin)"
        );
        let e = explain(api(403, "Forbidden"), Resource::Nodes, Verb::List);
        assert!(
            e.to_string().starts_with(
                "list nodes at the cluster scope is forbidden for system:node:inajob;"
            ),
            "{e}"
        );
        let e = explain(api(500, "InternalError"), Resource::Nodes, Verb::List);
        assert!(e.to_string().starts_with("ApiError"), "{e}");
    }

    #[test]
    fn transitions_only_are_reported() {
        let m = Arc::new(Metrics::default());
        let a = Access::new(Arc::clone(&m));
        let s = status(403, "Forbidden", NODES_403);
        let gauge = |r: &str, v: &str| m.get(FORBIDDEN_METRIC, &[("resource", r), ("verb", v)]);
        assert!(a.denial(Resource::Nodes).is_none());
        assert!(a.deny(Resource::Nodes, Verb::List, &s));
        assert!(
            !a.deny(Resource::Nodes, Verb::List, &s),
            "a retry is no transition"
        );
        assert_eq!(gauge("nodes", "list"), Some(1.0));
        assert!(
            a.denial(Resource::Nodes)
                .is_some_and(|d| d.starts_with("list nodes at the cluster scope"))
        );
        assert!(a.denial(Resource::Services).is_none());
        // The watcher's own events: Init says nothing, a listed object does.
        a.observe::<()>(Resource::Nodes, &Ok(Event::Init));
        assert_eq!(gauge("nodes", "list"), Some(1.0));
        a.observe::<()>(Resource::Nodes, &Ok(Event::InitDone));
        assert_eq!(gauge("nodes", "list"), Some(0.0));
        assert!(a.denial(Resource::Nodes).is_none());
        assert!(!a.permit(Resource::Nodes, Verb::List), "already permitted");
        // A refused watch is cleared by a change, not by a list.
        let w = Err(watcher::Error::WatchStartFailed(api(403, "Forbidden")));
        a.observe::<()>(Resource::EndpointSlices, &w);
        assert_eq!(gauge("endpointslices.discovery.k8s.io", "watch"), Some(1.0));
        a.observe::<()>(Resource::EndpointSlices, &Ok(Event::InitDone));
        assert!(a.denial(Resource::EndpointSlices).is_some());
        a.observe(Resource::EndpointSlices, &Ok(Event::Apply(())));
        assert!(a.denial(Resource::EndpointSlices).is_none());
        assert_eq!(gauge("endpointslices.discovery.k8s.io", "watch"), Some(0.0));
        // Other errors change nothing.
        a.observe::<()>(
            Resource::Services,
            &Err(watcher::Error::InitialListFailed(api(500, "InternalError"))),
        );
        assert!(a.denial(Resource::Services).is_none());
        assert_eq!(gauge("services", "list"), None);
    }
}
