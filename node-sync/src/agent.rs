//! The daemon: independent reconcilers, each its own task on one runtime.
//! Node status and the Lease beat on a timer; routes follow a kube-runtime
//! watch of the Nodes (with backoff on API errors, and a reflector store
//! that holds the last complete list, so an error or a list in progress
//! never empties the routes); Services follow theirs
//! ([`services::reconciler`]). Blocking kernel and tool work runs off the
//! async workers with a deadline, so nothing one reconciler waits for
//! delays the Lease. A failed or timed-out step is reported through
//! [`Steps`] and retried with back-off; syncs are rate-bounded
//! ([`crate::pace`]). A 403 from a watcher is reported through
//! [`Access`], once per transition. Shutdown leaves everything programmed
//! in place.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector};
use serde_json::Value;

use crate::access::{self, Access, Resource, Verb};
use crate::blocking;
use crate::config::Config;
use crate::machine::Machine;
use crate::metrics::Metrics;
use crate::nodestatus::{self, Inputs, Reporter};
use crate::pace::{Backoff, Bounded, Next, Schedule};
use crate::routes::{self, Kernel};
use crate::services::backend::{Backend, ServicesBackend};
use crate::services::reconciler::{Pacing, Reconciler};
use crate::services::{self};
use crate::steps::{Failure, Steps};
use crate::watch::{self, Ev, news};

/// Status is sent at least this often, changed or not.
const REPORT_EVERY: Duration = Duration::from_secs(60);
const LEASE_EVERY: Duration = Duration::from_secs(10);
/// A beat (reads of the node, the status patch, the Lease) abandoned
/// after this long: the next one starts on time.
const BEAT_LIMIT: Duration = Duration::from_secs(8);
/// Reading the node's facts (statvfs of nodefs, /proc, the CNI config
/// dir) off the async workers, within this.
const FACTS_LIMIT: Duration = Duration::from_secs(3);
/// Routes are compared with the kernel this often without any event, to
/// repair what someone else changed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// One routes sync (a dump and a few rtnetlink messages) abandoned after
/// this long, and retried with back-off.
const ROUTES_LIMIT: Duration = Duration::from_secs(15);
/// Routes sync at once on a change, three times back to back, then at
/// most twice a second: a Node's create, its status and a delete come in
/// quick succession and are each worth following, while the status
/// updates of a thousand Nodes coalesce. A sync (a dump, a plan, a few
/// messages) costs milliseconds.
const ROUTES_MIN_INTERVAL: Duration = Duration::from_millis(500);
const ROUTES_BURST: u32 = 3;
/// Refused watches are asked about this often (see [`Access::recheck`]).
const RECHECK_EVERY: Duration = Duration::from_secs(10);

pub struct Agent {
    pub cfg: Config,
    /// For requests: read timeout bounded.
    pub client: Client,
    /// For watches: no read timeout, the server ends each watch.
    pub watch_client: Client,
    pub metrics: Arc<Metrics>,
    pub steps: Arc<Steps>,
    pub hostname: String,
    pub routes_ready: Arc<AtomicBool>,
    pub access: Arc<Access>,
}

/// What the heartbeat remembers between beats.
#[derive(Default)]
pub struct Beat {
    node_uid: Option<String>,
    conditions: Value,
    sent: Option<(Value, Instant)>,
    lease_at: Option<Instant>,
    /// The last facts read, for a beat whose read does not come in time.
    machine: Option<Machine>,
}

