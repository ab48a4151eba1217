//! `create`: sandbox netns, CNI, pause, app containers, status; any
//! failure removes what was made.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use oci_spec::runtime::LinuxNamespaceType as Ns;

use crate::cni::Attachment;
use crate::logs;
use crate::pod::{self, Fields, PodPlan};
use crate::spec::{self, ContainerSpec};
use crate::state::{AppContainer, Exit, PodRecord, container_id, derive_id, netns_name};
use crate::status::{self, ContainerObs, PodObs, State};
use containerd_api::{ImageInfo, NewContainer, TaskState};
use netkit::pinned as netns;

use super::mounts::{container_mounts, prepare_volumes, write_pod_files};
use super::{RunError, Runner, warn};

/// A pod brought up by [`Runner::start_pod`].
pub struct Started {
    pub record: PodRecord,
    pub containers: Vec<ContainerObs>,
    pub start_time: SystemTime,
    /// Per container: whether its image was pulled (else it was present).
    pub pulled: Vec<bool>,
}

/// The pod's restartPolicy (the API's default, Always, when unset).
pub fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// Runs blocking work (child processes) from async code without holding
/// up the runtime's other tasks; inline on a current-thread runtime.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What `create` did.
#[derive(Debug)]
pub enum Created {
    Started { pod_ips: Vec<String> },
    AlreadyRunning { pod_ips: Vec<String> },
}

/// The addresses of a CNI result.
pub(crate) fn result_ips(result: &cni_protocol::CniResult) -> Vec<String> {
    result
        .ips
        .iter()
        .map(|c| c.address.ip().to_string())
        .collect()
}

fn kubelet_labels(plan: &PodPlan, kind: &str, container: &str) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert("io.kubernetes.pod.name".into(), plan.name.clone());
    l.insert("io.kubernetes.pod.namespace".into(), plan.namespace.clone());
    l.insert("io.kubernetes.pod.uid".into(), plan.uid.clone());
    l.insert("io.cri-containerd.kind".into(), kind.into());
    l.insert("io.kubernetes.container.name".into(), container.into());
    l
}

/// The CRI plugin's spec annotations. `sandbox-id` also makes the runc
/// shim serve the whole pod from one process instead of one per container.
fn cri_annotations(
    plan: &PodPlan,
    sandbox_id: &str,
    kind: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut a = vec![
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.sandbox-id", sandbox_id),
        ("io.kubernetes.cri.sandbox-name", &plan.name),
        ("io.kubernetes.cri.sandbox-namespace", &plan.namespace),
        ("io.kubernetes.cri.sandbox-uid", &plan.uid),
    ];
    a.extend_from_slice(extra);
    a.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn image_id(info: &ImageInfo) -> String {
    let repo = match info.name.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => &info.name,
    };
    format!("{repo}@{}", info.digest)
}

impl Runner {
    pub(crate) fn record_for(&self, plan: &PodPlan) -> PodRecord {
        self.record_after(plan, None)
    }

    /// The record of a pod's next sandbox after `old` (its sandbox died):
    /// every ID is new, and each container counts on from its instance
    /// there, that instance's end (`exits`, by name) its `lastState`.
    pub fn record_after(&self, plan: &PodPlan, old: Option<(&PodRecord, &[Exit])>) -> PodRecord {
        let sandbox_attempt = old.map_or(0, |(r, _)| r.sandbox_attempt + 1);
        let sandbox_id = if sandbox_attempt == 0 {
            derive_id(&["sandbox", &plan.uid])
        } else {
            derive_id(&["sandbox", &plan.uid, &sandbox_attempt.to_string()])
        };
        PodRecord {
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            uid: plan.uid.clone(),
            netns: PathBuf::from(netns::DIR).join(netns_name(&sandbox_id)),
            sandbox_id,
            pod_dir: self.paths.state_dir.join("pods").join(plan.dir_name()),
            log_dir: self.paths.log_dir.join(plan.dir_name()),
            containers: plan
                .containers
                .iter()
                .map(|c| {
                    let before =
                        old.and_then(|(r, _)| r.containers.iter().find(|o| o.name == c.name));
                    let attempt = before.map_or(0, |b| b.attempt + 1);
                    AppContainer {
                        name: c.name.clone(),
                        id: container_id(&plan.uid, &c.name, attempt),
                        image: c.image.clone(),
                        attempt,
                        started_at: None,
                        last_exit: old.and_then(|(_, exits)| {
                            exits
                                .iter()
                                .find(|e| before.is_some_and(|b| b.id == e.id))
                                .cloned()
                        }),
                    }
                })
                .collect(),
            grace_seconds: plan.grace_seconds,
            pod_ips: Vec::new(),
            host_ip: None,
            reported: Some(false),
            sandbox_attempt,
        }
    }

