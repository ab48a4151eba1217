//! What node-sync keeps of Services, EndpointSlices and Endpoints: only
//! what [`super::model::desired`] reads. The watch stores hold these, not
//! the API objects: with 10,000 Services and their Endpoints, the
//! objects' empty optional fields alone (a Service is 824 bytes before
//! any string) and their managedFields, annotations, statuses and target
//! references would be most of node-sync's memory.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher::Event;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Name, namespace and resourceVersion: what a store keys on and what a
/// log line names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    resource_version: Option<String>,
}

impl From<ObjectMeta> for Meta {
    fn from(m: ObjectMeta) -> Meta {
        Meta {
            namespace: m.namespace.unwrap_or_default(),
            name: m.name.unwrap_or_default(),
            resource_version: m.resource_version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    pub name: String,
    /// As written; `None` is TCP.
    pub protocol: Option<String>,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcObj {
    pub meta: Meta,
    /// Without a spec there is nothing to program.
    pub has_spec: bool,
    pub external_name: bool,
    pub cluster_ip: Option<String>,
    pub ports: Vec<SvcPort>,
}

impl From<Service> for SvcObj {
    fn from(s: Service) -> SvcObj {
        let has_spec = s.spec.is_some();
        let spec = s.spec.unwrap_or_default();
        SvcObj {
            meta: s.metadata.into(),
            has_spec,
            external_name: spec.type_.as_deref() == Some("ExternalName"),
            cluster_ip: spec.cluster_ip,
            ports: spec
                .ports
                .into_iter()
                .flatten()
                .map(|p| SvcPort {
                    name: p.name.unwrap_or_default(),
                    protocol: p.protocol,
                    port: p.port,
                })
                .collect(),
        }
    }
}

/// A named port and its number, as slices and Endpoints list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpPort {
    pub name: String,
    pub port: Option<i32>,
}

impl EpPort {
    fn new(name: Option<String>, port: Option<i32>) -> EpPort {
        EpPort {
            name: name.unwrap_or_default(),
            port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceObj {
    pub meta: Meta,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub ports: Vec<EpPort>,
    /// Addresses of the ready endpoints (a missing condition is ready).
    pub ready: Vec<String>,
}

impl From<EndpointSlice> for SliceObj {
    fn from(s: EndpointSlice) -> SliceObj {
        let mut meta = s.metadata;
        let service = meta
            .labels
            .as_mut()
            .and_then(|l| l.remove(SERVICE_NAME_LABEL));
        SliceObj {
            meta: meta.into(),
            service,
            ports: s
                .ports
                .into_iter()
                .flatten()
                .map(|p| EpPort::new(p.name, p.port))
                .collect(),
            ready: s
                .endpoints
                .into_iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .flat_map(|e| e.addresses)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    /// Ready addresses only: not-ready ones are never programmed.
    pub addresses: Vec<String>,
    pub ports: Vec<EpPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpsObj {
    pub meta: Meta,
    pub subsets: Vec<Subset>,
}

impl From<Endpoints> for EpsObj {
    fn from(e: Endpoints) -> EpsObj {
        EpsObj {
            meta: e.metadata.into(),
            subsets: e
                .subsets
                .into_iter()
                .flatten()
                .map(|s| Subset {
                    addresses: s.addresses.into_iter().flatten().map(|a| a.ip).collect(),
                    ports: s
                        .ports
                        .into_iter()
                        .flatten()
                        .map(|p| EpPort::new(p.name, Some(p.port)))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// API objects as ours.
pub fn compact<K, C: From<K>>(items: Vec<K>) -> Vec<C> {
    items.into_iter().map(C::from).collect()
}

/// A watch event of API objects as one of ours.
pub fn event<K, C: From<K>>(ev: Event<K>) -> Event<C> {
    match ev {
        Event::Apply(k) => Event::Apply(k.into()),
        Event::Delete(k) => Event::Delete(k.into()),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(k.into()),
        Event::InitDone => Event::InitDone,
    }
}

/// The reflector store's key for our types: the API type's kind and
/// names, so they key exactly as the API objects would.
macro_rules! lookup {
    ($ours:ty, $api:ty) => {
        impl Lookup for $ours {
            type DynamicType = ();
            fn kind(_: &()) -> Cow<'_, str> {
                <$api as Resource>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$api as Resource>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$api as Resource>::version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$api as Resource>::plural(&())
            }
            fn name(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.meta.name))
            }
            fn namespace(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.meta.namespace))
            }
            fn resource_version(&self) -> Option<Cow<'_, str>> {
                self.meta.resource_version.as_deref().map(Cow::Borrowed)
            }
            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

lookup!(SvcObj, Service);
lookup!(SliceObj, EndpointSlice);
lookup!(EpsObj, Endpoints);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_the_model_reads() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web-service", "namespace": "default", "resourceVersion": "7",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"type": "ClusterIP", "clusterIP": "10.254.10.128", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {}}
        }))
        .expect("service");
        let s = SvcObj::from(svc);
        assert_eq!(
            (s.meta.namespace.as_str(), s.meta.name.as_str()),
            ("default", "web-service")
        );
        assert_eq!(s.resource_version().as_deref(), Some("7"));
        assert_eq!(s.cluster_ip.as_deref(), Some("10.254.10.128"));
        assert!(!s.external_name);
        assert_eq!(
            s.ports,
            [SvcPort {
                name: "http".into(),
                protocol: Some("TCP".into()),
                port: 80
            }]
        );

        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-service-x", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web-service", "other": "x"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "inajob"},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": false}},
                {"addresses": ["10.244.3.2"]}]
        }))
        .expect("slice");
        let sl = SliceObj::from(slice);
        assert_eq!(sl.service.as_deref(), Some("web-service"));
        assert_eq!(sl.ready, ["10.244.1.2", "10.244.3.2"]);

        let eps: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web-service", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.1.2", "nodeName": "inajob"}],
                "notReadyAddresses": [{"ip": "10.244.2.2"}],
                "ports": [{"name": "http", "port": 8080}]}]
        }))
        .expect("endpoints");
        let e = EpsObj::from(eps);
        assert_eq!(e.subsets[0].addresses, ["10.244.1.2"]);
        assert_eq!(e.subsets[0].ports[0].port, Some(8080));
        // Keyed as the API objects are.
        let r = e.to_object_ref(());
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("web-service", Some("default"))
        );
    }
}