impl Agent {
    async fn runtime_version(&self) -> Result<String, String> {
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            containerd_api::Containerd::connect(&self.cfg.containerd_socket, "k8s.io"),
        )
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within 2 s",
                self.cfg.containerd_socket.display()
            )
        })?
        .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(2), c.version())
            .await
            .map_err(|_| "containerd did not answer its version call within 2 s".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Read on the blocking pool (see [`Agent::facts`]).
    fn cni(conf_dir: &Path) -> Result<(), String> {
        // libcni's rules, as containerd loads it: the first file that loads.
        cni_runtime::load_network(conf_dir)
            .map(|_| ())
            .map_err(|e| format!("CNI config: {e}"))
    }

    /// The node's facts and the CNI config check, off the async workers
    /// (statvfs of a hung filesystem never returns); the last facts when
    /// they do not come in time.
    async fn facts(&self, b: &mut Beat) -> Result<(Machine, Result<(), String>), BeatError> {
        let (nodefs, conf_dir) = (self.cfg.nodefs.clone(), self.cfg.cni_conf_dir.clone());
        match blocking::run("reading the node's facts", FACTS_LIMIT, move || {
            (Machine::read(&nodefs), Agent::cni(&conf_dir))
        })
        .await
        {
            Ok((m, cni)) => {
                b.machine = Some(m.clone());
                Ok((m, cni))
            }
            Err(e) => match &b.machine {
                Some(m) => Ok((m.clone(), Err(e.to_string()))),
                None => Err(e.into()),
            },
        }
    }

    /// One heartbeat: the Node registered, its status patched when it
    /// changed (or a minute passed), the Lease renewed every 10 s.
    pub async fn beat(&self, b: &mut Beat, force: bool) -> Result<(), BeatError> {
        let t = Instant::now();
        let reporter = Reporter::new(self.client.clone(), &self.cfg.node_name);
        let r = async {
            if b.node_uid.is_none() {
                let node = reporter
                    .ensure_node(&nodestatus::node_object(&self.cfg, &self.hostname))
                    .await?;
                b.node_uid = node.metadata.uid.clone();
                b.conditions = node
                    .status
                    .as_ref()
                    .and_then(|s| serde_json::to_value(&s.conditions).ok())
                    .unwrap_or(Value::Null);
            }
            let (machine, cni) = self.facts(b).await?;
            let inputs = Inputs {
                cfg: &self.cfg,
                hostname: &self.hostname,
                machine: &machine,
                runtime: self.runtime_version().await,
                cni,
                routes_ready: self.routes_ready.load(Ordering::SeqCst),
                routes_forbidden: self.access.denial(Resource::Nodes),
            };
            let status = nodestatus::status(&inputs, &b.conditions, SystemTime::now());
            let bare = nodestatus::without_times(&status);
            let due = match &b.sent {
                None => true,
                Some((last, at)) => force || *last != bare || at.elapsed() >= REPORT_EVERY,
            };
            if due {
                let node = reporter.patch_status(&status).await?;
                b.conditions = node
                    .status
                    .as_ref()
                    .and_then(|s| serde_json::to_value(&s.conditions).ok())
                    .unwrap_or(Value::Null);
                b.sent = Some((bare, Instant::now()));
                self.metrics.set(
                    "node_sync_node_ready",
                    &[],
                    if inputs.runtime.is_ok() && inputs.cni.is_ok() {
                        1.0
                    } else {
                        0.0
                    },
                );
            }
            // Renewed at this beat when waiting for the next one would
            // leave it older than LEASE_EVERY (at a 10-s tick: every beat).
            let tick = self.cfg.status_interval.min(LEASE_EVERY);
            if force
                || b.lease_at
                    .is_none_or(|at| at.elapsed() + tick > LEASE_EVERY)
            {
                reporter.renew_lease(b.node_uid.as_deref()).await?;
                b.lease_at = Some(Instant::now());
            }
            Ok::<(), BeatError>(())
        };
        let r = match tokio::time::timeout(BEAT_LIMIT, r).await {
            Ok(r) => r,
            Err(_) => Err(BeatError::TimedOut(BEAT_LIMIT)),
        };
        self.metrics
            .observe_sync("heartbeat", t.elapsed(), r.is_ok());
        if r.is_err() {
            // Registration is checked again after an error (the Node may
            // have been deleted).
            b.node_uid = None;
        }
        r
    }

    /// One full routes reconcile from a fresh list.
    pub async fn routes_once(&self, kernel: &Kernel) -> anyhow::Result<usize> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| access::explain(e, Resource::Nodes, Verb::List))?;
        self.metrics.set(
            "node_sync_objects_seen",
            &[("kind", "Node")],
            list.items.len() as f64,
        );
        let n = routes::sync(kernel, &list.items, &self.cfg.node_name, &self.metrics).await?;
        self.routes_ready.store(true, Ordering::SeqCst);
        Ok(n)
    }

    /// One Services sync from fresh lists; `None` with `--proxy-mode
    /// none`. Lists that fail leave the rules as they are.
    pub async fn services_once(&self) -> anyhow::Result<Option<(usize, &'static str)>> {
        use k8s_openapi::api::core::v1::{Endpoints, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let Some(mut backend) = Backend::choose(
            self.cfg.proxy_mode,
            self.cfg.cluster_cidr,
            &self.cfg.ipvs_scheduler,
        )?
        else {
            return Ok(None);
        };
        match backend.take_over().await {
            Ok(true) => tracing::info!(
                backend = backend.name(),
                "services: removed what the other proxy mode had programmed"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("services: removing the other proxy mode's rules: {e}"),
        }
        let lp = ListParams::default();
        let c = &self.client;
        use services::objects::{EpsObj, SliceObj, SvcObj, compact};
        let why = |r| move |e| access::explain(e, r, Verb::List);
        let svcs: Vec<SvcObj> = compact(
            Api::<Service>::all(c.clone())
                .list(&lp)
                .await
                .map_err(why(Resource::Services))?
                .items,
        );
        let slices: Vec<SliceObj> = compact(
            Api::<EndpointSlice>::all(c.clone())
                .list(&lp)
                .await
                .map_err(why(Resource::EndpointSlices))?
                .items,
        );
        let eps: Vec<EpsObj> = compact(
            Api::<Endpoints>::all(c.clone())
                .list(&lp)
                .await
                .map_err(why(Resource::Endpoints))?
                .items,
        );
        let (want, skipped) = services::model::desired(&svcs, &slices, &eps);
        for s in &skipped {
            tracing::warn!("services: {s}");
        }
        // nftables builds on the table it finds; IPVS syncs in full.
        let prev = backend.recheck(None).await.unwrap_or_else(|e| {
            tracing::warn!("services: reading what is programmed: {e}");
            None
        });
        backend.apply(&want, prev.as_deref()).await?;
        Ok(Some((want.len(), backend.name())))
    }

    /// Beats every status interval (at most [`LEASE_EVERY`]); a beat
    /// that fails is retried at the next tick, which is sooner than any
    /// back-off the Lease could afford.
    async fn heartbeat_loop(&self) {
        let mut b = Beat::default();
        let mut tick = tokio::time::interval(self.cfg.status_interval.min(LEASE_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.beat(&mut b, false).await {
                Ok(()) => self.steps.ok("heartbeat"),
                Err(e) => {
                    let why = if e.is_timeout() {
                        Failure::TimedOut(e.to_string())
                    } else {
                        Failure::Failed(e.to_string())
                    };
                    self.steps.failed("heartbeat", why, tick.period());
                }
            }
        }
    }

    async fn routes_loop(&self, kernel: Kernel) {
        const NAME: &str = "routes";
        let api: Api<Node> = Api::all(self.watch_client.clone());
        let (reader, writer) = reflector::store();
        let mut events = reflector(
            writer,
            watcher::watcher(api, watch::config(self.cfg.watch_timeout_seconds)),
        )
        .default_backoff()
        .boxed();
        let mut complete = false;
        let mut schedule = Schedule::new(
            Bounded::new(ROUTES_MIN_INTERVAL, ROUTES_BURST, Instant::now()),
            Backoff::new(Duration::from_secs(1), RESYNC_EVERY),
        );
        let start = tokio::time::Instant::now() + RESYNC_EVERY;
        let mut resync = tokio::time::interval_at(start, RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let on_news = |ev: Ev, complete: &mut bool| match ev {
            Ev::Failed(e) => {
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", "watch")]);
                tracing::warn!("watching nodes: {e}");
                false
            }
            Ev::Forbidden => {
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", "watch")]);
                false
            }
            Ev::Listing => false,
            Ev::Listed => {
                *complete = true;
                true
            }
            Ev::Changed => true,
        };
        loop {
            let next = if complete {
                schedule.next(Instant::now())
            } else {
                Next::Idle
            };
            let wake = next.due();
            tokio::select! {
                ev = events.next() => match ev {
                    None => return,
                    Some(ev) => if on_news(news(&self.access, Resource::Nodes, ev), &mut complete) {
                        schedule.want();
                    },
                },
                _ = resync.tick() => schedule.want(),
                _ = wake => {
                    // Events that are already here go into the same sync.
                    while let Some(Some(ev)) = events.next().now_or_never() {
                        on_news(news(&self.access, Resource::Nodes, ev), &mut complete);
                    }
                    if !complete || !schedule.start(Instant::now()) {
                        continue;
                    }
                    let nodes = reader.state();
                    self.metrics.set(
                        "node_sync_objects_seen",
                        &[("kind", "Node")],
                        nodes.len() as f64,
                    );
                    let sync = routes::sync(
                        &kernel,
                        nodes.iter().map(|n| n.as_ref()),
                        &self.cfg.node_name,
                        &self.metrics,
                    );
                    let r = match tokio::time::timeout(ROUTES_LIMIT, sync).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(Failure::Failed(e.to_string())),
                        Err(_) => {
                            self.metrics.inc("node_sync_errors_total", &[("reconciler", NAME)]);
                            Err(Failure::TimedOut(format!("no answer from the kernel within {ROUTES_LIMIT:?}")))
                        }
                    };
                    let wait = schedule.finished(Instant::now(), r.is_ok());
                    match r {
                        Ok(()) => {
                            self.routes_ready.store(true, Ordering::SeqCst);
                            self.steps.ok(NAME);
                        }
                        Err(why) => self.steps.failed(NAME, why, wait.unwrap_or_default()),
                    }
                }
            }
        }
    }

    /// Services, EndpointSlices and Endpoints watched into the backend
    /// `--proxy-mode` picks (see [`services::reconciler`]).
    async fn services_loop(&self) {
        let backend = match Backend::choose(
            self.cfg.proxy_mode,
            self.cfg.cluster_cidr,
            &self.cfg.ipvs_scheduler,
        ) {
            Ok(Some(b)) => b,
            Ok(None) => return std::future::pending().await,
            Err(e) => {
                // Routes and status go on; Services wait for a restart
                // with a mode this kernel has.
                tracing::error!("services: {e}");
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", "services")]);
                return std::future::pending().await;
            }
        };
        tracing::info!(mode = ?self.cfg.proxy_mode, backend = backend.name(), "services: backend chosen");
        use k8s_openapi::api::core::v1::{Endpoints, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        use services::objects::{self as obj, EpsObj, SliceObj, SvcObj};
        let c = &self.watch_client;
        let cfg = || watch::config(self.cfg.watch_timeout_seconds);
        // Only what the model reads is stored: see services::objects.
        let svcs = watcher::watcher(Api::<Service>::all(c.clone()), cfg())
            .map_ok(obj::event::<Service, SvcObj>)
            .default_backoff();
        let slices = watcher::watcher(Api::<EndpointSlice>::all(c.clone()), cfg())
            .map_ok(obj::event::<EndpointSlice, SliceObj>)
            .default_backoff();
        let eps = watcher::watcher(Api::<Endpoints>::all(c.clone()), cfg())
            .map_ok(obj::event::<Endpoints, EpsObj>)
            .default_backoff();
        Reconciler {
            backend,
            metrics: Arc::clone(&self.metrics),
            steps: Arc::clone(&self.steps),
            access: Arc::clone(&self.access),
            pacing: Pacing::default(),
        }
        .run(svcs, slices, eps)
        .await
    }

    async fn recheck_loop(&self) {
        let mut tick = tokio::time::interval(RECHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.access.recheck(&self.client).await;
        }
    }

    /// Runs until `shutdown` resolves, each reconciler its own task;
    /// leaves routes and the Node as they are.
    pub async fn run(self, kernel: Kernel, shutdown: impl std::future::Future<Output = ()>) {
        let me = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        let a = Arc::clone(&me);
        tasks.spawn(async move { a.heartbeat_loop().await });
        let a = Arc::clone(&me);
        tasks.spawn(async move { a.routes_loop(kernel).await });
        let a = Arc::clone(&me);
        tasks.spawn(async move { a.services_loop().await });
        let a = Arc::clone(&me);
        tasks.spawn(async move { a.recheck_loop().await });
        tokio::select! {
            Some(r) = tasks.join_next() => {
                if let Err(e) = r {
                    tracing::error!("a reconciler ended: {e}");
                }
            }
            _ = shutdown => tracing::info!("stopping; routes and the Node stay as programmed"),
        }
        tasks.abort_all();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Facts(#[from] blocking::BlockingError),
    #[error("no status and Lease written within {0:?}")]
    TimedOut(Duration),
}

impl BeatError {
    pub fn is_timeout(&self) -> bool {
        match self {
            BeatError::Api(_) => false,
            BeatError::Facts(e) => e.is_timeout(),
            BeatError::TimedOut(_) => true,
        }
    }
}
