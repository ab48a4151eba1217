//! The API clients: one for requests, one for watches, timed apart. A
//! request answers within seconds, so a read timeout bounds a hung one;
//! an idle watch sends nothing until the server ends it after its
//! `timeoutSeconds`, so a read timeout shorter than that would break
//! every idle watch (and one longer would add nothing: kube-runtime
//! already takes a watch as dead after its timeout and a margin).

use std::path::Path;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A plain request (get, patch, list, review) gets this long between
/// reads of its answer.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(transparent)]
    Infer(#[from] kube::config::InferConfigError),
    #[error(transparent)]
    Config(#[from] kube::config::KubeconfigError),
    #[error(transparent)]
    Client(#[from] kube::Error),
}

pub struct Clients {
    pub requests: Client,
    pub watches: Client,
}

/// `kubeconfig`, else the environment as kubectl reads it.
async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    Ok(match kubeconfig {
        Some(p) => {
            let k = Kubeconfig::read_from(p).map_err(|source| ClientError::Kubeconfig {
                path: p.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(k, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

pub async fn clients(kubeconfig: Option<&Path>) -> Result<Clients, ClientError> {
    let mut kc = config(kubeconfig).await?;
    kc.connect_timeout = Some(CONNECT_TIMEOUT);
    crate::ident::identify(&mut kc);
    let mut watch = kc.clone();
    watch.read_timeout = None;
    kc.read_timeout = Some(REQUEST_READ_TIMEOUT);
    Ok(Clients {
        requests: Client::try_from(kc)?,
        watches: Client::try_from(watch)?,
    })
}
