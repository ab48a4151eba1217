//! One pod's worker: the kubelet's sync loop for a single pod. Every
//! wake-up (an update of the pod, a task event, a probe's report, a timer)
//! ends in [`Worker::sync`], which compares what runs with what the pod
//! asks for and does the next steps: start, restart after back-off, stop,
//! tear down, report the status.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::api::KubeApi;
use crate::backoff::CrashBackoff;
use crate::pod::{self, PodPlan};
use crate::probe::{self, Outcome};
use crate::runner::{RunError, Runner, exit_of, restart_policy};
use crate::state::{Exit, PodLock, PodRecord};
use crate::status::{self, ContainerObs, PodObs, State};
use containerd_api::{TaskInfo, TaskState};

use super::events::{Kind, Recorder};
use super::plan;
use super::probes::{self, CtrdExec, ProbeKind, Report};
use super::{Key, Msg};

/// How long ErrImagePull shows before ImagePullBackOff.
const PULL_ERROR_SHOWS: Duration = Duration::from_secs(2);

/// What every worker shares.
pub(crate) struct Shared {
    pub runner: Arc<Runner>,
    pub api: KubeApi,
    pub recorder: Recorder,
    pub resync: Duration,
    /// Messages a finished worker received too late, for a new worker.
    pub requeue: mpsc::UnboundedSender<(Key, Msg)>,
    /// The kinds of warnings already logged (see [`Shared::warn_once`]).
    pub said: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    /// A warning about what pod-runner leaves out of a pod, logged the
    /// first time its kind (the text without the quoted names) comes up:
    /// every pod the API server admits carries the same defaults (the
    /// token volume, enableServiceLinks), and a line per pod start would
    /// bury the log. Later ones go to the debug level.
    fn warn_once(&self, pod: &str, warning: &str) {
        let kind = warning_kind(warning);
        let first = self.said.lock().map(|mut s| s.insert(kind)).unwrap_or(true);
        if first {
            tracing::warn!("pod {pod}: {warning} (said once for every pod)");
        } else {
            tracing::debug!("pod {pod}: {warning}");
        }
    }
}

/// One container as the worker follows it.
#[derive(Default)]
struct Ctr {
    /// How the current instance ended, when it did.
    exited: Option<Exit>,
    oom: bool,
    backoff: CrashBackoff,
    /// When the ended instance is restarted.
    restart_at: Option<Instant>,
    /// A reason it waits (image, config), with its message.
    waiting: Option<(String, String)>,
    ready: Option<bool>,
    started: Option<bool>,
    image: String,
    image_id: String,
    probes: Vec<AbortHandle>,
}

impl Ctr {
    fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

struct Worker {
    s: Arc<Shared>,
    key: Key,
    tx: mpsc::UnboundedSender<Msg>,
    pod: Option<Pod>,
    gone: bool,
    record: Option<PodRecord>,
    plan: Option<PodPlan>,
    ctrs: Vec<Ctr>,
    /// Retries of a pod that could not be started.
    create_backoff: CrashBackoff,
    retry_at: Option<Instant>,
    /// The pod's own failure (sandbox, refused spec), for the status.
    pod_reason: Option<(String, String)>,
    /// Ran to completion (or refused): its containers are not started again.
    finished: bool,
    /// Whether the record was checked against containerd (adoption).
    adopted: bool,
    start_time: Option<SystemTime>,
    last_status: Option<Value>,
    /// The pause container exited: the sandbox is made again.
    sandbox_dead: bool,
    /// The record of the sandbox that died and how its containers ended,
    /// for the next one's IDs and restart counts.
    carry: Option<(PodRecord, Vec<Exit>)>,
    /// The incarnation refused (unsupported spec): not looked at again.
    refused: Option<String>,
    /// When the tasks were last read from containerd.
    checked: Instant,
    /// When the last start failed (ErrImagePull shows for a while).
    pulled_at: Instant,
    /// Finished here, and the API has not taken the final status yet.
    final_unsent: bool,
}

/// How a container's task ended, as containerd shows it: `None` while it
/// runs; a task that is gone, or never ran, counts as killed (137).
fn ended(t: Option<TaskInfo>) -> Option<(u32, Option<SystemTime>)> {
    match t {
        Some(t) if t.state == TaskState::Running => None,
        Some(t) => Some((
            match t.state {
                TaskState::Stopped { exit } => exit,
                _ => 137,
            },
            t.exited_at,
        )),
        None => Some((137, None)),
    }
}

/// A warning without its quoted names: what it says of any pod.
fn warning_kind(warning: &str) -> String {
    warning
        .split('"')
        .step_by(2)
        .collect::<Vec<_>>()
        .join("\"…\"")
}

/// How a sync ended.
enum Next {
    /// Wake at this time (or on a message).
    At(Option<Instant>),
    /// The pod is gone from node and API: the worker ends.
    Done,
}

pub(crate) async fn run(
    s: Arc<Shared>,
    key: Key,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut w = Worker {
        s,
        key,
        tx,
        pod: None,
        gone: false,
        record: None,
        plan: None,
        ctrs: Vec::new(),
        create_backoff: CrashBackoff::default(),
        retry_at: None,
        pod_reason: None,
        finished: false,
        adopted: false,
        start_time: None,
        last_status: None,
        sandbox_dead: false,
        carry: None,
        refused: None,
        checked: Instant::now(),
        pulled_at: Instant::now(),
        final_unsent: false,
    };
    let mut wake: Option<Instant> = None;
    loop {
        let resync = Instant::now() + w.s.resync;
        let deadline = wake.map_or(resync, |t| t.min(resync));
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    w.take(m);
                    // A burst (the list at start, many exits) is one sync.
                    while let Ok(m) = rx.try_recv() {
                        w.take(m);
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
            // The daemon stops: between steps, never in the middle of one.
            _ = stop.changed() => {
                w.stop_all_probes();
                return;
            }
        }
        match w.sync_locked().await {
            Next::At(t) => wake = t,
            Next::Done => {
                w.stop_all_probes();
                // A pod of this name may have come meanwhile (a new
                // incarnation): closed, the dispatcher's next send fails
                // and starts a new worker, and what is queued goes back.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if matches!(m, Msg::Pod(_)) {
                        let _ = w.s.requeue.send((w.key.clone(), m));
                    }
                }
                return;
            }
        }
    }
}

