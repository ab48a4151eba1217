//! `pod-runner run`: the node's pod engine as a daemon. It watches the
//! Pods bound to this node (`spec.nodeName`, which a node's identity may
//! list and watch) and gives each its own worker, as the kubelet's pod
//! workers do: one task per pod, woken by the pod's updates, by
//! containerd's task events (exit, OOM) and by its own timers (back-off,
//! probes). Workers share the engine of the one-shot commands and its
//! records, and take the pod's lock for every step, so a `pod-runner
//! create` or `delete` never acts on a pod at the same moment.
//!
//! Stopping the daemon (SIGTERM, or a crash) leaves the pods running: the
//! next start adopts them from their records.

mod events;
mod plan;
mod probes;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use tokio::sync::mpsc;

use crate::api::KubeApi;
use crate::runner::Runner;
use containerd_api::Event;

pub use events::{Kind, Recorder};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("pod records: {0}")]
    State(#[from] crate::state::StateError),
    #[error("signals: {0}")]
    Signal(std::io::Error),
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often each worker checks its pod against containerd even
    /// without an event (the kubelet's `--sync-frequency`, 1 min): the
    /// safety net for an event lost while containerd's stream reconnects.
    pub resync: Duration,
    /// The watch's `timeoutSeconds`.
    pub watch_timeout: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Duration::from_secs(60),
            watch_timeout: 290,
        }
    }
}

/// What wakes a worker.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    /// The pod as the API has it now.
    Pod(Box<Pod>),
    /// The API object is gone (deleted, or absent when the daemon
    /// started).
    Gone,
    /// A task of this containerd namespace exited.
    Exit {
        id: String,
        code: u32,
        at: Option<SystemTime>,
    },
    Oom {
        id: String,
    },
    /// A probe's verdict or a failure worth an event.
    Probe(probes::Report),
}

type Key = (String, String);

struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    task: tokio::task::JoinHandle<()>,
}

/// The daemon; runs until SIGTERM or SIGINT.
pub async fn run(
    runner: Arc<Runner>,
    api: KubeApi,
    watch_api: KubeApi,
    opts: Options,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let recorder = Recorder::new(api.client(), &runner.node);
    let (requeue, mut requeued) = mpsc::unbounded_channel();
    let shared = Arc::new(worker::Shared {
        runner: runner.clone(),
        api,
        recorder,
        resync: opts.resync,
        requeue,
        said: std::sync::Mutex::new(std::collections::HashSet::new()),
    });

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward_task_events(runner.clone(), ev_tx));

    let pods: kube::Api<Pod> = kube::Api::all(watch_api.client());
    let cfg = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", runner.node))
        .timeout(opts.watch_timeout);
    let mut stream = Box::pin(watcher::watcher(pods, cfg).default_backoff());
    let mut workers: HashMap<Key, Handle> = HashMap::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The pods of the list in progress: records of any other pod are of
    // pods deleted while the daemon was down.
    let mut listing: Option<Vec<Key>> = None;
    let mut reap = tokio::time::interval(Duration::from_secs(5));
    tracing::info!(
        "pod-runner run: watching the pods bound to node {}",
        runner.node
    );
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(WatchEvent::Init)) => listing = Some(Vec::new()),
                Some(Ok(WatchEvent::InitApply(pod))) => {
                    if let Some(l) = listing.as_mut() {
                        l.push(key_of(&pod));
                    }
                    dispatch(&mut workers, &shared, &stop_rx, Msg::Pod(Box::new(pod)));
                }
                Some(Ok(WatchEvent::InitDone)) => {
                    let listed = listing.take().unwrap_or_default();
                    for key in gone_pods(&runner, &workers, &listed) {
                        dispatch_key(&mut workers, &shared, &stop_rx, key, Msg::Gone);
                    }
                }
                Some(Ok(WatchEvent::Apply(pod))) => {
                    dispatch(&mut workers, &shared, &stop_rx, Msg::Pod(Box::new(pod)));
                }
                Some(Ok(WatchEvent::Delete(pod))) => {
                    let key = key_of(&pod);
                    if let Some(h) = workers.get(&key) {
                        let _ = h.tx.send(Msg::Gone);
                    }
                }
                // The watcher re-lists by itself, with back-off.
                Some(Err(e)) => tracing::warn!("watching pods: {e}"),
                None => break,
            },
            Some(ev) = ev_rx.recv() => {
                // A handful of workers each: cheaper than an index that
                // follows every restart's new container ID.
                workers.retain(|_, h| !h.task.is_finished());
                for h in workers.values() {
                    let _ = h.tx.send(ev.clone());
                }
            }
            Some((key, msg)) = requeued.recv() => {
                dispatch_key(&mut workers, &shared, &stop_rx, key, msg);
            }
            _ = reap.tick() => workers.retain(|_, h| !h.task.is_finished()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("pod-runner run: stopping; the pods keep running");
    // Workers finish the step they are in (a half-made pod would be
    // made again at the next start, but a finished step is cheaper).
    let _ = stop_tx.send(true);
    let all = futures::future::join_all(workers.into_values().map(|h| h.task));
    if tokio::time::timeout(STOP_WAIT, all).await.is_err() {
        tracing::warn!("pod-runner run: steps still running after {STOP_WAIT:?}; stopping anyway");
    }
    Ok(())
}

