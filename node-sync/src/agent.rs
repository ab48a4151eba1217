//! The daemon: independent reconcilers on one runtime. Node status and the
//! Lease beat on a timer; routes follow a kube-runtime watch of the Nodes
//! (with backoff on API errors, and a reflector store that holds the last
//! complete list, so an error or a list in progress never empties the
//! routes). A 403 from a watcher is reported through [`Access`], once per
//! transition. Shutdown leaves everything programmed in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use serde_json::Value;

use crate::access::{self, Access, Resource, Verb};
use crate::config::Config;
use crate::machine::Machine;
use crate::metrics::Metrics;
use crate::nodestatus::{self, Inputs, Reporter};
use crate::routes::{self, Kernel};
use crate::services::backend::Backend;
use crate::services::{self, ServicePort};

/// One watch's news, whatever it watches.
enum Ev {
    Listing,
    Listed,
    Changed,
    Failed(String),
    /// A 403: [`Access`] has said so.
    Forbidden,
}

/// `r` told to `access` (as `resource`'s), and what it means here.
fn news<K>(access: &Access, resource: Resource, r: Result<Event<K>, watcher::Error>) -> Ev {
    access.observe(resource, &r);
    match r {
        Ok(Event::Init | Event::InitApply(_)) => Ev::Listing,
        Ok(Event::InitDone) => Ev::Listed,
        Ok(Event::Apply(_) | Event::Delete(_)) => Ev::Changed,
        Err(e) if access::watch_forbidden(&e).is_some() => Ev::Forbidden,
        Err(e) => Ev::Failed(e.to_string()),
    }
}

/// Status is sent at least this often, changed or not.
const REPORT_EVERY: Duration = Duration::from_secs(60);
const LEASE_EVERY: Duration = Duration::from_secs(10);
/// Routes are compared with the kernel this often without any event, to
/// repair what someone else changed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Refused watches are asked about this often (see [`Access::recheck`]).
const RECHECK_EVERY: Duration = Duration::from_secs(10);

pub struct Agent {
    pub cfg: Config,
    pub client: Client,
    pub metrics: Arc<Metrics>,
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

    fn cni(&self) -> Result<(), String> {
        // libcni's rules, as containerd loads it: the first file that loads.
        cni_runtime::load_network(&self.cfg.cni_conf_dir)
            .map(|_| ())
            .map_err(|e| format!("CNI config: {e}"))
    }

    /// One heartbeat: the Node registered, its status patched when it
    /// changed (or a minute passed), the Lease renewed every 10 s.
    pub async fn beat(&self, b: &mut Beat, force: bool) -> Result<(), kube::Error> {
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
            let machine = Machine::read(&self.cfg.nodefs);
            let inputs = Inputs {
                cfg: &self.cfg,
                hostname: &self.hostname,
                machine: &machine,
                runtime: self.runtime_version().await,
                cni: self.cni(),
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
            if force || b.lease_at.is_none_or(|at| at.elapsed() >= LEASE_EVERY) {
                reporter.renew_lease(b.node_uid.as_deref()).await?;
                b.lease_at = Some(Instant::now());
            }
            Ok(())
        }
        .await;
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
        take_over(&backend).await;
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
        let prev = backend.recheck(None).await;
        backend.apply(&want, prev.as_deref()).await?;
        Ok(Some((want.len(), backend.name())))
    }

    async fn heartbeat_loop(&self) {
        let mut b = Beat::default();
        let mut tick = tokio::time::interval(self.cfg.status_interval.min(LEASE_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.beat(&mut b, false).await {
                tracing::warn!("heartbeat: {e}");
            }
        }
    }

    async fn routes_loop(&self, kernel: &Kernel) {
        let api: Api<Node> = Api::all(self.client.clone());
        let (reader, writer) = reflector::store();
        let mut events = reflector(writer, watcher::watcher(api, watcher::Config::default()))
            .default_backoff()
            .boxed();
        let mut complete = false;
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = tokio::select! {
                ev = events.next() => match ev.map(|e| news(&self.access, Resource::Nodes, e)) {
                    None => return,
                    Some(Ev::Failed(e)) => {
                        self.metrics.inc("node_sync_errors_total", &[("reconciler", "watch")]);
                        tracing::warn!("watching nodes: {e}");
                        false
                    }
                    Some(Ev::Forbidden) => {
                        self.metrics.inc("node_sync_errors_total", &[("reconciler", "watch")]);
                        false
                    }
                    Some(Ev::Listing) => false,
                    Some(Ev::Listed) => { complete = true; true }
                    Some(Ev::Changed) => true,
                },
                _ = resync.tick() => true,
            };
            if !changed || !complete {
                continue;
            }
            // Events that are already here go into the same sync.
            while let Some(Some(ev)) = events.next().now_or_never() {
                if let Ev::Listed = news(&self.access, Resource::Nodes, ev) {
                    complete = true;
                }
            }
            let nodes = reader.state();
            self.metrics.set(
                "node_sync_objects_seen",
                &[("kind", "Node")],
                nodes.len() as f64,
            );
            match routes::sync(
                kernel,
                nodes.iter().map(|n| n.as_ref()),
                &self.cfg.node_name,
                &self.metrics,
            )
            .await
            {
                Ok(_) => self.routes_ready.store(true, Ordering::SeqCst),
                Err(e) => tracing::warn!("routes: {e}"),
            }
        }
    }

