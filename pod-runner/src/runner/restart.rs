//! One container of a running pod: stopped (a liveness failure, a hook
//! that failed) or replaced by its next instance, as the kubelet restarts
//! containers inside a sandbox that stays.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;

use crate::pod::PodPlan;
use crate::state::{Exit, PodRecord, container_id};
use crate::status::{ContainerObs, State};

use super::{RunError, Runner};

impl Runner {
    /// Stops one instance: SIGTERM, SIGKILL after `grace`; its exit status,
    /// `None` when it had no task. The task stays (for its exit status):
    /// [`Runner::restart_container`] or the teardown removes it.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<Option<u32>, RunError> {
        if self.ctrd.task(id).await?.is_none() {
            return Ok(None);
        }
        self.terminate(id, grace).await
    }

    /// SIGTERM to the task, SIGKILL after `grace`; its exit status, `None`
    /// when it was not reaped in time after the SIGKILL either.
    pub(crate) async fn terminate(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<Option<u32>, RunError> {
        self.ctrd.kill(id, super::teardown::SIGTERM).await?;
        if let Some(code) = self.ctrd.wait(id, grace).await? {
            return Ok(Some(code));
        }
        self.ctrd.kill(id, super::teardown::SIGKILL).await?;
        Ok(self.ctrd.wait(id, super::teardown::KILL_WAIT).await?)
    }

    /// Replaces container `i`'s ended instance with the next: the old
    /// task and container go (its log file stays, as `kubectl logs
    /// --previous` reads it), `exit` becomes its `lastState`, and the new
    /// instance starts. The record is saved before the new one exists, so
    /// a crash in between leaves a record naming what is there.
    pub async fn restart_container(
        &self,
        pod: &Pod,
        plan: &PodPlan,
        record: &mut PodRecord,
        i: usize,
        exit: Exit,
    ) -> Result<ContainerObs, RunError> {
        let Some(app) = record.containers.get(i).cloned() else {
            return Err(RunError::Failed(format!(
                "{}: no container {i}",
                plan.key()
            )));
        };
        let Some(c) = plan.containers.get(i) else {
            return Err(RunError::Failed(format!(
                "{}: no container {i}",
                plan.key()
            )));
        };
        let info = self.ensure_image(&c.image, &c.pull_policy).await?;
        self.ctrd.delete_task(&app.id).await?;
        self.ctrd.delete_container(&app.id).await?;
        let attempt = app.attempt + 1;
        if let Some(a) = record.containers.get_mut(i) {
            a.attempt = attempt;
            a.id = container_id(&record.uid, &app.name, attempt);
            a.last_exit = Some(exit);
            a.started_at = None;
        }
        self.store.save(record)?;
        let obs = self.start_container(pod, plan, record, i, &info).await?;
        if let (State::Running { started }, Some(a)) = (&obs.state, record.containers.get_mut(i)) {
            a.started_at = Some(*started);
        }
        self.store.save(record)?;
        Ok(obs)
    }
}

/// The reason the kubelet gives an ended container.
pub fn exit_reason(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// `exit` of the instance `id` that started at `started`.
pub fn exit_of(
    id: &str,
    code: u32,
    oom: bool,
    started: Option<SystemTime>,
    finished: SystemTime,
) -> Exit {
    let code = code as i32;
    Exit {
        code,
        reason: exit_reason(code, oom).into(),
        started_at: started,
        finished_at: finished,
        id: id.to_string(),
    }
}