fn key_of(pod: &Pod) -> Key {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Keys with a record on this node but no pod in the list just done.
fn gone_pods(runner: &Runner, workers: &HashMap<Key, Handle>, listed: &[Key]) -> Vec<Key> {
    let mut keys: Vec<Key> = match runner.store.all() {
        Ok(records) => records.into_iter().map(|r| (r.namespace, r.name)).collect(),
        Err(e) => {
            tracing::warn!("reading the pod records: {e}");
            Vec::new()
        }
    };
    keys.extend(workers.keys().cloned());
    keys.sort();
    keys.dedup();
    keys.retain(|k| !listed.contains(k));
    keys
}

/// How long a stopping daemon lets its workers finish their step.
const STOP_WAIT: Duration = Duration::from_secs(10);

fn dispatch(
    workers: &mut HashMap<Key, Handle>,
    shared: &Arc<worker::Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
    msg: Msg,
) {
    if let Msg::Pod(p) = &msg {
        let k = key_of(p);
        dispatch_key(workers, shared, stop, k, msg);
    }
}

/// Sends `msg` to the pod's worker, starting one if it has none (or its
/// last one ended).
fn dispatch_key(
    workers: &mut HashMap<Key, Handle>,
    shared: &Arc<worker::Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
    key: Key,
    msg: Msg,
) {
    if let Some(h) = workers.get(&key)
        && !h.task.is_finished()
        && h.tx.send(msg.clone()).is_ok()
    {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(msg);
    let task = tokio::spawn(worker::run(
        shared.clone(),
        key.clone(),
        tx.clone(),
        rx,
        stop.clone(),
    ));
    workers.insert(key, Handle { tx, task });
}

/// containerd's task exits and OOMs of our namespace, to the workers.
/// The subscription is made again after containerd restarts; workers
/// catch up on what passed meanwhile at their next resync.
async fn forward_task_events(runner: Arc<Runner>, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        match runner
            .ctrd
            .subscribe(&["topic==\"/tasks/exit\"", "topic==\"/tasks/oom\""])
            .await
        {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                while let Some(ev) = stream.next().await {
                    let msg = match ev {
                        Ok(env) => match env.event {
                            // Exec'd processes (probes, hooks) end too.
                            Event::TaskExit {
                                container_id,
                                exec_id,
                                exit_status,
                                exited_at,
                                ..
                            } if exec_id.is_empty() || exec_id == container_id => Msg::Exit {
                                id: container_id,
                                code: exit_status,
                                at: exited_at,
                            },
                            Event::TaskOom { container_id } => Msg::Oom { id: container_id },
                            _ => continue,
                        },
                        Err(e) => {
                            tracing::warn!("containerd events: {e}");
                            break;
                        }
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!("subscribing to containerd's events: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
