//! `delete`, and the rollback of a failed create: stop the containers
//! (SIGTERM, SIGKILL after the grace period), CNI DEL with the cached
//! result, remove tasks, containers, snapshots, the netns and the pod's
//! files. Every step is tried; what failed is reported and the record is
//! kept, so the next delete picks up where this one stopped.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::cni::Attachment;
use crate::state::PodRecord;
use crate::status::{self, ContainerObs, PodObs, State};
use netkit::pinned as netns;

use super::{RunError, Runner, warn};

pub(crate) const SIGTERM: u32 = 15;
pub(crate) const SIGKILL: u32 = 9;
/// How long a SIGKILLed task may take to be reaped.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a shim may take to finish a create its client abandoned.
const SHIM_WAIT: Duration = Duration::from_secs(10);

/// What `delete` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Torn down; the exit codes of the app containers.
    Stopped { exits: Vec<(String, u32)> },
    /// Nothing of that pod ran here.
    NothingHere,
}

impl Runner {
    /// Stops one task: SIGTERM, SIGKILL after `grace`. Its exit status,
    /// or `None` when it had no task.
    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<u32>, RunError> {
        if self.ctrd.task(id).await?.is_none() {
            return Ok(None);
        }
        self.terminate(id, grace).await?;
        Ok(self.ctrd.delete_task(id).await?)
    }

    /// Removes the pod's cgroups once no shim of its containers runs: a
    /// create killed in a task create leaves that create going on in the
    /// shim, and runc makes the cgroups there, maybe after this teardown
    /// began (containerd's cleanup removes the container's own, not its
    /// parent). Empty directories holding nothing: a warning, not a
    /// failed delete.
    async fn remove_cgroups(&self, r: &PodRecord) {
        let ids: Vec<&str> = r
            .containers
            .iter()
            .map(|c| c.id.as_str())
            .chain(std::iter::once(r.sandbox_id.as_str()))
            .collect();
        let left = self.ctrd.wait_shims_gone(&ids, SHIM_WAIT).await;
        let pod = format!("{}/{}", r.namespace, r.name);
        if !left.killed.is_empty() {
            warn(&format!(
                "pod {pod}: killed the shims containerd abandoned of {}",
                left.killed.join(", ")
            ));
        }
        if !left.running.is_empty() {
            warn(&format!(
                "pod {pod}: the shims of {} still run after {SHIM_WAIT:?}",
                left.running.join(", ")
            ));
        }
        let uid = r.uid.clone();
        let removed = tokio::task::spawn_blocking(move || crate::cgroup::remove_pod(&uid))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = removed {
            warn(&e);
        }
    }

