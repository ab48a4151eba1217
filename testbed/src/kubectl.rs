//! A tiny kubectl for places without one (the qemu VM, the demo): create
//! or replace the objects of YAML files, and delete one object, through
//! kube-rs with a kubeconfig. Only the kinds the project's tests use.

use std::path::Path;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("{0}")]
    Input(String),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Api { what: String, source: kube::Error },
}

/// The resource behind `kind`, as the API names it (plural, scope).
fn resource(api_version: &str, kind: &str) -> Result<(ApiResource, bool), KubectlError> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "Node" => ("nodes", false),
        "Pod" => ("pods", true),
        "Service" => ("services", true),
        "Endpoints" => ("endpoints", true),
        "EndpointSlice" => ("endpointslices", true),
        "Lease" => ("leases", true),
        "ReplicaSet" => ("replicasets", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        other => {
            return Err(KubectlError::Input(format!(
                "kind {other} is not known here"
            )));
        }
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

fn api(client: &kube::Client, ar: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
    if namespaced {
        Api::namespaced_with(client.clone(), ns, ar)
    } else {
        Api::all_with(client.clone(), ar)
    }
}

/// Runs `f` to completion on a thread of its own with its own runtime:
/// callable from synchronous code and from inside another runtime alike.
pub fn blocking<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(f))
        })
        .join()
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
    .unwrap_or_else(|e| panic!("a runtime for a blocking call: {e}"))
}

pub async fn client(kubeconfig: &Path) -> Result<kube::Client, KubectlError> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| KubectlError::Config(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubectlError::Config(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| KubectlError::Config(e.to_string()))
}

/// Creates every object in the YAML `text` (documents separated by
/// `---`), replacing one that exists. Returns "kind/name" per object.
pub async fn apply(client: &kube::Client, text: &str) -> Result<Vec<String>, KubectlError> {
    let mut done = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| KubectlError::Input(format!("YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_json::from_value(v)
            .map_err(|e| KubectlError::Input(format!("not an object: {e}")))?;
        let types = obj
            .types
            .clone()
            .ok_or_else(|| KubectlError::Input("an object without apiVersion/kind".into()))?;
        let (ar, namespaced) = resource(&types.api_version, &types.kind)?;
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = obj.metadata.name.clone().unwrap_or_default();
        let a = api(client, &ar, namespaced, &ns);
        let what = format!("{}/{name}", types.kind);
        match a.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let cur = a.get(&name).await.map_err(|source| KubectlError::Api {
                    what: what.clone(),
                    source,
                })?;
                obj.metadata.resource_version = cur.metadata.resource_version;
                a.replace(&name, &PostParams::default(), &obj)
                    .await
                    .map_err(|source| KubectlError::Api {
                        what: what.clone(),
                        source,
                    })?;
            }
            Err(source) => return Err(KubectlError::Api { what, source }),
        }
        done.push(what);
    }
    Ok(done)
}

/// Deletes `kind` `name` (in `ns` when namespaced) at once.
pub async fn delete(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(), KubectlError> {
    let (ar, namespaced) = resource(api_version, kind)?;
    api(client, &ar, namespaced, ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .map(drop)
        .map_err(|source| KubectlError::Api {
            what: format!("{kind}/{name}"),
            source,
        })
}