    /// Programs `want` when it differs from what is there (`last`: what
    /// we applied, or what we found at start).
    async fn services_apply(
        &self,
        backend: &mut Backend,
        want: Vec<ServicePort>,
        last: &mut Option<Vec<ServicePort>>,
    ) {
        if last.as_ref() == Some(&want) {
            return;
        }
        let t = Instant::now();
        let r = backend.apply(&want, last.as_deref()).await;
        self.metrics
            .observe_sync("services", t.elapsed(), r.is_ok());
        match r {
            Ok(()) => {
                tracing::info!(
                    services = want.len(),
                    took = ?t.elapsed(),
                    "services: {} programmed",
                    backend.name()
                );
                self.metrics
                    .set("node_sync_service_ports_programmed", &[], want.len() as f64);
                self.metrics.set(
                    "node_sync_service_endpoints_programmed",
                    &[],
                    want.iter().map(|s| s.endpoints.len()).sum::<usize>() as f64,
                );
                *last = Some(want);
            }
            Err(e) => tracing::warn!("services: {e}"),
        }
    }

    /// Services, EndpointSlices and Endpoints watched; the table follows
    /// once all three lists are complete, so a partial list or an API
    /// error never empties it. What a previous run programmed is adopted.
    async fn services_loop(&self) {
        let mut backend = match Backend::choose(
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
        take_over(&backend).await;
        self.metrics.set(
            "node_sync_proxy_backend",
            &[("backend", backend.name())],
            1.0,
        );
        use k8s_openapi::api::core::v1::{Endpoints, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let c = &self.client;
        use services::objects::{self as obj, EpsObj, SliceObj, SvcObj};
        let (svc_r, svc_w) = reflector::store::<SvcObj>();
        let (sl_r, sl_w) = reflector::store::<SliceObj>();
        let (ep_r, ep_w) = reflector::store::<EpsObj>();
        let cfg = watcher::Config::default;
        // Only what the model reads is stored: see services::objects.
        let streams = vec![
            reflector(
                svc_w,
                watcher::watcher(Api::<Service>::all(c.clone()), cfg())
                    .map_ok(obj::event::<Service, SvcObj>),
            )
            .default_backoff()
            .map(|e| (0usize, news(&self.access, Resource::Services, e)))
            .boxed(),
            reflector(
                sl_w,
                watcher::watcher(Api::<EndpointSlice>::all(c.clone()), cfg())
                    .map_ok(obj::event::<EndpointSlice, SliceObj>),
            )
            .default_backoff()
            .map(|e| (1usize, news(&self.access, Resource::EndpointSlices, e)))
            .boxed(),
            reflector(
                ep_w,
                watcher::watcher(Api::<Endpoints>::all(c.clone()), cfg())
                    .map_ok(obj::event::<Endpoints, EpsObj>),
            )
            .default_backoff()
            .map(|e| (2usize, news(&self.access, Resource::Endpoints, e)))
            .boxed(),
        ];
        let mut events = futures::stream::select_all(streams);
        let mut complete = [false; 3];
        // What a previous run left: adopted (nftables), or read in full by
        // the first sync (IPVS).
        let mut last = backend.recheck(None).await;
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut changed = tokio::select! {
                ev = events.next() => match ev {
                    None => return,
                    Some((i, ev)) => self.services_news(i, ev, &mut complete),
                },
                _ = resync.tick() => {
                    // Repair what someone else changed: nftables by
                    // reading the table back if anything was committed
                    // since; IPVS by a sync, which also compares the
                    // sets, chains and VIPs and changes only what differs.
                    last = backend.recheck(last.take()).await;
                    true
                }
            };
            while let Some(Some((i, ev))) = events.next().now_or_never() {
                changed |= self.services_news(i, ev, &mut complete);
            }
            if !changed || complete.contains(&false) {
                continue;
            }
            let (svcs, slices, eps) = (svc_r.state(), sl_r.state(), ep_r.state());
            self.metrics.set(
                "node_sync_objects_seen",
                &[("kind", "Service")],
                svcs.len() as f64,
            );
            self.metrics.set(
                "node_sync_objects_seen",
                &[("kind", "EndpointSlice")],
                slices.len() as f64,
            );
            self.metrics.set(
                "node_sync_objects_seen",
                &[("kind", "Endpoints")],
                eps.len() as f64,
            );
            let (want, skipped) = services::model::desired(
                svcs.iter().map(AsRef::as_ref),
                slices.iter().map(AsRef::as_ref),
                eps.iter().map(AsRef::as_ref),
            );
            drop((svcs, slices, eps));
            for s in &skipped {
                tracing::warn!("services: {s}");
            }
            self.services_apply(&mut backend, want, &mut last).await;
        }
    }

    fn services_news(&self, i: usize, ev: Ev, complete: &mut [bool; 3]) -> bool {
        match ev {
            Ev::Listing => false,
            Ev::Listed => {
                complete[i] = true;
                true
            }
            Ev::Changed => true,
            Ev::Failed(e) => {
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", "watch")]);
                tracing::warn!("watching services: {e}");
                false
            }
            Ev::Forbidden => {
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", "watch")]);
                false
            }
        }
    }

    async fn recheck_loop(&self) {
        let mut tick = tokio::time::interval(RECHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.access.recheck(&self.client).await;
        }
    }

    /// Runs until `shutdown` resolves; leaves routes and the Node as they are.
    pub async fn run(self, kernel: Kernel, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = self.heartbeat_loop() => {}
            _ = self.routes_loop(&kernel) => {}
            _ = self.services_loop() => {}
            _ = self.recheck_loop() => {}
            _ = shutdown => tracing::info!("stopping; routes and the Node stay as programmed"),
        }
    }
}

/// The other backend's leftovers removed, with a line saying so; a
/// failure is logged, and Services are programmed all the same.
async fn take_over(backend: &Backend) {
    match backend.take_over().await {
        Ok(true) => tracing::info!(
            backend = backend.name(),
            "services: removed what the other proxy mode had programmed"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!("services: removing the other proxy mode's rules: {e}"),
    }
}