    /// Whether every task of the record runs.
    async fn all_running(&self, r: &PodRecord) -> Result<bool, RunError> {
        for id in std::iter::once(&r.sandbox_id).chain(r.containers.iter().map(|c| &c.id)) {
            if !matches!(self.ctrd.task(id).await?, Some((TaskState::Running, _))) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) async fn host_ip(&self) -> Option<String> {
        if let Some(ip) = &self.node_ip {
            return Some(ip.clone());
        }
        let api = self.api().ok()?;
        match api.node_ip(&self.node).await {
            Ok(ip) => ip,
            Err(e) => {
                warn(&format!("reading node {}: {e}; hostIP left out", self.node));
                None
            }
        }
    }

    /// Runs the pod `ns/name` bound to this node.
    pub async fn create(&self, ns: &str, name: &str) -> Result<Created, RunError> {
        let pod = match self.api()?.pod(ns, name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(RunError::NotFound(format!("{ns}/{name}"))),
            Err(e) => {
                return Err(match e.forbidden() {
                    Some(m) => RunError::NotVisible {
                        pod: format!("{ns}/{name}"),
                        message: m.to_string(),
                    },
                    None => e.into(),
                });
            }
        };
        let plan = pod::plan(&pod, &self.node)?;
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(RunError::Deleting(plan.key()));
        }
        if let Some(phase) = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .filter(|p| matches!(*p, "Succeeded" | "Failed"))
        {
            return Err(RunError::Finished {
                pod: plan.key(),
                phase: phase.to_string(),
            });
        }
        for w in &plan.warnings {
            warn(&format!("pod {}: {w}", plan.key()));
        }
        // The daemon may be acting on it: one at a time.
        let _lock = self.lock(ns, name).await?;
        if let Some(old) = self.store.load(ns, name)? {
            // A create killed after starting the containers but before
            // its status PATCH left a pod the API still sees Pending: it
            // is made again like any other interrupted create.
            if old.uid == plan.uid && old.reported != Some(false) && self.all_running(&old).await? {
                return Ok(Created::AlreadyRunning {
                    pod_ips: old.pod_ips,
                });
            }
            // Left by an interrupted create, or an older pod of that name.
            self.teardown(&old, 0).await.map_err(|e| {
                RunError::Failed(format!(
                    "cleaning up what an earlier create of {} left: {e}",
                    plan.key()
                ))
            })?;
        }
        match self.start_pod(&pod, &plan).await {
            Ok(mut started) => {
                let obs = PodObs {
                    sandbox_ready: true,
                    pod_ips: started.record.pod_ips.clone(),
                    host_ip: started.record.host_ip.clone(),
                    start_time: started.start_time,
                    containers: started.containers,
                    terminal: false,
                    qos: status::qos_class(&pod),
                    restart_policy: restart_policy(&pod),
                };
                let patch = status::patch_pod(&obs, &pod, None, SystemTime::now());
                let sent = match self.api() {
                    Ok(api) => api
                        .patch_status(&plan.namespace, &plan.name, &patch)
                        .await
                        .map_err(RunError::from),
                    Err(e) => Err(e),
                };
                // A pod the API does not know runs is not left running.
                if let Err(error) = sent {
                    return Err(match self.teardown(&started.record, 0).await {
                        Ok(_) => RunError::RolledBack {
                            error: Box::new(error),
                        },
                        Err(rb) => RunError::RollbackFailed {
                            error: Box::new(error),
                            rollback: rb.to_string(),
                        },
                    });
                }
                started.record.reported = Some(true);
                self.store.save(&started.record)?;
                Ok(Created::Started {
                    pod_ips: started.record.pod_ips,
                })
            }
            Err(failure) => {
                if failure.root().is_sandbox() {
                    self.report_sandbox_failure(&plan, &failure).await;
                }
                Err(failure)
            }
        }
    }

