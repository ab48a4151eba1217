//! containerd over its gRPC API (containerd-client), the client pod-runner
//! and node-sync share: version, images (import from OCI archives, pull,
//! unpack), containers, tasks and events. Every request carries the
//! namespace, and work that creates content or snapshots runs under a
//! lease so containerd's garbage collector cannot take it half-way.

mod container;
mod events;
mod exec;
mod image;
mod pull;
mod shim;
mod unpack;

use std::path::Path;

use containerd_client::Client;
use containerd_client::services::v1::{CreateRequest, DeleteRequest as LeaseDelete};
use tonic::Request;
use tonic::metadata::MetadataValue;

pub use container::{Listed, NewContainer, TaskInfo, TaskState};
pub use events::{Envelope, Event};
pub use exec::ExecOutcome;
pub use image::ImageRef;
pub use pull::normalize;
pub use shim::{ShimsLeft, live_shims};
pub use unpack::{ImageInfo, chain_ids, hex};

#[derive(Debug, thiserror::Error)]
pub enum CtrdError {
    #[error("connecting to containerd at {path}: {source}")]
    Connect {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("containerd {call}: {status}")]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("image archive {path}: {msg}")]
    Archive { path: String, msg: String },
    #[error("image {name}: {msg}")]
    Image { name: String, msg: String },
    #[error("containerd event {topic}: {msg}")]
    Event { topic: String, msg: String },
    #[error("exec {exec_id} in {container_id}: {msg}")]
    Exec {
        container_id: String,
        exec_id: String,
        msg: String,
    },
}

impl CtrdError {
    /// containerd answered NotFound.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CtrdError::Rpc { status, .. } if status.code() == tonic::Code::NotFound)
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, CtrdError::Rpc { status, .. } if status.code() == tonic::Code::AlreadyExists)
    }
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> CtrdError {
    move |status| CtrdError::Rpc { call, status }
}

/// A connection to one containerd, in one namespace.
pub struct Containerd {
    client: Client,
    namespace: String,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, CtrdError> {
        let client = Client::from_path(socket)
            .await
            .map_err(|source| CtrdError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        Ok(Containerd {
            client,
            namespace: namespace.to_string(),
        })
    }

    /// `msg` as a request in our namespace (and under `lease`, if any).
    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        if let Some(l) = lease.and_then(|l| MetadataValue::try_from(l).ok()) {
            r.metadata_mut().insert("containerd-lease", l);
        }
        r
    }

    pub async fn version(&self) -> Result<String, CtrdError> {
        let v = self
            .client
            .version()
            .version(Request::new(()))
            .await
            .map_err(rpc("version"))?;
        Ok(v.into_inner().version)
    }

    /// A lease that expires by itself if we die before deleting it.
    pub(crate) async fn lease(&self, id: &str) -> Result<String, CtrdError> {
        let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let labels = [(
            "containerd.io/gc.expire".to_string(),
            humantime::format_rfc3339_seconds(expire).to_string(),
        )]
        .into();
        let resp = self
            .client
            .leases()
            .create(self.req(
                CreateRequest {
                    id: id.to_string(),
                    labels,
                },
                None,
            ))
            .await
            .map_err(rpc("leases.create"))?;
        Ok(resp
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_else(|| id.to_string()))
    }

    /// A lease with a fixed ID; one a killed run left is taken over.
    pub(crate) async fn lease_reusing(&self, id: &str) -> Result<String, CtrdError> {
        match self.lease(id).await {
            Err(e) if e.is_already_exists() => Ok(id.to_string()),
            other => other,
        }
    }

    pub(crate) async fn drop_lease(&self, id: &str) -> Result<(), CtrdError> {
        self.client
            .leases()
            .delete(self.req(
                LeaseDelete {
                    id: id.to_string(),
                    sync: false,
                },
                None,
            ))
            .await
            .map_err(rpc("leases.delete"))?;
        Ok(())
    }
}
