//! The Services to program, as kube-proxy sees them: every Service with a
//! cluster IP (not headless, not ExternalName), each TCP or UDP port with
//! the ready endpoints from its EndpointSlices, or from its Endpoints when
//! it has no slice. A pure function; malformed objects are skipped with a
//! line saying why, never a crash.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::objects::{EpPort, EpsObj, SliceObj, SvcObj};
use super::{Proto, ServicePort};

fn proto(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None,
    }
}

/// (namespace, service) -> port name -> ready endpoints. Borrowed from
/// the stores: this runs on every change, over every object.
type Backends<'a> = HashMap<(&'a str, &'a str), HashMap<&'a str, BTreeSet<SocketAddr>>>;

/// `addresses` on each of `ports` into `entry`; a line per bad address.
fn add<'a>(
    entry: &mut HashMap<&'a str, BTreeSet<SocketAddr>>,
    ports: &'a [EpPort],
    addresses: &[String],
    skipped: &mut Vec<String>,
    what: impl Fn() -> String,
) {
    let ips: Vec<IpAddr> = addresses
        .iter()
        .filter_map(|a| match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                skipped.push(format!("{}: invalid address {a:?}", what()));
                None
            }
        })
        .collect();
    for p in ports {
        let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let set = entry.entry(p.name.as_str()).or_default();
        set.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port)));
    }
}

fn from_slices<'a>(
    slices: impl IntoIterator<Item = &'a SliceObj>,
    skipped: &mut Vec<String>,
) -> Backends<'a> {
    let mut out = Backends::new();
    for s in slices {
        let Some(svc) = s.service.as_deref() else {
            continue;
        };
        let entry = out.entry((s.meta.namespace.as_str(), svc)).or_default();
        add(entry, &s.ports, &s.ready, skipped, || {
            format!("EndpointSlice {}/{}", s.meta.namespace, s.meta.name)
        });
    }
    out
}

fn from_endpoints<'a>(
    eps: impl IntoIterator<Item = &'a EpsObj>,
    skipped: &mut Vec<String>,
) -> Backends<'a> {
    let mut out = Backends::new();
    for ep in eps {
        let entry = out
            .entry((ep.meta.namespace.as_str(), ep.meta.name.as_str()))
            .or_default();
        for sub in &ep.subsets {
            add(entry, &sub.ports, &sub.addresses, skipped, || {
                format!("Endpoints {}/{}", ep.meta.namespace, ep.meta.name)
            });
        }
    }
    out
}

/// The service ports to program, sorted, and a line per thing skipped.
/// Takes references so that the watch stores are not copied per sync.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a SvcObj>,
    slices: impl IntoIterator<Item = &'a SliceObj>,
    endpoints: impl IntoIterator<Item = &'a EpsObj>,
) -> (Vec<ServicePort>, Vec<String>) {
    let mut skipped = Vec::new();
    let by_slice = from_slices(slices, &mut skipped);
    let by_endpoints = from_endpoints(endpoints, &mut skipped);
    let mut out = Vec::new();
    for svc in services {
        let (ns, name) = (svc.meta.namespace.as_str(), svc.meta.name.as_str());
        if !svc.has_spec || svc.external_name {
            continue;
        }
        let vip = match svc.cluster_ip.as_deref() {
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
        // Slices when the Service has any; Endpoints otherwise.
        let backends = by_slice
            .get(&(ns, name))
            .or_else(|| by_endpoints.get(&(ns, name)));
        for p in &svc.ports {
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
            let endpoints: Vec<SocketAddr> = backends
                .and_then(|b| b.get(p.name.as_str()))
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
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn svc() -> SvcObj {
        testbed_like::<Service>("service-web.yaml").into()
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
        let eps: EpsObj = testbed_like::<Endpoints>("endpoints-web.yaml").into();
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
        let slice: SliceObj = serde_json::from_value::<EndpointSlice>(json!({
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
        .expect("slice")
        .into();
        let eps: EpsObj = testbed_like::<Endpoints>("endpoints-web.yaml").into();
        let (d, skipped) = desired(&[svc()], &[slice], &[eps]);
        let e: Vec<String> = d[0].endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(e, vec!["10.244.1.7:8080", "10.244.1.9:8080"]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
    }

    #[test]
    fn malformed_and_special_services_are_skipped() {
        let mk = |name: &str, spec: serde_json::Value| -> SvcObj {
            serde_json::from_value::<Service>(
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
            )
            .expect("svc")
            .into()
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
