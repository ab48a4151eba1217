//! The kubelet's job for one pod, put together from the parts: the API,
//! containerd, CNI, the pinned netns and the local record.

mod create;
mod images;
mod inspect;
mod mounts;
mod restart;
mod teardown;

use std::path::PathBuf;

use crate::api::{ApiError, KubeApi};
use crate::cni::{self, CniRunError};
use crate::pod::PodError;
use crate::spec::SpecError;
use crate::state::{StateError, Store};
use containerd_api::{Containerd, CtrdError};
use netkit::pinned::PinError;

pub use create::{Created, Started, image_id, restart_policy};
pub use inspect::{ContainerView, PodView};
pub use restart::{exit_of, exit_reason};
pub use teardown::Deleted;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("pod {0} not found in the API")]
    NotFound(String),
    #[error("pod {0} is being deleted; not starting it")]
    Deleting(String),
    /// The API refused this identity the pod: with a node's own identity,
    /// the Node authorizer shows a node only the pods bound to it.
    #[error(
        "pod {pod}: the API server does not let this identity read it ({message}); a node's own identity \
         may read only the pods bound to that node: this one is bound to another node, not bound yet, or does not exist"
    )]
    NotVisible { pod: String, message: String },
    /// Succeeded and Failed are final: the kubelet never starts such a
    /// pod again, and its controller has counted it gone (a ReplicaSet
    /// made a replacement), though the API would take a Running status.
    #[error(
        "pod {pod} has finished (phase {phase}); a finished pod is not started again: delete it and create a new one"
    )]
    Finished { pod: String, phase: String },
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Containerd(#[from] CtrdError),
    #[error(transparent)]
    Cni(#[from] CniRunError),
    #[error(transparent)]
    Netns(#[from] PinError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("image {image}: {msg}")]
    Image { image: String, msg: String },
    #[error("volume {volume}: {msg}")]
    Volume { volume: String, msg: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("{error}; everything it made was removed again")]
    RolledBack { error: Box<RunError> },
    #[error("{error}; rolling back also failed: {rollback}")]
    RollbackFailed {
        error: Box<RunError>,
        rollback: String,
    },
}

impl RunError {
    /// The error under a rollback's report.
    pub fn root(&self) -> &RunError {
        match self {
            RunError::RolledBack { error } | RunError::RollbackFailed { error, .. } => error.root(),
            e => e,
        }
    }

    /// The sandbox (netns, CNI) could not be made.
    pub fn is_sandbox(&self) -> bool {
        matches!(self, RunError::Cni(_) | RunError::Netns(_))
    }
}

/// Where things go on this node.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Pod records, volumes and hosts files.
    pub state_dir: PathBuf,
    /// `/var/log/pods`.
    pub log_dir: PathBuf,
    /// The binary the shim runs as the container logger (ourselves).
    pub logger: PathBuf,
}

pub struct Runner {
    /// None when no kubeconfig could be loaded (list, status, logs and
    /// image commands work without one).
    pub api: Option<KubeApi>,
    pub api_error: String,
    pub ctrd: Containerd,
    pub cni: cni::Runtime,
    pub paths: Paths,
    pub store: Store,
    pub node: String,
    /// `--node-ip`; else the Node's InternalIP from the API.
    pub node_ip: Option<String>,
    pub pause_image: String,
}

impl Runner {
    /// The pod's lock, taken on a blocking thread (see [`Store::lock`]).
    pub(crate) async fn lock(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<crate::state::PodLock, RunError> {
        let store = Store::new(&self.paths.state_dir);
        let (ns, name) = (ns.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || store.lock(&ns, &name))
            .await
            .map_err(|e| RunError::Failed(format!("taking the pod's lock: {e}")))?
            .map_err(RunError::from)
    }

    pub fn api(&self) -> Result<&KubeApi, RunError> {
        self.api
            .as_ref()
            .ok_or_else(|| RunError::Failed(format!("no API server: {}", self.api_error)))
    }
}

/// A warning the user must see (unsupported fields, a fallback taken).
pub fn warn(msg: &str) {
    tracing::warn!("{msg}");
}
