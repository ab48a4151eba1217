//! Containers and their tasks: the records with their labels, OCI spec and
//! snapshot, and the processes the runc shim runs for them.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status;
use prost_types::Any;

use crate::unpack::SNAPSHOTTER;
use crate::{Containerd, CtrdError, rpc};

/// containerd stores a runtime spec as JSON under this type URL.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNTIME: &str = "io.containerd.runc.v2";

/// What a new container is made of.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    /// The chain ID its writable snapshot sits on.
    pub parent_snapshot: &'a str,
    pub labels: HashMap<String, String>,
    /// The OCI runtime spec as JSON.
    pub spec: Vec<u8>,
}

/// A task's state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped { exit: u32 },
    Other,
}

/// A task as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    pub state: TaskState,
    pub pid: u32,
    /// When it exited; `None` while it runs (containerd sends no time
    /// or the zero time then).
    pub exited_at: Option<std::time::SystemTime>,
}

/// A container of ours, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub created_at: Option<std::time::SystemTime>,
}

fn create_lease(id: &str) -> String {
    format!("pod-runner-create-{id}")
}

pub(crate) fn not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}

pub(crate) fn to_time(t: &prost_types::Timestamp) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos))
}

impl Containerd {
    /// The container record and its writable snapshot (key = id), under a
    /// lease so the snapshot cannot be collected before the record holds it.
    pub async fn create_container(&self, c: &NewContainer<'_>) -> Result<(), CtrdError> {
        // A create killed before it dropped the lease left it: reuse it.
        let lease = self.lease_reusing(&create_lease(c.id)).await?;
        let r = self.create_under(&lease, c).await;
        let _ = self.drop_lease(&lease).await;
        r
    }

    /// Removes the lease a killed create left; none is fine.
    pub async fn drop_create_lease(&self, id: &str) -> Result<(), CtrdError> {
        match self.drop_lease(&create_lease(id)).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn create_under(&self, lease: &str, c: &NewContainer<'_>) -> Result<(), CtrdError> {
        match self
            .client
            .snapshots()
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: c.id.to_string(),
                    parent: c.parent_snapshot.to_string(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(rpc("snapshots.prepare")(s)),
        }
        let container = Container {
            id: c.id.to_string(),
            labels: c.labels.clone(),
            image: c.image.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.into(),
                value: c.spec.clone(),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        let created = self
            .client
            .containers()
            .create(self.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await;
        if let Err(s) = created {
            self.remove_snapshot(c.id).await;
            return Err(rpc("containers.create")(s));
        }
        Ok(())
    }

    /// Creates the task (runc create: namespaces made, process waiting)
    /// with stdout and stderr going to `log_uri`; returns its PID.
    pub async fn create_task(&self, id: &str, log_uri: &str) -> Result<u32, CtrdError> {
        let mounts: Vec<Mount> = self
            .client
            .snapshots()
            .mounts(self.req(
                MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                },
                None,
            ))
            .await
            .map_err(rpc("snapshots.mounts"))?
            .into_inner()
            .mounts;
        let resp = self
            .client
            .tasks()
            .create(self.req(
                CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    stdin: String::new(),
                    stdout: log_uri.to_string(),
                    stderr: log_uri.to_string(),
                    terminal: false,
                    checkpoint: None,
                    options: None,
                    runtime_path: String::new(),
                },
                None,
            ))
            .await
            .map_err(rpc("tasks.create"))?;
        Ok(resp.into_inner().pid)
    }

    pub async fn start_task(&self, id: &str) -> Result<(), CtrdError> {
        self.client
            .tasks()
            .start(self.req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(rpc("tasks.start"))?;
        Ok(())
    }

    /// The task's state and PID; `None` when it has no task.
    pub async fn task(&self, id: &str) -> Result<Option<(TaskState, u32)>, CtrdError> {
        Ok(self.task_info(id).await?.map(|t| (t.state, t.pid)))
    }

    /// The task's state, PID and (once stopped) exit time; `None` when it
    /// has no task.
    pub async fn task_info(&self, id: &str) -> Result<Option<TaskInfo>, CtrdError> {
        match self
            .client
            .tasks()
            .get(self.req(
                GetRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                let state = match Status::try_from(p.status) {
                    Ok(Status::Created) => TaskState::Created,
                    Ok(Status::Running) => TaskState::Running,
                    Ok(Status::Stopped) => TaskState::Stopped {
                        exit: p.exit_status,
                    },
                    _ => TaskState::Other,
                };
                TaskInfo {
                    state,
                    pid: p.pid,
                    exited_at: p.exited_at.as_ref().and_then(to_time),
                }
            })),
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(rpc("tasks.get")(s)),
        }
    }

    /// Sends `signal` to the task's processes; a missing task is fine.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), CtrdError> {
        match self
            .client
            .tasks()
            .kill(self.req(
                KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal,
                    all: true,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if not_found(&s) || s.code() == tonic::Code::FailedPrecondition => Ok(()),
            Err(s) => Err(rpc("tasks.kill")(s)),
        }
    }

    /// Waits up to `limit` for the task to exit; `Some(exit status)` if it
    /// did (or had no task), `None` on time-out.
    pub async fn wait(&self, id: &str, limit: Duration) -> Result<Option<u32>, CtrdError> {
        let mut client = self.client.tasks();
        let call = client.wait(self.req(
            WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
            None,
        ));
        match tokio::time::timeout(limit, call).await {
            Err(_) => Ok(None),
            Ok(Ok(r)) => Ok(Some(r.into_inner().exit_status)),
            Ok(Err(s)) if not_found(&s) => Ok(Some(0)),
            Ok(Err(s)) => Err(rpc("tasks.wait")(s)),
        }
    }

    /// Deletes the task (it must have exited); a missing one is fine.
    /// Returns its exit status when there was one.
    pub async fn delete_task(&self, id: &str) -> Result<Option<u32>, CtrdError> {
        match self
            .client
            .tasks()
            .delete(self.req(
                DeleteTaskRequest {
                    container_id: id.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().exit_status)),
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(rpc("tasks.delete")(s)),
        }
    }

    /// Deletes the container record and its snapshot; missing is fine.
    pub async fn delete_container(&self, id: &str) -> Result<(), CtrdError> {
        match self
            .client
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }, None))
            .await
        {
            Ok(_) => {}
            Err(s) if not_found(&s) => {}
            Err(s) => return Err(rpc("containers.delete")(s)),
        }
        self.remove_snapshot(id).await;
        Ok(())
    }

    /// Containers whose labels match every `key==value` of `labels`.
    pub async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<Listed>, CtrdError> {
        let filter = labels
            .iter()
            .map(|(k, v)| format!("labels.\"{k}\"=={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let resp = self
            .client
            .containers()
            .list(self.req(
                ListContainersRequest {
                    filters: if filter.is_empty() {
                        vec![]
                    } else {
                        vec![filter]
                    },
                },
                None,
            ))
            .await
            .map_err(rpc("containers.list"))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(|c| Listed {
                created_at: c.created_at.as_ref().and_then(to_time),
                id: c.id,
                image: c.image,
                labels: c.labels,
            })
            .collect())
    }
}