    /// Makes the pod's sandbox and starts its containers, the record saved
    /// before anything exists (a crash leaves a record naming every
    /// piece); on failure everything made is removed again.
    pub async fn start_pod(&self, pod: &Pod, plan: &PodPlan) -> Result<Started, RunError> {
        self.start_pod_as(pod, plan, self.record_for(plan)).await
    }

    /// [`Runner::start_pod`] with the record to make (see
    /// [`Runner::record_after`]).
    pub async fn start_pod_as(
        &self,
        pod: &Pod,
        plan: &PodPlan,
        mut record: PodRecord,
    ) -> Result<Started, RunError> {
        self.store.save(&record)?;
        let start_time = SystemTime::now();
        match self.bring_up(pod, plan, &mut record).await {
            Ok((containers, pulled)) => Ok(Started {
                record,
                containers,
                start_time,
                pulled,
            }),
            Err(error) => Err(match self.teardown(&record, 0).await {
                Ok(_) => RunError::RolledBack {
                    error: Box::new(error),
                },
                Err(rb) => RunError::RollbackFailed {
                    error: Box::new(error),
                    rollback: rb.to_string(),
                },
            }),
        }
    }

    /// Says in the Pod's status why its sandbox could not be made (the
    /// kubelet's FailedCreatePodSandBox); the pod stays Pending. Best
    /// effort: the command's own error says it all the same.
    async fn report_sandbox_failure(&self, plan: &PodPlan, failure: &RunError) {
        let patch = serde_json::json!({"status": {
            "reason": "FailedCreatePodSandBox",
            "message": format!("Failed to create pod sandbox: {failure}"),
        }});
        let sent = match self.api() {
            Ok(api) => api
                .patch_status(&plan.namespace, &plan.name, &patch)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn(&format!("pod {}: reporting the failure: {e}", plan.key()));
        }
    }

    async fn bring_up(
        &self,
        pod: &Pod,
        plan: &PodPlan,
        record: &mut PodRecord,
    ) -> Result<(Vec<ContainerObs>, Vec<bool>), RunError> {
        // Images first: a missing one fails before anything is made.
        let pause = self.ensure_image(&self.pause_image, "IfNotPresent").await?;
        let mut images = Vec::new();
        let mut pulled = Vec::new();
        for c in &plan.containers {
            let (info, p) = self.ensure_image_noting(&c.image, &c.pull_policy).await?;
            images.push(info);
            pulled.push(p);
        }
        let host_ip = self.host_ip().await;

        netns::create(
            record
                .netns
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
        )?;
        let netns_path = record.netns.to_string_lossy().into_owned();
        let att = Attachment {
            container_id: &record.sandbox_id,
            netns: &netns_path,
            ifname: "eth0",
            pod_namespace: &plan.namespace,
            pod_name: &plan.name,
            pod_uid: &plan.uid,
        };
        // The plugins run as child processes: off the async threads.
        let result = blocking(|| self.cni.add(&att))?;
        record.pod_ips = result_ips(&result);
        record.host_ip = host_ip;
        self.store.save(record)?;

        write_pod_files(plan, &record.pod_dir, &record.pod_ips)?;
        prepare_volumes(plan, &record.pod_dir)?;

        self.start_sandbox(plan, record, &pause).await?;
        let mut observed = Vec::new();
        for (i, info) in images.iter().enumerate() {
            let obs = self.start_container(pod, plan, record, i, info).await?;
            // The time reported is the one kept: a restarted daemon
            // reports it again, unchanged.
            if let State::Running { started } = obs.state {
                record.containers[i].started_at = Some(started);
            }
            observed.push(obs);
        }
        self.store.save(record)?;
        Ok((observed, pulled))
    }

