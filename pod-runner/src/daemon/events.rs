//! core/v1 Events about pods, as the kubelet records them (source
//! component `kubelet` is the kubelet's; ours says `pod-runner`), so
//! `kubectl describe pod` tells what happened on the node. Best effort:
//! a failed write is logged, never retried, and never holds up the pod.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, PostParams};

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
}

/// Event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Self {
        Recorder {
            client,
            node: node.to_string(),
        }
    }

    /// Records `reason`/`message` about `pod` (and `container`, as the
    /// kubelet's `spec.containers{name}` field path), in the background.
    pub fn emit(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event = Event {
            metadata: kube::api::ObjectMeta {
                // The client-go recorder's naming: object name, a dot and
                // a unique hex suffix.
                name: Some(format!("{name}.{:x}", now.as_nanosecond().unsigned_abs())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(match kind {
                Kind::Normal => "Normal".into(),
                Kind::Warning => "Warning".into(),
            }),
            source: Some(EventSource {
                component: Some("pod-runner".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("pod-runner".into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::warn!("recording event {:?}: {e}", event.reason);
            }
        });
    }
}