impl Worker {
    fn label(&self) -> String {
        format!("{}/{}", self.key.0, self.key.1)
    }

    /// Applies a message to what the worker knows; the sync acts on it.
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Pod(p) => {
                self.gone = false;
                self.pod = Some(*p);
            }
            Msg::Gone => self.gone = true,
            Msg::Exit { id, code, at } => {
                let Some(i) = self.index_of(&id) else {
                    if self.record.as_ref().is_some_and(|r| r.sandbox_id == id) {
                        tracing::warn!("pod {}: its sandbox exited", self.label());
                        self.sandbox_dead = true;
                    }
                    return;
                };
                let started = self
                    .record
                    .as_ref()
                    .and_then(|r| r.containers.get(i))
                    .and_then(|c| c.started_at);
                let c = &mut self.ctrs[i];
                if c.exited.is_none() {
                    c.stop_probes();
                    c.exited = Some(exit_of(
                        &id,
                        code,
                        c.oom,
                        started,
                        at.unwrap_or_else(SystemTime::now),
                    ));
                }
            }
            Msg::Oom { id } => {
                // containerd does not order the OOM event before the exit:
                // an exit already taken becomes OOMKilled (as the CRI
                // plugin does), and a finished pod's status is written again.
                let late = self
                    .ctrs
                    .iter_mut()
                    .filter_map(|c| c.exited.as_mut())
                    .find(|e| e.id == id && e.code != 0);
                if let Some(e) = late {
                    e.reason = crate::runner::exit_reason(e.code, true).into();
                    if self.finished {
                        self.final_unsent = true;
                    }
                } else if let Some(i) = self.index_of(&id) {
                    self.ctrs[i].oom = true;
                }
            }
            Msg::Probe(r) => self.probe_report(r),
        }
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        let r = self.record.as_ref()?;
        r.containers
            .iter()
            .position(|c| c.id == id)
            .filter(|i| *i < self.ctrs.len())
    }

    fn probe_report(&mut self, r: Report) {
        let Some(i) = self.index_of(&r.id) else {
            return;
        };
        let name = self
            .plan
            .as_ref()
            .and_then(|p| p.containers.get(i))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        if let (Some(msg), Some(pod)) = (&r.failure, &self.pod) {
            self.s.recorder.emit(
                pod,
                Some(&name),
                Kind::Warning,
                "Unhealthy",
                &format!("{} probe failed: {msg}", r.kind.name()),
            );
        }
        let Some(v) = r.verdict else {
            return;
        };
        let c = &mut self.ctrs[i];
        match r.kind {
            ProbeKind::Readiness => c.ready = Some(v),
            ProbeKind::Startup => {
                c.started = Some(v);
                if v {
                    self.start_probes_after_startup(i);
                } else {
                    self.kill_unhealthy(i, "failed startup probe");
                }
            }
            ProbeKind::Liveness => {
                if !v {
                    self.kill_unhealthy(i, "failed liveness probe");
                }
            }
        }
    }

    /// A failed liveness or startup probe: the kubelet kills the
    /// container and its restart policy decides what follows.
    fn kill_unhealthy(&mut self, i: usize, why: &str) {
        let (Some(r), Some(pod)) = (&self.record, &self.pod) else {
            return;
        };
        let Some(app) = r.containers.get(i) else {
            return;
        };
        self.ctrs[i].stop_probes();
        self.s.recorder.emit(
            pod,
            Some(&app.name),
            Kind::Normal,
            "Killing",
            &format!("Container {} {why}, will be restarted", app.name),
        );
        let grace = Duration::from_secs(r.grace_seconds.max(0) as u64);
        let runner = self.s.runner.clone();
        let id = app.id.clone();
        let hook = self.hook_of(i, false);
        let pod_ip = r.pod_ips.first().cloned().unwrap_or_default();
        // The exit comes back as a task event, as any other exit.
        tokio::spawn(async move {
            let t = Instant::now();
            if let Some(h) = hook {
                run_hook(&runner, &id, &h, &pod_ip, grace).await;
            }
            let left = grace.saturating_sub(t.elapsed());
            if let Err(e) = runner.stop_container(&id, left).await {
                tracing::warn!("stopping container {id}: {e}");
            }
        });
    }

    fn container_spec(&self, i: usize) -> Option<&Container> {
        self.pod.as_ref()?.spec.as_ref()?.containers.get(i)
    }

    /// The postStart (`post`) or preStop hook of container `i`.
    fn hook_of(&self, i: usize, post: bool) -> Option<probe::Handler> {
        let c = self.container_spec(i)?;
        let l = c.lifecycle.as_ref()?;
        let h = if post {
            l.post_start.as_ref()
        } else {
            l.pre_stop.as_ref()
        }?;
        match probe::hook(h, c.ports.as_deref().unwrap_or(&[])) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("pod {}: hook: {e}", self.label());
                None
            }
        }
    }

    fn stop_all_probes(&mut self) {
        for c in &mut self.ctrs {
            c.stop_probes();
        }
    }

    fn pod_ip(&self) -> String {
        self.record
            .as_ref()
            .and_then(|r| r.pod_ips.first().cloned())
            .unwrap_or_default()
    }

    fn spawn_probe(&mut self, i: usize, kind: ProbeKind) -> bool {
        let Some(c) = self.container_spec(i) else {
            return false;
        };
        let spec = match probes::spec_of(c, kind) {
            None => return false,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!("pod {}: {} probe: {e}", self.label(), kind.name());
                return false;
            }
        };
        let Some(id) = self
            .record
            .as_ref()
            .and_then(|r| r.containers.get(i))
            .map(|c| c.id.clone())
        else {
            return false;
        };
        let h = probes::spawn(
            self.s.runner.clone(),
            spec,
            kind,
            id,
            self.pod_ip(),
            self.tx.clone(),
        );
        self.ctrs[i].probes.push(h);
        true
    }

    /// Probes of a fresh instance: startup first, else the others.
    fn start_probes(&mut self, i: usize) {
        self.ctrs[i].stop_probes();
        if self.spawn_probe(i, ProbeKind::Startup) {
            self.ctrs[i].started = Some(false);
        } else {
            self.ctrs[i].started = Some(true);
            self.start_probes_after_startup(i);
        }
    }

    fn start_probes_after_startup(&mut self, i: usize) {
        self.spawn_probe(i, ProbeKind::Liveness);
        if !self.spawn_probe(i, ProbeKind::Readiness) {
            self.ctrs[i].ready = Some(true);
        }
    }

    /// One sync under the pod's lock.
    async fn sync_locked(&mut self) -> Next {
        let store = crate::state::Store::new(&self.s.runner.paths.state_dir);
        let (ns, name) = self.key.clone();
        let lock = match tokio::task::spawn_blocking(move || store.lock(&ns, &name)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!("pod {}: {e}", self.label());
                return Next::At(Some(Instant::now() + Duration::from_secs(5)));
            }
            Err(e) => {
                tracing::warn!("pod {}: {e}", self.label());
                return Next::At(Some(Instant::now() + Duration::from_secs(5)));
            }
        };
        // The record as on disk: a one-shot command may have acted.
        match self.s.runner.store.load(&self.key.0, &self.key.1) {
            Ok(r) => {
                if r.as_ref().map(|r| (&r.uid, &r.containers))
                    != self.record.as_ref().map(|r| (&r.uid, &r.containers))
                {
                    self.adopted = false;
                    // A `pod-runner delete` took the pod off the node and
                    // told the API before it let go of the lock: the pod
                    // as the API has it now, not as the watch last said.
                    if r.is_none() {
                        self.refresh().await;
                    }
                }
                self.record = r;
            }
            Err(e) => tracing::warn!("pod {}: {e}", self.label()),
        }
        let next = self.sync(&lock).await;
        if matches!(next, Next::Done) && self.record.is_none() {
            lock.release_and_remove();
        }
        next
    }

    /// Reads the pod from the API (gone there: gone).
    async fn refresh(&mut self) {
        match self.s.api.pod(&self.key.0, &self.key.1).await {
            Ok(Some(p)) => self.pod = Some(p),
            Ok(None) => self.gone = true,
            // The Node authorizer answers 403 for a pod that is no longer
            // bound here, a deleted one included.
            Err(e) if e.forbidden().is_some() => self.gone = true,
            Err(e) => tracing::warn!("pod {}: reading it: {e}", self.label()),
        }
    }

    async fn sync(&mut self, _lock: &PodLock) -> Next {
        let deleting = self
            .pod
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        if self.gone || self.pod.is_none() || deleting {
            return self.kill_pod().await;
        }
        let Some(pod) = self.pod.clone() else {
            return Next::At(None);
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // Another incarnation of the name: the old one goes first.
        if let Some(r) = &self.record
            && r.uid != uid
        {
            let r = r.clone();
            if let Err(e) = self.s.runner.teardown(&r, 0).await {
                tracing::warn!("pod {}: removing the old pod {}: {e}", self.label(), r.uid);
                return Next::At(Some(Instant::now() + Duration::from_secs(2)));
            }
            self.reset();
        }
        if self.plan.as_ref().is_none_or(|p| p.uid != uid) {
            self.reset();
            match pod::plan(&pod, &self.s.runner.node) {
                Ok(p) => {
                    for w in &p.warnings {
                        self.s.warn_once(&self.label(), w);
                    }
                    self.ctrs = p.containers.iter().map(|_| Ctr::default()).collect();
                    self.plan = Some(p);
                }
                Err(_) if self.refused.as_deref() == Some(uid.as_str()) => {
                    return Next::At(None);
                }
                Err(e) => {
                    self.refused = Some(uid.clone());
                    return self.refuse(&pod, "Unsupported", &e.to_string()).await;
                }
            }
        }
        if self.finished {
            // Our last word on a pod we ran to its end, until the API
            // took it (a failed write is tried again at the resync).
            if self.final_unsent {
                self.report(&pod).await;
            }
            return Next::At(None);
        }
        let api_phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if self.record.is_none() && matches!(api_phase.as_str(), "Succeeded" | "Failed") {
            // Finished before (by us, before a restart): never again.
            self.finished = true;
            return Next::At(None);
        }
        if self.record.is_some()
            && !self.adopted
            && let Some(next) = self.adopt(&pod).await
        {
            return next;
        }
        if self.record.is_some() && self.checked.elapsed() >= self.s.resync {
            self.check_tasks().await;
        }
        if self.sandbox_dead
            && let Some(r) = self.record.clone()
        {
            // The kubelet's answer to a dead sandbox: kill the pod's
            // containers and make it again.
            self.s.recorder.emit(
                &pod,
                None,
                Kind::Normal,
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.",
            );
            let exits = match self.s.runner.teardown(&r, 0).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("pod {}: removing the dead sandbox: {e}", self.label());
                    return Next::At(Some(Instant::now() + Duration::from_secs(2)));
                }
            };
            let now = SystemTime::now();
            let ended: Vec<Exit> = r
                .containers
                .iter()
                .enumerate()
                .map(
                    |(i, app)| match self.ctrs.get(i).and_then(|c| c.exited.clone()) {
                        Some(e) => e,
                        None => {
                            let code = exits
                                .iter()
                                .find(|(n, _)| *n == app.name)
                                .map_or(137, |(_, c)| *c);
                            exit_of(&app.id, code, false, app.started_at, now)
                        }
                    },
                )
                .collect();
            self.carry = Some((r, ended));
            self.stop_all_probes();
            self.record = None;
            self.sandbox_dead = false;
            for c in &mut self.ctrs {
                *c = Ctr::default();
            }
        }
        if self.record.is_none() {
            if let Some(t) = self.retry_at
                && Instant::now() < t
            {
                // A failed pull shows as ErrImagePull for a moment, then
                // as the kubelet's back-off reason until the next try.
                let soon = self
                    .retry_at
                    .map(|t| t.min(self.pulled_at + PULL_ERROR_SHOWS));
                if Instant::now() < self.pulled_at + PULL_ERROR_SHOWS {
                    return Next::At(soon);
                }
                let mut backing_off = false;
                for c in &mut self.ctrs {
                    if let Some(w) = c.waiting.as_mut()
                        && w.0 == "ErrImagePull"
                    {
                        w.0 = "ImagePullBackOff".into();
                        backing_off = true;
                    }
                }
                if backing_off {
                    self.s.recorder.emit(
                        &pod,
                        None,
                        Kind::Normal,
                        "BackOff",
                        "Back-off pulling image",
                    );
                    self.report(&pod).await;
                }
                return Next::At(Some(t));
            }
            if let Some(next) = self.start(&pod).await {
                return next;
            }
        }
        let wake = self.restarts(&pod).await;
        self.finish_if_done().await;
        self.report(&pod).await;
        Next::At(wake)
    }

    fn reset(&mut self) {
        self.stop_all_probes();
        self.plan = None;
        self.ctrs.clear();
        self.finished = false;
        self.adopted = false;
        self.pod_reason = None;
        self.retry_at = None;
        self.create_backoff = CrashBackoff::default();
        self.start_time = None;
        self.last_status = None;
        self.sandbox_dead = false;
        self.carry = None;
        self.final_unsent = false;
    }

    /// A pod pod-runner will not run: phase Failed with the reason, as the
    /// kubelet's admission rejects a pod.
    async fn refuse(&mut self, pod: &Pod, reason: &str, message: &str) -> Next {
        self.finished = true;
        self.s
            .recorder
            .emit(pod, None, Kind::Warning, reason, message);
        let patch = serde_json::json!({"status": {
            "phase": "Failed", "reason": reason, "message": message}});
        if let Err(e) = self
            .s
            .api
            .patch_status(&self.key.0, &self.key.1, &patch)
            .await
        {
            tracing::warn!("pod {}: reporting the refusal: {e}", self.label());
        }
        tracing::warn!("pod {}: refused: {message}", self.label());
        Next::At(None)
    }

    /// Makes the sandbox and starts the containers; `Some` when it did not.
    async fn start(&mut self, pod: &Pod) -> Option<Next> {
        let plan = self.plan.clone()?;
        self.pod_reason = None;
        let record = match &self.carry {
            Some((old, exits)) => self.s.runner.record_after(&plan, Some((old, exits))),
            None => self.s.runner.record_after(&plan, None),
        };
        match self.s.runner.start_pod_as(pod, &plan, record).await {
            Ok(started) => {
                self.start_time = Some(
                    pod.status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| SystemTime::from(t.0))
                        .unwrap_or(started.start_time),
                );
                for (i, o) in started.containers.iter().enumerate() {
                    if let Some(c) = self.ctrs.get_mut(i) {
                        c.image = o.image.clone();
                        c.image_id = o.image_id.clone();
                        c.waiting = None;
                    }
                    let image = plan
                        .containers
                        .get(i)
                        .map(|c| c.image.as_str())
                        .unwrap_or("");
                    if started.pulled.get(i) == Some(&true) {
                        self.s.recorder.emit(
                            pod,
                            Some(&o.name),
                            Kind::Normal,
                            "Pulled",
                            &format!("Successfully pulled image {image:?}"),
                        );
                    } else {
                        self.s.recorder.emit(
                            pod,
                            Some(&o.name),
                            Kind::Normal,
                            "Pulled",
                            &format!("Container image {image:?} already present on machine"),
                        );
                    }
                    self.s.recorder.emit(
                        pod,
                        Some(&o.name),
                        Kind::Normal,
                        "Created",
                        &format!("Created container {}", o.name),
                    );
                    self.s.recorder.emit(
                        pod,
                        Some(&o.name),
                        Kind::Normal,
                        "Started",
                        &format!("Started container {}", o.name),
                    );
                }
                self.record = Some(started.record);
                self.carry = None;
                self.adopted = true;
                self.checked = Instant::now();
                for i in 0..self.ctrs.len() {
                    self.start_probes(i);
                    self.post_start(i);
                }
                None
            }
            Err(e) => {
                let root = e.root();
                let msg = e.to_string();
                let wait = self.create_backoff.next(Instant::now());
                self.retry_at = Some(Instant::now() + wait.max(Duration::from_secs(1)));
                let (reason, waiting) = match root {
                    RunError::Image { .. } => ("Failed", Some("ErrImagePull")),
                    RunError::Spec(_) | RunError::Volume { .. } => {
                        ("Failed", Some("CreateContainerConfigError"))
                    }
                    r if r.is_sandbox() => ("FailedCreatePodSandBox", None),
                    _ => ("Failed", Some("CreateContainerError")),
                };
                self.s.recorder.emit(pod, None, Kind::Warning, reason, &msg);
                tracing::warn!("pod {}: {msg}", self.label());
                match waiting {
                    Some(w) => {
                        for c in &mut self.ctrs {
                            c.waiting = Some((w.into(), msg.clone()));
                        }
                    }
                    None => {
                        self.pod_reason = Some((
                            "FailedCreatePodSandBox".into(),
                            format!("Failed to create pod sandbox: {msg}"),
                        ))
                    }
                }
                self.report(pod).await;
                self.pulled_at = Instant::now();
                let soon = Instant::now() + PULL_ERROR_SHOWS;
                let image_wait = self
                    .ctrs
                    .iter()
                    .any(|c| c.waiting.as_ref().is_some_and(|w| w.0 == "ErrImagePull"));
                Some(Next::At(if image_wait {
                    self.retry_at.map(|t| t.min(soon))
                } else {
                    self.retry_at
                }))
            }
        }
    }

    /// Runs container `i`'s postStart hook; a failure kills the instance.
    fn post_start(&mut self, i: usize) {
        let Some(h) = self.hook_of(i, true) else {
            return;
        };
        let (Some(r), Some(pod)) = (&self.record, &self.pod) else {
            return;
        };
        let Some(app) = r.containers.get(i) else {
            return;
        };
        let runner = self.s.runner.clone();
        let rec = self.s.recorder.clone();
        let (id, name, pod, ip) = (app.id.clone(), app.name.clone(), pod.clone(), self.pod_ip());
        tokio::spawn(async move {
            let exec = CtrdExec {
                runner: runner.clone(),
                id: id.clone(),
            };
            if let Outcome::Failure(m) = probe::check(&h, &ip, Duration::from_secs(30), &exec).await
            {
                rec.emit(&pod, Some(&name), Kind::Warning, "FailedPostStartHook", &m);
                let _ = runner.stop_container(&id, Duration::ZERO).await;
            }
        });
    }

    /// A record from before this worker: checks each task in containerd,
    /// so running containers go on as they are (no restart, the same
    /// status) and what ended meanwhile is handled as an exit.
    async fn adopt(&mut self, pod: &Pod) -> Option<Next> {
        let r = self.record.clone()?;
        let ctrd = &self.s.runner.ctrd;
        let sandbox_ok = matches!(
            ctrd.task(&r.sandbox_id).await,
            Ok(Some((TaskState::Running, _)))
        );
        let mut never_started = false;
        for app in &r.containers {
            if app.started_at.is_none() && matches!(ctrd.task(&app.id).await, Ok(None)) {
                never_started = true;
            }
        }
        if !sandbox_ok || never_started || r.containers.len() != self.ctrs.len() {
            // No sandbox to adopt (a create cut short, a dead pause): the
            // pod is made again from scratch.
            if let Err(e) = self.s.runner.teardown(&r, 0).await {
                tracing::warn!("pod {}: {e}", self.label());
                return Some(Next::At(Some(Instant::now() + Duration::from_secs(2))));
            }
            self.record = None;
            return None;
        }
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        self.start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| SystemTime::from(t.0))
            .or(self.start_time);
        for (i, app) in r.containers.iter().enumerate() {
            let reported = statuses.iter().find(|s| {
                s.name == app.name
                    && s.container_id.as_deref() == Some(&format!("containerd://{}", app.id))
            });
            let c = &mut self.ctrs[i];
            c.image = reported
                .map(|s| s.image.clone())
                .unwrap_or_else(|| app.image.clone());
            c.image_id = reported.map(|s| s.image_id.clone()).unwrap_or_default();
            match ctrd.task_info(&app.id).await.map(ended) {
                Ok(None) => {
                    // What the API shows stays until a probe says otherwise.
                    c.ready = reported.map(|s| s.ready);
                    c.started = reported.and_then(|s| s.started);
                }
                Ok(Some((code, at))) => {
                    c.exited = Some(exit_of(
                        &app.id,
                        code,
                        false,
                        app.started_at,
                        at.unwrap_or_else(SystemTime::now),
                    ));
                }
                Err(e) => {
                    tracing::warn!("pod {}: {e}", self.label());
                    return Some(Next::At(Some(Instant::now() + Duration::from_secs(2))));
                }
            }
        }
        self.adopted = true;
        self.checked = Instant::now();
        for i in 0..self.ctrs.len() {
            if self.ctrs[i].exited.is_none() {
                self.ctrs[i].stop_probes();
                let started = self.ctrs[i].started;
                let ready = self.ctrs[i].ready;
                if self.spawn_probe(i, ProbeKind::Startup) && started != Some(true) {
                    self.ctrs[i].started = Some(false);
                } else {
                    for p in self.ctrs[i].probes.drain(..) {
                        p.abort();
                    }
                    self.ctrs[i].started = Some(true);
                    self.start_probes_after_startup(i);
                    // Kept from the API until the first verdict.
                    if ready.is_some() && !self.ctrs[i].probes.is_empty() {
                        self.ctrs[i].ready = ready;
                    }
                }
            }
        }
        None
    }

    /// Reads the tasks from containerd: the safety net for an exit event
    /// lost while the event stream reconnected.
    async fn check_tasks(&mut self) {
        self.checked = Instant::now();
        let Some(r) = self.record.clone() else {
            return;
        };
        let ctrd = &self.s.runner.ctrd;
        if let Ok(t) = ctrd.task(&r.sandbox_id).await
            && !matches!(t, Some((TaskState::Running, _)))
        {
            self.sandbox_dead = true;
        }
        for (i, app) in r.containers.iter().enumerate() {
            if self.ctrs.get(i).is_none_or(|c| c.exited.is_some()) {
                continue;
            }
            let (code, at) = match ctrd.task_info(&app.id).await.map(ended) {
                Ok(None) => continue,
                Ok(Some(ended)) => ended,
                Err(e) => {
                    tracing::warn!("pod {}: {e}", self.label());
                    return;
                }
            };
            tracing::info!("pod {}: {} ended without an event", self.label(), app.name);
            let oom = self.ctrs[i].oom;
            self.ctrs[i].stop_probes();
            self.ctrs[i].exited = Some(exit_of(
                &app.id,
                code,
                oom,
                app.started_at,
                at.unwrap_or_else(SystemTime::now),
            ));
        }
    }

    fn policy(&self) -> String {
        self.pod.as_ref().map(restart_policy).unwrap_or_default()
    }

    /// Restarts what ended and should run again, after its back-off; the
    /// earliest time a held-back restart is due.
    async fn restarts(&mut self, pod: &Pod) -> Option<Instant> {
        let policy = self.policy();
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for i in 0..self.ctrs.len() {
            let Some(exit) = self.ctrs[i].exited.clone() else {
                continue;
            };
            if !plan::restarts(&policy, exit.code) {
                continue;
            }
            let name = self
                .record
                .as_ref()
                .and_then(|r| r.containers.get(i))
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let c = &mut self.ctrs[i];
            let at = match plan::step(&mut c.restart_at, &mut c.backoff, now) {
                plan::Step::Wait(at) => at,
                plan::Step::Restart => now,
            };
            if now < at {
                let msg = format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({})",
                    at.saturating_duration_since(now).as_secs().max(1),
                    self.key.1,
                    self.key.0,
                    pod.metadata.uid.as_deref().unwrap_or("")
                );
                if self.ctrs[i]
                    .waiting
                    .as_ref()
                    .is_none_or(|w| w.0 != "CrashLoopBackOff")
                {
                    self.s.recorder.emit(
                        pod,
                        Some(&name),
                        Kind::Warning,
                        "BackOff",
                        "Back-off restarting failed container",
                    );
                }
                self.ctrs[i].waiting = Some(("CrashLoopBackOff".into(), msg));
                wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
                continue;
            }
            let (Some(plan), Some(mut record)) = (self.plan.clone(), self.record.clone()) else {
                continue;
            };
            match self
                .s
                .runner
                .restart_container(pod, &plan, &mut record, i, exit)
                .await
            {
                Ok(o) => {
                    self.record = Some(record);
                    let c = &mut self.ctrs[i];
                    c.exited = None;
                    c.oom = false;
                    c.restart_at = None;
                    c.waiting = None;
                    c.ready = None;
                    c.image = o.image.clone();
                    c.image_id = o.image_id.clone();
                    self.s.recorder.emit(
                        pod,
                        Some(&name),
                        Kind::Normal,
                        "Started",
                        &format!("Started container {name}"),
                    );
                    self.start_probes(i);
                    self.post_start(i);
                }
                Err(e) => {
                    self.record = Some(record);
                    let msg = e.to_string();
                    tracing::warn!("pod {}: restarting {name}: {msg}", self.label());
                    self.s
                        .recorder
                        .emit(pod, Some(&name), Kind::Warning, "Failed", &msg);
                    let t = now + Duration::from_secs(10);
                    self.ctrs[i].restart_at = Some(t);
                    self.ctrs[i].waiting = Some(("CreateContainerError".into(), msg));
                    wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                }
            }
        }
        wake
    }

    /// Every container ended for good (Never, OnFailure that succeeded):
    /// the sandbox and its network go, as the kubelet releases a finished
    /// pod's; the status keeps how each container ended.
    async fn finish_if_done(&mut self) {
        let policy = self.policy();
        let ended: Vec<Option<i32>> = self
            .ctrs
            .iter()
            .map(|c| c.exited.as_ref().map(|e| e.code))
            .collect();
        let done = plan::finished(&policy, &ended);
        let Some(r) = self.record.clone() else {
            return;
        };
        if !done {
            return;
        }
        match self.s.runner.teardown(&r, 0).await {
            Ok(_) => {
                self.finished = true;
                self.final_unsent = true;
                self.record = None;
            }
            Err(e) => tracing::warn!("pod {}: removing the finished pod: {e}", self.label()),
        }
    }

    fn observe(&self, pod: &Pod) -> PodObs {
        let policy = self.policy();
        let r = self.record.as_ref();
        let containers = self
            .plan
            .iter()
            .flat_map(|p| p.containers.iter())
            .enumerate()
            .map(|(i, cp)| {
                let c = &self.ctrs[i];
                let app = r.and_then(|r| r.containers.get(i));
                let state = if let Some((reason, message)) = &c.waiting
                    && (c.exited.is_none() || c.restart_at.is_some())
                {
                    State::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    }
                } else if let Some(e) = &c.exited {
                    terminated(e)
                } else if let Some(started) = app.and_then(|a| a.started_at) {
                    State::Running { started }
                } else {
                    State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    }
                };
                let running = matches!(state, State::Running { .. });
                ContainerObs {
                    name: cp.name.clone(),
                    id: app.map(|a| a.id.clone()).unwrap_or_default(),
                    image: if c.image.is_empty() {
                        cp.image.clone()
                    } else {
                        c.image.clone()
                    },
                    image_id: c.image_id.clone(),
                    ready: running && c.ready == Some(true) && c.started != Some(false),
                    started: running && c.started == Some(true),
                    restart_count: app.map(|a| a.attempt).unwrap_or(0),
                    // Waiting to restart, the run that just ended is the
                    // last state (the kubelet's), not the one before it.
                    last_state: match (&state, &c.exited) {
                        (State::Waiting { .. }, Some(e)) => Some(terminated(e)),
                        _ => app.and_then(|a| a.last_exit.as_ref()).map(terminated),
                    },
                    state,
                }
            })
            .collect();
        PodObs {
            sandbox_ready: r.is_some(),
            pod_ips: r.map(|r| r.pod_ips.clone()).unwrap_or_default(),
            host_ip: r.and_then(|r| r.host_ip.clone()),
            start_time: self.start_time.unwrap_or_else(SystemTime::now),
            containers,
            terminal: self.finished && policy != "Always",
            qos: status::qos_class(pod),
            restart_policy: policy,
        }
    }

    /// Writes the status when it differs from the last one written.
    async fn report(&mut self, pod: &Pod) {
        let obs = self.observe(pod);
        let old = status::current(pod);
        let reason = self
            .pod_reason
            .as_ref()
            .map(|(r, m)| (r.as_str(), m.as_str()));
        let patch = status::patch_pod(&obs, pod, reason, SystemTime::now());
        if self.last_status.as_ref() == Some(&patch) || already_so(&patch, &old) {
            self.last_status = Some(patch);
            if self.finished {
                self.final_unsent = false;
            }
            return;
        }
        match self
            .s
            .api
            .patch_status(&self.key.0, &self.key.1, &patch)
            .await
        {
            Ok(()) => {
                self.last_status = Some(patch);
                if self.finished {
                    self.final_unsent = false;
                }
                if let Some(r) = self.record.as_mut()
                    && r.reported != Some(true)
                {
                    r.reported = Some(true);
                    let _ = self.s.runner.store.save(r);
                }
            }
            Err(e) => tracing::warn!("pod {}: writing its status: {e}", self.label()),
        }
    }

    /// The pod is deleted (or gone): preStop hooks, stop within the grace
    /// period, tear down, and the final DELETE, as the kubelet does.
    async fn kill_pod(&mut self) -> Next {
        self.stop_all_probes();
        let pod = self.pod.clone();
        if let Some(r) = self.record.clone() {
            let grace = pod
                .as_ref()
                .and_then(|p| p.metadata.deletion_grace_period_seconds)
                .unwrap_or(r.grace_seconds)
                .max(0);
            let t = Instant::now();
            let grace_d = Duration::from_secs(grace as u64);
            if let Some(p) = &pod {
                for (i, app) in r.containers.iter().enumerate() {
                    if self.ctrs.get(i).is_some_and(|c| c.exited.is_some()) {
                        continue;
                    }
                    self.s.recorder.emit(
                        p,
                        Some(&app.name),
                        Kind::Normal,
                        "Killing",
                        &format!("Stopping container {}", app.name),
                    );
                }
            }
            // preStop hooks together, within the grace period.
            let hooks: Vec<_> = (0..r.containers.len())
                .filter_map(|i| self.hook_of(i, false).map(|h| (i, h)))
                .collect();
            let ip = self.pod_ip();
            futures::future::join_all(
                hooks
                    .iter()
                    .map(|(i, h)| run_hook(&self.s.runner, &r.containers[*i].id, h, &ip, grace_d)),
            )
            .await;
            // What the hooks left of the grace period, rounded up: the
            // containers get no less than the pod asked for.
            let left = grace_d.saturating_sub(t.elapsed());
            let left = (left.as_secs() + u64::from(left.subsec_nanos() > 0)) as i64;
            if let Err(e) = self.s.runner.teardown(&r, left).await {
                tracing::warn!("pod {}: stopping it: {e}", self.label());
                return Next::At(Some(Instant::now() + Duration::from_secs(2)));
            }
            self.record = None;
        }
        let deleting = pod
            .as_ref()
            .filter(|p| p.metadata.deletion_timestamp.is_some());
        if let Some(p) = deleting
            && !self.gone
        {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if let Err(e) = self
                .s
                .api
                .finish_delete(&self.key.0, &self.key.1, &uid)
                .await
            {
                tracing::warn!("pod {}: the final delete: {e}", self.label());
                return Next::At(Some(Instant::now() + Duration::from_secs(2)));
            }
        }
        Next::Done
    }
}