    /// Creates and starts the instance `record.containers[i]` names (its
    /// ID and attempt) in the pod's running sandbox, its output going to
    /// `<log dir>/<container>/<attempt>.log` as the kubelet names it.
    pub async fn start_container(
        &self,
        pod: &Pod,
        plan: &PodPlan,
        record: &PodRecord,
        i: usize,
        info: &ImageInfo,
    ) -> Result<ContainerObs, RunError> {
        let (c, app) = match (plan.containers.get(i), record.containers.get(i)) {
            (Some(c), Some(a)) => (c, a),
            _ => {
                return Err(RunError::Failed(format!(
                    "{}: no container {i}",
                    plan.key()
                )));
            }
        };
        let pause_pid = match self.ctrd.task(&record.sandbox_id).await? {
            Some((TaskState::Running, pid)) => pid,
            _ => {
                return Err(RunError::Failed(format!(
                    "{}: the sandbox is not running",
                    plan.key()
                )));
            }
        };
        let volumes = prepare_volumes(plan, &record.pod_dir)?;
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let fields = Fields {
            plan,
            service_account: &service_account,
            pod_ips: &record.pod_ips,
            host_ip: record.host_ip.as_deref().unwrap_or(""),
        };
        let env_image: Vec<String> = info.config["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect();
        let env = pod::environment(c, &env_image, &fields);
        let args = pod::process_args(c, &info.config, &env);
        if args.is_empty() {
            return Err(RunError::Failed(format!(
                "container {}: no command: the image has no Entrypoint or Cmd and the pod gives none",
                c.name
            )));
        }
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| info.config["WorkingDir"].as_str().map(str::to_string))
            .unwrap_or_default();
        let (uid, gid) = image_user(info)?;
        let cs = ContainerSpec {
            args,
            env,
            cwd,
            uid,
            gid,
            hostname: None,
            namespaces: vec![
                (Ns::Pid, None),
                (Ns::Mount, None),
                (Ns::Network, Some(record.netns.clone())),
                (Ns::Ipc, Some(format!("/proc/{pause_pid}/ns/ipc").into())),
                (Ns::Uts, Some(format!("/proc/{pause_pid}/ns/uts").into())),
            ],
            mounts: container_mounts(plan, c, &record.pod_dir, &volumes),
            memory_limit: c.memory_limit,
            cpu_quota: c.cpu_limit_milli.map(|m| m * 100),
            cpu_period: c.cpu_limit_milli.map(|_| 100_000),
            cpu_shares: c
                .cpu_request_milli
                .or(c.cpu_limit_milli)
                .map(|m| ((m * 1024 / 1000).max(2)) as u64),
            cgroups_path: self.cgroup(plan, &app.id),
            read_only_rootfs: false,
            annotations: cri_annotations(
                plan,
                &record.sandbox_id,
                "container",
                &[
                    ("io.kubernetes.cri.container-name", &c.name),
                    ("io.kubernetes.cri.image-name", &info.name),
                ],
            ),
        };
        let log = record
            .log_dir
            .join(&c.name)
            .join(format!("{}.log", app.attempt));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|source| RunError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        }
        self.ctrd
            .create_container(&NewContainer {
                id: &app.id,
                image: &info.name,
                parent_snapshot: &info.chain_id,
                labels: kubelet_labels(plan, "container", &c.name),
                spec: spec::build(&cs)?,
            })
            .await?;
        self.ctrd
            .create_task(&app.id, &logs::uri(&self.paths.logger, &log))
            .await?;
        self.ctrd.start_task(&app.id).await?;
        Ok(ContainerObs::running(
            &c.name,
            &app.id,
            &info.name,
            &image_id(info),
            SystemTime::now(),
        ))
    }

    pub(crate) fn cgroup(&self, plan: &PodPlan, id: &str) -> String {
        format!("{}/{id}", crate::cgroup::pod_parent(&plan.uid))
    }

    /// The pause container: new PID, IPC, UTS and mount namespaces, the
    /// pinned netns, the pod's hostname. Returns its PID.
    async fn start_sandbox(
        &self,
        plan: &PodPlan,
        record: &PodRecord,
        pause: &ImageInfo,
    ) -> Result<u32, RunError> {
        let no = crate::pod::ContainerPlan {
            name: "POD".into(),
            image: pause.name.clone(),
            pull_policy: "IfNotPresent".into(),
            command: None,
            args: None,
            env: Vec::new(),
            working_dir: None,
            memory_limit: None,
            cpu_limit_milli: None,
            cpu_request_milli: None,
            mounts: Vec::new(),
        };
        let args = pod::process_args(&no, &pause.config, &[]);
        let cs = ContainerSpec {
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            hostname: Some(plan.hostname.clone()),
            namespaces: vec![
                (Ns::Pid, None),
                (Ns::Ipc, None),
                (Ns::Uts, None),
                (Ns::Mount, None),
                (Ns::Network, Some(record.netns.clone())),
            ],
            cgroups_path: self.cgroup(plan, &record.sandbox_id),
            read_only_rootfs: true,
            annotations: cri_annotations(plan, &record.sandbox_id, "sandbox", &[]),
            ..ContainerSpec::default()
        };
        self.ctrd
            .create_container(&NewContainer {
                id: &record.sandbox_id,
                image: &pause.name,
                parent_snapshot: &pause.chain_id,
                labels: kubelet_labels(plan, "sandbox", "POD"),
                spec: spec::build(&cs)?,
            })
            .await?;
        let pid = self.ctrd.create_task(&record.sandbox_id, "").await?;
        self.ctrd.start_task(&record.sandbox_id).await?;
        Ok(pid)
    }
}