    /// Tears down everything `r` names; exit codes of the app containers.
    pub(crate) async fn teardown(
        &self,
        r: &PodRecord,
        grace_seconds: i64,
    ) -> Result<Vec<(String, u32)>, RunError> {
        let grace = Duration::from_secs(grace_seconds.max(0) as u64);
        let mut errors: Vec<String> = Vec::new();
        let mut exits = Vec::new();
        // App containers together, as the kubelet does: one grace period.
        let stops =
            futures::future::join_all(r.containers.iter().map(|c| self.stop(&c.id, grace))).await;
        for (c, res) in r.containers.iter().zip(stops) {
            match res {
                Ok(Some(code)) => exits.push((c.name.clone(), code)),
                Ok(None) => {}
                Err(e) => errors.push(format!("stopping {}: {e}", c.name)),
            }
        }
        // pause exits 0 on SIGTERM at once.
        if let Err(e) = self.stop(&r.sandbox_id, Duration::from_secs(2)).await {
            errors.push(format!("stopping the sandbox: {e}"));
        }
        for id in r
            .containers
            .iter()
            .map(|c| &c.id)
            .chain(std::iter::once(&r.sandbox_id))
        {
            if let Err(e) = self.ctrd.delete_container(id).await {
                errors.push(format!("removing container {id}: {e}"));
            }
            // A create killed half-way leaves its lease (it would expire).
            if let Err(e) = self.ctrd.drop_create_lease(id).await {
                errors.push(format!("removing the lease of {id}: {e}"));
            }
        }
        // A create killed between making the file and mounting the
        // namespace on it leaves an empty file: no netns for CNI then.
        let ns_path = if netns::is_mounted(&r.netns) {
            r.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let att = Attachment {
            container_id: &r.sandbox_id,
            netns: &ns_path,
            ifname: "eth0",
            pod_namespace: &r.namespace,
            pod_name: &r.name,
            pod_uid: &r.uid,
        };
        let cached = self.cni.has_cache(&att);
        match super::create::blocking(|| self.cni.del(&att)) {
            Ok(()) => {}
            // No ADD completed and the config does not load: nothing can
            // have been set up with it (a failed ADD undoes itself).
            Err(e @ crate::cni::CniRunError::Config(_)) if !cached => {
                warn(&format!("CNI DEL skipped: {e}"))
            }
            // No ADD completed and a plugin hangs in DEL as well (as it
            // hung in the ADD that failed): every other plugin's DEL ran,
            // and waiting again cannot undo what the hung one holds.
            Err(e) if !cached && e.is_timeout() => warn(&format!("CNI DEL incomplete: {e}")),
            Err(e) => errors.push(format!("CNI DEL: {e}")),
        }
        if let Err(e) = netns::remove(&r.netns) {
            errors.push(e.to_string());
        }
        match std::fs::remove_dir_all(&r.pod_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("removing {}: {e}", r.pod_dir.display()))
            }
            _ => {}
        }
        // After a failed step a task may still run, and its shim with it:
        // the next teardown removes the cgroups.
        if !errors.is_empty() {
            return Err(RunError::Failed(errors.join("; ")));
        }
        // Last, so the shims' own exits overlap the steps above.
        self.remove_cgroups(r).await;
        self.store.remove(&r.namespace, &r.name)?;
        Ok(exits)
    }

    /// Deletes the pod's containers and network from this node, then tells
    /// the API: a pod being deleted is removed for good, any other keeps
    /// its object with the containers reported terminated.
    pub async fn delete(
        &self,
        ns: &str,
        name: &str,
        grace_override: Option<i64>,
    ) -> Result<Deleted, RunError> {
        let lock = self.lock(ns, name).await?;
        let record = self.store.load(ns, name)?;
        // The API may be down: the local teardown happens anyway.
        let pod = match async { self.api()?.pod(ns, name).await.map_err(RunError::from) }.await {
            Ok(p) => p,
            // A node's own identity may not read a pod gone from the API
            // (or never bound here): nothing to report, and with nothing
            // here nothing to say either.
            Err(RunError::Api(e)) if e.forbidden().is_some() => {
                if record.is_some() {
                    warn(&format!(
                        "pod {ns}/{name} is not visible to this identity in the API (deleted there, or not bound to \
                         this node); removing it from this node without reporting to the API"
                    ));
                }
                None
            }
            Err(e) => {
                warn(&format!("reading pod {ns}/{name}: {e}"));
                None
            }
        };
        let api_uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        let deleting = pod
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        let Some(record) = record else {
            // Nothing here; a pod being deleted that ran here once (or
            // never started) is still finished off, as the kubelet does.
            if deleting
                && let (Some(p), Some(uid)) = (&pod, &api_uid)
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node)
            {
                self.api()?.finish_delete(ns, name, uid).await?;
            }
            return Ok(Deleted::NothingHere);
        };
        let grace = grace_override
            .or_else(|| {
                pod.as_ref()
                    .and_then(|p| p.metadata.deletion_grace_period_seconds)
            })
            .unwrap_or(record.grace_seconds);
        let exits = self.teardown(&record, grace).await?;
        // Report only on the incarnation we ran, still under the lock: a
        // daemon's worker waiting on it then finds the pod finished in the
        // API, not a pod to start again.
        if api_uid.as_deref() == Some(record.uid.as_str())
            && let Some(pod) = &pod
        {
            if deleting {
                self.api()?.finish_delete(ns, name, &record.uid).await?;
            } else {
                let patch = terminated_patch(pod, &record, &exits);
                self.api()?.patch_status(ns, name, &patch).await?;
            }
        }
        lock.release_and_remove();
        Ok(Deleted::Stopped { exits })
    }
}

fn terminated_patch(
    pod: &k8s_openapi::api::core::v1::Pod,
    record: &PodRecord,
    exits: &[(String, u32)],
) -> Value {
    let now = SystemTime::now();
    let old_status = pod.status.as_ref();
    let start_time = old_status
        .and_then(|s| s.start_time.as_ref())
        .map(|t| SystemTime::from(t.0))
        .unwrap_or(now);
    let containers = record
        .containers
        .iter()
        .map(|c| {
            let prev = old_status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|l| l.iter().find(|s| s.name == c.name));
            let exit = exits
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, e)| *e as i32)
                .unwrap_or(137);
            ContainerObs {
                ready: false,
                started: false,
                restart_count: c.attempt,
                last_state: None,
                name: c.name.clone(),
                id: c.id.clone(),
                image: prev
                    .map(|p| p.image.clone())
                    .unwrap_or_else(|| c.image.clone()),
                image_id: prev.map(|p| p.image_id.clone()).unwrap_or_default(),
                state: State::Terminated {
                    exit_code: exit,
                    reason: if exit == 0 { "Completed" } else { "Error" }.into(),
                    started: prev
                        .and_then(|p| p.state.as_ref())
                        .and_then(|s| s.running.as_ref())
                        .and_then(|r| r.started_at.as_ref())
                        .map(|t| SystemTime::from(t.0)),
                    finished: now,
                },
            }
        })
        .collect();
    let obs = PodObs {
        sandbox_ready: false,
        pod_ips: record.pod_ips.clone(),
        host_ip: record.host_ip.clone(),
        start_time,
        containers,
        terminal: true,
        qos: status::qos_class(pod),
        restart_policy: super::restart_policy(pod),
    };
    status::patch(&obs, &status::current(pod), now)
}
