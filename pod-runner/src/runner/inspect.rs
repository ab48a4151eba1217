//! `list`, `status` and the log paths: what runs here, from the records
//! and containerd's view of their tasks.

use std::path::PathBuf;

use serde::Serialize;

use crate::state::PodRecord;
use containerd_api::TaskState;

use super::{RunError, Runner};

#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    pub name: String,
    pub id: String,
    pub image: String,
    /// created, running, exited, missing, unknown
    pub state: String,
    pub pid: Option<u32>,
    #[serde(rename = "exitCode", skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Running when the sandbox and every container run; else Degraded.
    pub phase: String,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    pub sandbox: String,
    pub netns: PathBuf,
    pub containers: Vec<ContainerView>,
}

fn state_name(t: Option<(TaskState, u32)>) -> (String, Option<u32>, Option<u32>) {
    match t {
        None => ("missing".into(), None, None),
        Some((TaskState::Created, pid)) => ("created".into(), Some(pid), None),
        Some((TaskState::Running, pid)) => ("running".into(), Some(pid), None),
        Some((TaskState::Stopped { exit }, _)) => ("exited".into(), None, Some(exit)),
        Some((TaskState::Other, pid)) => ("unknown".into(), Some(pid), None),
    }
}

impl Runner {
    async fn view(&self, r: &PodRecord) -> Result<PodView, RunError> {
        let (sandbox, _, _) = state_name(self.ctrd.task(&r.sandbox_id).await?);
        let mut containers = Vec::new();
        for c in &r.containers {
            let (state, pid, exit_code) = state_name(self.ctrd.task(&c.id).await?);
            containers.push(ContainerView {
                name: c.name.clone(),
                id: c.id.clone(),
                image: c.image.clone(),
                state,
                pid,
                exit_code,
                log: r.log_dir.join(&c.name).join(format!("{}.log", c.attempt)),
            });
        }
        let running = sandbox == "running" && containers.iter().all(|c| c.state == "running");
        Ok(PodView {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
            phase: if running { "Running" } else { "Degraded" }.into(),
            pod_ips: r.pod_ips.clone(),
            sandbox_id: r.sandbox_id.clone(),
            sandbox,
            netns: r.netns.clone(),
            containers,
        })
    }

    /// Every pod this node runs (or half-made ones a crash left).
    pub async fn list(&self) -> Result<Vec<PodView>, RunError> {
        let mut out = Vec::new();
        for r in self.store.all()? {
            out.push(self.view(&r).await?);
        }
        Ok(out)
    }

    pub async fn status(&self, ns: &str, name: &str) -> Result<Option<PodView>, RunError> {
        match self.store.load(ns, name)? {
            Some(r) => Ok(Some(self.view(&r).await?)),
            None => Ok(None),
        }
    }

    /// The log file of `container` (the only one when `None`) and its ID.
    pub fn log_path(
        &self,
        ns: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<(PathBuf, String), RunError> {
        let r = self.store.load(ns, name)?.ok_or_else(|| {
            RunError::Failed(format!("pod {ns}/{name} does not run on this node"))
        })?;
        let c = match container {
            Some(want) => r.containers.iter().find(|c| c.name == want),
            None if r.containers.len() == 1 => r.containers.first(),
            None => {
                return Err(RunError::Failed(format!(
                    "pod {ns}/{name} has several containers; name one with -c ({})",
                    r.containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        .ok_or_else(|| {
            RunError::Failed(format!(
                "pod {ns}/{name} has no container {:?}",
                container.unwrap_or("")
            ))
        })?;
        // The current instance's log; earlier ones stay beside it.
        Ok((
            r.log_dir.join(&c.name).join(format!("{}.log", c.attempt)),
            c.id.clone(),
        ))
    }
}