fn terminated(e: &Exit) -> State {
    State::Terminated {
        exit_code: e.code,
        reason: e.reason.clone(),
        started: e.started_at,
        finished: e.finished_at,
    }
}

/// Whether the server's status holds what the patch says already (after
/// a restart of the daemon): then writing it would change nothing.
fn already_so(patch: &Value, old: &Value) -> bool {
    let p = &patch["status"];
    p["phase"] == old["phase"]
        && p["containerStatuses"] == old["containerStatuses"]
        && p["podIP"] == old["podIP"]
        && p["hostIP"] == old["hostIP"]
        && conditions_hold(&p["conditions"], &old["conditions"])
}

fn conditions_hold(new: &Value, old: &Value) -> bool {
    new.as_array().into_iter().flatten().all(|n| {
        old.as_array().into_iter().flatten().any(|o| {
            o["type"] == n["type"]
                && o["status"] == n["status"]
                && (n["reason"].is_null() || o["reason"] == n["reason"])
        })
    })
}

/// Runs a hook on container `id`, bounded by `limit`; failures are logged
/// (a preStop failure does not keep a pod from stopping).
async fn run_hook(
    runner: &Arc<Runner>,
    id: &str,
    h: &probe::Handler,
    pod_ip: &str,
    limit: Duration,
) {
    let exec = CtrdExec {
        runner: runner.clone(),
        id: id.to_string(),
    };
    if let Outcome::Failure(m) = probe::check(h, pod_ip, limit, &exec).await {
        tracing::warn!("container {id}: hook failed: {m}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_ends_as_containerd_shows_it() {
        let t = |state| TaskInfo {
            state,
            pid: 1,
            exited_at: None,
        };
        assert_eq!(ended(Some(t(TaskState::Running))), None);
        assert_eq!(
            ended(Some(t(TaskState::Stopped { exit: 3 }))),
            Some((3, None))
        );
        assert_eq!(ended(None), Some((137, None)));
    }

    #[test]
    fn warnings_of_one_kind_share_a_key() {
        let a = warning_kind(
            r#"volume "kube-api-access-abcde": only emptyDir and hostPath volumes are supported"#,
        );
        let b = warning_kind(
            r#"volume "kube-api-access-fghij": only emptyDir and hostPath volumes are supported"#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            warning_kind("spec.enableServiceLinks is not supported by pod-runner; ignored")
        );
    }

    #[test]
    fn equal_conditions_need_no_write() {
        let old = serde_json::json!({"phase": "Running", "podIP": "10.244.1.2",
            "containerStatuses": [{"name": "web", "ready": true}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t"}]});
        let mut patch = serde_json::json!({"status": {"phase": "Running", "podIP": "10.244.1.2",
            "containerStatuses": [{"name": "web", "ready": true}],
            "conditions": [{"type": "Ready", "status": "True", "reason": null}]}});
        assert!(already_so(&patch, &old));
        patch["status"]["conditions"][0]["status"] = "False".into();
        assert!(!already_so(&patch, &old));
    }
}
