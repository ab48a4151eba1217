//! The Services to program, as kube-proxy sees them: every Service with a
//! cluster IP (not headless, not ExternalName), each TCP or UDP port with
//! the ready endpoints from its EndpointSlices, or from its Endpoints when
//! it has no slice. A pure function; malformed objects are skipped with a
//! line saying why, never a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Proto, ServicePort};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn proto(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None,
    }
}

/// (namespace, service) -> port name -> ready endpoints.
type Backends = BTreeMap<(String, String), BTreeMap<String, BTreeSet<SocketAddr>>>;

fn from_slices(slices: &[EndpointSlice], skipped: &mut Vec<String>) -> Backends {
    let mut out = Backends::new();
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
        else {
            continue;
        };
        let entry = out.entry((ns.clone(), svc.clone())).or_default();
        for p in s.ports.iter().flatten() {
            let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let set = entry.entry(p.name.clone().unwrap_or_default()).or_default();
            for e in &s.endpoints {
                // kube-proxy: a missing "ready" means ready.
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    match a.parse::<IpAddr>() {
                        Ok(ip) => {
                            set.insert(SocketAddr::new(ip, port));
                        }
                        Err(_) => skipped.push(format!(
                            "EndpointSlice {ns}/{}: invalid address {a:?}",
                            s.metadata.name.as_deref().unwrap_or("")
                        )),
                    }
                }
            }
        }
    }
    out
}

fn from_endpoints(eps: &[Endpoints], skipped: &mut Vec<String>) -> Backends {
    let mut out = Backends::new();
    for ep in eps {
        let key = (
            ep.metadata.namespace.clone().unwrap_or_default(),
            ep.metadata.name.clone().unwrap_or_default(),
        );
        let entry = out.entry(key.clone()).or_default();
        for sub in ep.subsets.iter().flatten() {
            for p in sub.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let set = entry.entry(p.name.clone().unwrap_or_default()).or_default();
                for a in sub.addresses.iter().flatten() {
                    match a.ip.parse::<IpAddr>() {
                        Ok(ip) => {
                            set.insert(SocketAddr::new(ip, port));
                        }
                        Err(_) => skipped.push(format!(
                            "Endpoints {}/{}: invalid address {:?}",
                            key.0, key.1, a.ip
                        )),
                    }
                }
            }
        }
    }
    out
}

/// The service ports to program, sorted, and a line per thing skipped.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
    endpoints: &[Endpoints],
) -> (Vec<ServicePort>, Vec<String>) {
    let mut skipped = Vec::new();
    let by_slice = from_slices(slices, &mut skipped);
    let by_endpoints = from_endpoints(endpoints, &mut skipped);
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let vip = match spec.cluster_ip.as_deref() {
            None | Some("") => {
                skipped.push(format!("Service {ns}/{name}: no clusterIP"));
                continue;
            }
            Some("None") => continue,
            Some(ip) => match ip.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    skipped.push(format!("Service {ns}/{name}: invalid clusterIP {ip:?}"));
                    continue;
                }
            },
        };
        let key = (ns.clone(), name.clone());
        // Slices when the Service has any; Endpoints otherwise.
        let backends = by_slice.get(&key).or_else(|| by_endpoints.get(&key));
        for p in spec.ports.iter().flatten() {
            let Some(proto) = proto(p.protocol.as_deref()) else {
                skipped.push(format!(
                    "Service {ns}/{name} port {}: protocol {:?} is not supported",
                    p.port,
                    p.protocol.as_deref().unwrap_or("")
                ));
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                skipped.push(format!("Service {ns}/{name}: invalid port {}", p.port));
                continue;
            };
            let pname = p.name.clone().unwrap_or_default();
            let endpoints: Vec<SocketAddr> = backends
                .and_then(|b| b.get(&pname))
                .into_iter()
                .flatten()
                .filter(|e| e.is_ipv4() == vip.is_ipv4())
                .copied()
                .collect();
            out.push(ServicePort {
                vip,
                port,
                proto,
                endpoints,
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.vip == b.vip && a.port == b.port && a.proto == b.proto);
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Service {
        testbed_like("service-web.yaml")
    }

    /// An object from testdata/ (the tutorial's YAML).
    fn testbed_like<T: serde::de::DeserializeOwned>(file: &str) -> T {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("testdata");
        serde_yaml::from_str(&text).expect("object")
    }

    #[test]
    fn the_tutorial_service_from_its_endpoints() {
        let eps: Endpoints = testbed_like("endpoints-web.yaml");
        let (d, skipped) = desired(&[svc()], &[], &[eps]);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].vip.to_string(), "10.254.10.128");
        assert_eq!((d[0].port, d[0].proto), (80, Proto::Tcp));
        let e: Vec<String> = d[0].endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(e, vec!["10.244.1.2:8080", "10.244.2.2:8080"]);
    }

    #[test]
    fn slices_win_and_only_ready_endpoints_count() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-service-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web-service"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.8"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.9"]},
                {"addresses": ["not-an-ip"]}]
        }))
        .expect("slice");
        let eps: Endpoints = testbed_like("endpoints-web.yaml");
        let (d, skipped) = desired(&[svc()], &[slice], &[eps]);
        let e: Vec<String> = d[0].endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(e, vec!["10.244.1.7:8080", "10.244.1.9:8080"]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
    }

    #[test]
    fn malformed_and_special_services_are_skipped() {
        let mk = |name: &str, spec: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
            )
            .expect("svc")
        };
        let services = [
            mk("no-ip", json!({"ports": [{"port": 80}]})),
            mk(
                "bad-ip",
                json!({"clusterIP": "10.254.1.300", "ports": [{"port": 80}]}),
            ),
            mk(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            mk(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.org"}),
            ),
            mk(
                "sctp",
                json!({"clusterIP": "10.254.0.9", "ports": [{"port": 80, "protocol": "SCTP"}, {"port": 53, "protocol": "UDP"}]}),
            ),
        ];
        let (d, skipped) = desired(&services, &[], &[]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].port, d[0].proto), (53, Proto::Udp));
        // No endpoints: programmed anyway, so connections are rejected.
        assert!(d[0].endpoints.is_empty());
    }
}
