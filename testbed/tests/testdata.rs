//! testdata/ parses into the API types and says what the tutorial says.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use testbed::testdata::{cni_conf, load, load_one};

#[test]
fn nodes_have_their_pod_cidrs_and_addresses() {
    let nodes: Vec<Node> = load("nodes.yaml");
    let got: Vec<(String, String, String)> = nodes
        .iter()
        .map(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_default();
            (
                n.metadata.name.clone().unwrap_or_default(),
                spec.pod_cidr.unwrap_or_default(),
                ip,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "inajob".into(),
                "10.244.1.0/24".into(),
                "192.168.43.111".into()
            ),
            (
                "yuanying".into(),
                "10.244.2.0/24".into(),
                "192.168.43.112".into()
            ),
        ]
    );
}

#[test]
fn replicaset_pods_service_and_endpoints_agree() {
    let rs: ReplicaSet = load_one("replicaset-web.yaml");
    let spec = rs.spec.expect("spec");
    let selector = spec.selector.match_labels.expect("matchLabels");
    assert_eq!(selector.get("app").map(String::as_str), Some("web"));
    let tpl = spec.template.expect("template");
    let port = tpl.spec.expect("pod spec").containers[0]
        .ports
        .clone()
        .unwrap_or_default()[0]
        .container_port;
    assert_eq!(port, 8080);
    for name in ["web-001", "web-002"] {
        let pod: Pod = load_one(&format!("pod-{name}.yaml"));
        assert_eq!(pod.metadata.name.as_deref(), Some(name));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("app").map(String::as_str),
            Some("web"),
            "{name} matches the selector"
        );
        let c = &pod.spec.expect("spec").containers[0];
        assert_eq!(c.ports.clone().unwrap_or_default()[0].container_port, 8080);
    }
    let svc: Service = load_one("service-web.yaml");
    let s = svc.spec.expect("spec");
    assert_eq!(s.cluster_ip.as_deref(), Some("10.254.10.128"));
    let p = &s.ports.expect("ports")[0];
    assert_eq!(
        (p.port, p.target_port.clone()),
        (80, Some(IntOrString::Int(8080)))
    );
    assert_eq!(
        s.selector
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("web")
    );
    let ep: Endpoints = load_one("endpoints-web.yaml");
    assert_eq!(
        ep.metadata.name, svc.metadata.name,
        "Endpoints are named after the Service"
    );
    let subset = &ep.subsets.expect("subsets")[0];
    let ips: Vec<&str> = subset
        .addresses
        .iter()
        .flatten()
        .map(|a| a.ip.as_str())
        .collect();
    assert_eq!(ips, ["10.244.2.2", "10.244.1.2"]);
    assert_eq!(subset.ports.as_ref().expect("ports")[0].port, 8080);
}

#[test]
fn cni_configs_are_the_tutorials() {
    let bridge = cni_conf("10-bridge.conf");
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["cniVersion"], "0.3.1");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(cni_conf("99-loopback.conf")["type"], "loopback");
}