/// The image config's `User`, numeric (`uid[:gid]`) or root.
fn image_user(info: &ImageInfo) -> Result<(u32, u32), RunError> {
    let user = info.config["User"].as_str().unwrap_or("");
    if user.is_empty() || user == "root" {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, "0"));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(RunError::Image {
            image: info.name.clone(),
            msg: format!("its User {user:?} is a name; pod-runner needs a numeric uid[:gid]"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ips_from_each_result_layout() {
        use cni_protocol::{CniResult, SpecVersion};
        let v1 = json!({"cniVersion": "1.0.0",
                        "ips": [{"address": "10.244.1.2/24"}, {"address": "fd00::2/64"}]});
        let v1 = CniResult::from_value(v1, SpecVersion::V1_0_0).expect("1.0.0");
        assert_eq!(result_ips(&v1), vec!["10.244.1.2", "fd00::2"]);
        let v02 = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.244.1.3/24"}});
        let v02 = CniResult::from_value(v02, SpecVersion::V0_2_0).expect("0.2.0");
        assert_eq!(result_ips(&v02), vec!["10.244.1.3"]);
    }

    #[test]
    fn image_ids_name_the_repository_and_digest() {
        let info = ImageInfo {
            name: "localhost:5000/web:latest".into(),
            digest: "sha256:ab".into(),
            config: serde_json::Value::Null,
            chain_id: String::new(),
        };
        assert_eq!(image_id(&info), "localhost:5000/web@sha256:ab");
    }
}
