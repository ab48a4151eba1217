//! kube-apiserver, through kube-rs: the Pod, its status subresource, the
//! final delete, and this Node's InternalIP. Transient failures (the
//! server restarting, a dropped connection) are retried for a few seconds;
//! API answers (404, 409, 403) are not.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
}

impl ApiError {
    /// The server's message when it refused this identity (403).
    pub fn forbidden(&self) -> Option<&str> {
        match self {
            ApiError::Kube(kube::Error::Api(s)) if s.code == 403 => Some(&s.message),
            _ => None,
        }
    }
}

const RETRY: [u64; 5] = [100, 200, 400, 800, 1600];

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

async fn retry<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut waits = RETRY.iter();
    loop {
        match f().await {
            Err(e) if transient(&e) => match waits.next() {
                Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// The field manager of pod-runner's writes.
pub const FIELD_MANAGER: &str = "pod-runner";

#[derive(Clone)]
pub struct KubeApi {
    client: Client,
}

impl KubeApi {
    /// kubectl's rules: `--kubeconfig`, else `KUBECONFIG` (a list, merged),
    /// else `~/.kube/config`; the in-cluster config last.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, ApiError> {
        Self::connect_with(kubeconfig, Some(Duration::from_secs(15))).await
    }

    /// [`KubeApi::connect`] with another read timeout: `None` for watches,
    /// which are quiet as long as nothing changes.
    pub async fn connect_with(
        kubeconfig: Option<&Path>,
        read_timeout: Option<Duration>,
    ) -> Result<Self, ApiError> {
        let opts = KubeConfigOptions::default();
        let mut cfg = match kubeconfig {
            Some(p) => {
                let kc = Kubeconfig::read_from(p)
                    .map_err(|e| ApiError::Config(format!("{}: {e}", p.display())))?;
                Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| ApiError::Config(format!("{}: {e}", p.display())))?
            }
            None => Config::infer()
                .await
                .map_err(|e| ApiError::Config(e.to_string()))?,
        };
        cfg.connect_timeout = Some(Duration::from_secs(5));
        cfg.read_timeout = read_timeout;
        cfg.write_timeout = Some(Duration::from_secs(15));
        // Who we are, for the audit log and for `managedFields`.
        let agent = format!(
            "pod-runner/{} ({}/{})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let Ok(v) = http::HeaderValue::from_str(&agent) {
            cfg.headers.push((http::header::USER_AGENT, v));
        }
        let client = Client::try_from(cfg).map_err(ApiError::Kube)?;
        Ok(KubeApi { client })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The pod, or `None` if the API has none of that name. A node's own
    /// identity gets 403 instead for every pod not bound to it, missing
    /// ones included (the Node authorizer knows no relation to them).
    pub async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, ApiError> {
        let pods = self.pods(ns);
        Ok(retry(|| pods.get_opt(name)).await?)
    }

    /// A strategic-merge patch of the status subresource.
    pub async fn patch_status(&self, ns: &str, name: &str, patch: &Value) -> Result<(), ApiError> {
        let pods = self.pods(ns);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Strategic(patch);
        retry(|| pods.patch_status(name, &params, &patch))
            .await
            .map(|_| ())
            .map_err(ApiError::from)
    }

    /// The kubelet's last word on a pod being deleted: remove it now, but
    /// only the incarnation we ran (UID precondition). Gone already is fine.
    pub async fn finish_delete(&self, ns: &str, name: &str, uid: &str) -> Result<(), ApiError> {
        let pods = self.pods(ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match retry(|| pods.delete(name, &params)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The node's InternalIP from its Node object, if registered.
    pub async fn node_ip(&self, node: &str) -> Result<Option<String>, ApiError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = retry(|| nodes.get_opt(node)).await?;
        Ok(n.and_then(|n| n.status)
            .and_then(|s| s.addresses)
            .into_iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address))
    }
}
