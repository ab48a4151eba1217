//! The Services reconciler: Services, EndpointSlices and Endpoints from
//! their watches into a [`ServicesBackend`]. It programs only from three
//! complete lists, so a partial list or an API error never empties what
//! is programmed; adopts what a previous run left; rechecks the kernel
//! every resync; syncs at most as often as [`Pacing`] allows; and reports
//! a failed or timed-out step through [`Steps`], retrying with back-off.
//!
//! The watch streams come from the caller: kube-runtime watchers in the
//! daemon, channels in the unit tests below.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};

use super::ServicePort;
use super::backend::{BackendError, ServicesBackend};
use super::objects::{EpsObj, SliceObj, SvcObj};
use crate::access::{Access, Resource};
use crate::metrics::Metrics;
use crate::pace::{Backoff, Bounded, Next, Schedule};
use crate::steps::{Failure, Steps};
use crate::watch::{Ev, news};

const NAME: &str = "services";

/// How often the reconciler may sync and recheck.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// kube-proxy's minSyncPeriod and burstSyncs.
    pub min_interval: Duration,
    pub burst: u32,
    /// The kernel is compared with what was programmed this often, to
    /// repair what someone else changed.
    pub resync: Duration,
    /// The first wait after a failure, doubled up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

/// A change of a Service and its endpoints comes as a few events in a few
/// milliseconds (the Service, its Endpoints, its slices), each worth
/// programming at once: five syncs back to back, then five a second (an
/// incremental sync costs milliseconds). A storm of changes is still
/// coalesced, and the rules lag by at most 200 ms.
impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            min_interval: Duration::from_millis(200),
            burst: 5,
            resync: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// One watch stream of `K`, as kube-runtime's watcher yields it.
pub trait WatchStream<K>: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static {}
impl<K, S> WatchStream<K> for S where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
{
}

pub struct Reconciler<B> {
    pub backend: B,
    pub metrics: Arc<Metrics>,
    pub steps: Arc<Steps>,
    pub access: Arc<Access>,
    pub pacing: Pacing,
}

impl<B: ServicesBackend> Reconciler<B> {
    /// Runs until the streams end (never, for kube-runtime watchers).
    pub async fn run(
        mut self,
        services: impl WatchStream<SvcObj>,
        slices: impl WatchStream<SliceObj>,
        endpoints: impl WatchStream<EpsObj>,
    ) {
        self.take_over().await;
        self.metrics.set(
            "node_sync_proxy_backend",
            &[("backend", self.backend.name())],
            1.0,
        );
        let (svc_r, svc_w) = reflector::store::<SvcObj>();
        let (sl_r, sl_w) = reflector::store::<SliceObj>();
        let (ep_r, ep_w) = reflector::store::<EpsObj>();
        let access = Arc::clone(&self.access);
        let (a1, a2, a3) = (Arc::clone(&access), Arc::clone(&access), access);
        let streams = vec![
            reflector(svc_w, services)
                .map(move |e| (0usize, news(&a1, Resource::Services, e)))
                .boxed(),
            reflector(sl_w, slices)
                .map(move |e| (1usize, news(&a2, Resource::EndpointSlices, e)))
                .boxed(),
            reflector(ep_w, endpoints)
                .map(move |e| (2usize, news(&a3, Resource::Endpoints, e)))
                .boxed(),
        ];
        let mut events = futures::stream::select_all(streams);
        let mut complete = [false; 3];
        // What a previous run left: adopted (nftables), or read in full by
        // the first sync (IPVS).
        let mut last = self.recheck(None).await;
        let p = self.pacing;
        let mut schedule = Schedule::new(
            Bounded::new(p.min_interval, p.burst, Instant::now()),
            Backoff::new(p.backoff, p.backoff_max),
        );
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + p.resync, p.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = if complete.contains(&false) {
                Next::Idle
            } else {
                schedule.next(Instant::now())
            };
            let wake = next.due();
            tokio::select! {
                ev = events.next() => match ev {
                    None => return,
                    Some((i, ev)) => if self.news(i, ev, &mut complete) { schedule.want() },
                },
                _ = resync.tick() => {
                    // Repair what someone else changed: nftables by
                    // reading the table back if anything was committed
                    // since; IPVS by a sync, which also compares the
                    // sets, chains and VIPs and changes only what differs.
                    last = self.recheck(last.take()).await;
                    schedule.want();
                }
                _ = wake => {
                    // Events that are already here go into the same sync.
                    while let Some(Some((i, ev))) = events.next().now_or_never() {
                        self.news(i, ev, &mut complete);
                    }
                    if complete.contains(&false) || !schedule.start(Instant::now()) {
                        continue;
                    }
                    let want = self.desired(&svc_r, &sl_r, &ep_r);
                    let ok = self.apply(want, &mut last).await;
                    let wait = schedule.finished(Instant::now(), ok.is_ok());
                    match ok {
                        Ok(()) => self.steps.ok(NAME),
                        Err(e) => self.steps.failed(NAME, failure(&e), wait.unwrap_or_default()),
                    }
                }
            }
        }
    }

    /// The other backend's leftovers removed, with a line saying so; a
    /// failure is logged, and Services are programmed all the same.
    async fn take_over(&mut self) {
        let name = self.backend.name();
        match self.backend.take_over().await {
            Ok(true) => tracing::info!(
                backend = name,
                "services: removed what the other proxy mode had programmed"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("services: removing the other proxy mode's rules: {e}"),
        }
    }

    /// What the next apply builds on; a failure is reported, and the next
    /// apply then reads or rewrites in full.
    async fn recheck(&mut self, last: Option<Vec<ServicePort>>) -> Option<Vec<ServicePort>> {
        match self.backend.recheck(last).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics
                    .inc("node_sync_errors_total", &[("reconciler", NAME)]);
                self.steps.failed(NAME, failure(&e), self.pacing.backoff);
                None
            }
        }
    }

    fn desired(
        &self,
        svc: &reflector::Store<SvcObj>,
        sl: &reflector::Store<SliceObj>,
        ep: &reflector::Store<EpsObj>,
    ) -> Vec<ServicePort> {
        let (svcs, slices, eps) = (svc.state(), sl.state(), ep.state());
        for (kind, n) in [
            ("Service", svcs.len()),
            ("EndpointSlice", slices.len()),
            ("Endpoints", eps.len()),
        ] {
            self.metrics
                .set("node_sync_objects_seen", &[("kind", kind)], n as f64);
        }
        let (want, skipped) = super::model::desired(
            svcs.iter().map(AsRef::as_ref),
            slices.iter().map(AsRef::as_ref),
            eps.iter().map(AsRef::as_ref),
        );
        for s in &skipped {
            tracing::warn!("services: {s}");
        }
        want
    }

    /// Programs `want` when it differs from what is there (`last`: what
    /// we applied, or what we found at start).
    async fn apply(
        &mut self,
        want: Vec<ServicePort>,
        last: &mut Option<Vec<ServicePort>>,
    ) -> Result<(), BackendError> {
        if last.as_ref() == Some(&want) {
            return Ok(());
        }
        let t = Instant::now();
        let r = self.backend.apply(&want, last.as_deref()).await;
        self.metrics.observe_sync(NAME, t.elapsed(), r.is_ok());
        r?;
        tracing::info!(
            services = want.len(),
            took = ?t.elapsed(),
            "services: {} programmed",
            self.backend.name()
        );
        self.metrics
            .set("node_sync_service_ports_programmed", &[], want.len() as f64);
        self.metrics.set(
            "node_sync_service_endpoints_programmed",
            &[],
            want.iter().map(|s| s.endpoints.len()).sum::<usize>() as f64,
        );
        *last = Some(want);
        Ok(())
    }

    fn news(&self, i: usize, ev: Ev, complete: &mut [bool; 3]) -> bool {
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
}

pub(crate) fn failure(e: &BackendError) -> Failure {
    if e.is_timeout() {
        Failure::TimedOut(e.to_string())
    } else {
        Failure::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc::{UnboundedSender, unbounded};
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use serde_json::json;

    use super::*;
    use crate::services::Proto;
    use crate::services::fake::{Call, Fake, Fault, State};
    use crate::services::test_support::{sp, tutorial};

    type Tx<K> = UnboundedSender<Result<Event<K>, watcher::Error>>;

    /// The reconciler on the fake, fed by three channels.
    struct Harness {
        svc: Tx<SvcObj>,
        sl: Tx<SliceObj>,
        ep: Tx<EpsObj>,
        fake: Fake,
        metrics: Arc<Metrics>,
        steps: Arc<Steps>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn fast() -> Pacing {
        Pacing {
            min_interval: Duration::ZERO,
            burst: 1,
            resync: Duration::from_secs(3600),
            backoff: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
        }
    }

    fn start(state: State, pacing: Pacing) -> Harness {
        let fake = Fake(Arc::new(std::sync::Mutex::new(state)));
        let metrics = Arc::new(Metrics::default());
        let steps = Arc::new(Steps::new(Arc::clone(&metrics)));
        let (svc, svc_rx) = unbounded();
        let (sl, sl_rx) = unbounded();
        let (ep, ep_rx) = unbounded();
        let r = Reconciler {
            backend: fake.clone(),
            metrics: Arc::clone(&metrics),
            steps: Arc::clone(&steps),
            access: Arc::new(Access::new(Arc::clone(&metrics))),
            pacing,
        };
        let task = tokio::spawn(r.run(svc_rx, sl_rx, ep_rx));
        Harness {
            svc,
            sl,
            ep,
            fake,
            metrics,
            steps,
            task,
        }
    }

    fn send<K>(tx: &Tx<K>, evs: Vec<Event<K>>) {
        for e in evs {
            tx.unbounded_send(Ok(e)).expect("send");
        }
    }

    fn web() -> SvcObj {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": "web-service", "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": "10.254.10.128",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }))
        .expect("service");
        s.into()
    }

    fn web_eps(ips: &[&str]) -> EpsObj {
        let addrs: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        let e: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web-service", "namespace": "default", "resourceVersion": "2"},
            "subsets": [{"addresses": addrs,
                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
        }))
        .expect("endpoints");
        e.into()
    }

    fn tutorial_eps() -> EpsObj {
        web_eps(&["10.244.1.2", "10.244.2.2"])
    }

    /// Each list complete: the tutorial Service and its Endpoints, no slices.
    fn list_all(h: &Harness) {
        send(
            &h.svc,
            vec![Event::Init, Event::InitApply(web()), Event::InitDone],
        );
        send(&h.sl, vec![Event::Init, Event::InitDone]);
        send(
            &h.ep,
            vec![
                Event::Init,
                Event::InitApply(tutorial_eps()),
                Event::InitDone,
            ],
        );
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    #[tokio::test]
    async fn waits_for_all_three_lists_before_the_first_sync() {
        let h = start(State::default(), fast());
        send(
            &h.svc,
            vec![Event::Init, Event::InitApply(web()), Event::InitDone],
        );
        send(&h.sl, vec![Event::Init, Event::InitDone]);
        send(&h.ep, vec![Event::Init, Event::InitApply(tutorial_eps())]);
        settle().await;
        assert!(
            h.fake.state().applies().is_empty(),
            "{:?}",
            h.fake.state().calls
        );
        send(&h.ep, vec![Event::InitDone]);
        until("the first sync", || !h.fake.state().applies().is_empty()).await;
        let s = h.fake.state();
        assert_eq!(s.applies(), vec![vec![tutorial()]]);
        // Take-over, then adopting what is there, then the sync.
        let kinds: Vec<_> = s.calls.iter().map(|(_, c)| c.clone()).collect();
        assert_eq!(kinds[..2], [Call::TakeOver, Call::Recheck]);
        drop(s);
        assert_eq!(
            h.metrics.get("node_sync_service_ports_programmed", &[]),
            Some(1.0)
        );
        assert_eq!(h.steps.render(), "services ok\n");
    }

    #[tokio::test]
    async fn an_error_after_a_partial_list_empties_nothing() {
        // A previous run programmed the tutorial Service.
        let h = start(
            State {
                programmed: Some(vec![tutorial()]),
                ..State::default()
            },
            fast(),
        );
        // The Services list breaks off after one object; the others are
        // complete, Endpoints with nothing in it yet.
        send(&h.svc, vec![Event::Init, Event::InitApply(web())]);
        h.svc
            .unbounded_send(Err(watcher::Error::NoResourceVersion))
            .expect("send");
        send(&h.sl, vec![Event::Init, Event::InitDone]);
        send(&h.ep, vec![Event::Init, Event::InitDone]);
        settle().await;
        assert!(
            h.fake.state().applies().is_empty(),
            "{:?}",
            h.fake.state().calls
        );
        assert_eq!(
            h.metrics
                .get("node_sync_errors_total", &[("reconciler", "watch")]),
            Some(1.0)
        );
        // The relist completes: what is programmed is what is wanted.
        send(&h.ep, vec![Event::Apply(tutorial_eps())]);
        send(
            &h.svc,
            vec![Event::Init, Event::InitApply(web()), Event::InitDone],
        );
        settle().await;
        assert!(
            h.fake.state().applies().is_empty(),
            "{:?}",
            h.fake.state().calls
        );
        // A relist that breaks off again keeps the last complete list.
        send(&h.svc, vec![Event::Init]);
        h.svc
            .unbounded_send(Err(watcher::Error::NoResourceVersion))
            .expect("send");
        // A change after it is programmed on top of that list.
        send(&h.ep, vec![Event::Apply(web_eps(&["10.244.2.2"]))]);
        until("the change", || !h.fake.state().applies().is_empty()).await;
        settle().await;
        let one = sp("10.254.10.128", 80, Proto::Tcp, &["10.244.2.2:8080"]);
        assert_eq!(h.fake.state().applies(), vec![vec![one.clone()]]);
        assert_eq!(h.fake.state().programmed, Some(vec![one]));
    }

    #[tokio::test]
    async fn a_resync_repairs_what_someone_else_changed() {
        let h = start(
            State::default(),
            Pacing {
                resync: Duration::from_millis(100),
                ..fast()
            },
        );
        list_all(&h);
        until("the first sync", || h.fake.state().applies().len() == 1).await;
        // Unchanged: resyncs recheck and apply nothing.
        settle().await;
        settle().await;
        assert_eq!(h.fake.state().applies().len(), 1);
        let rechecks = || {
            h.fake
                .state()
                .calls
                .iter()
                .filter(|(_, c)| *c == Call::Recheck)
                .count()
        };
        assert!(rechecks() >= 3, "{:?}", h.fake.state().calls);
        // Someone flushes the rules: the next resync puts them back.
        h.fake.state().programmed = Some(Vec::new());
        until("the repair", || h.fake.state().applies().len() == 2).await;
        assert_eq!(h.fake.state().programmed, Some(vec![tutorial()]));
    }

    #[tokio::test]
    async fn takes_over_from_the_other_proxy_mode_first() {
        let h = start(
            State {
                other_mode: true,
                ..State::default()
            },
            fast(),
        );
        // Removed at start, before any list is complete.
        until("the take-over", || !h.fake.state().other_mode).await;
        assert!(h.fake.state().applies().is_empty());
        list_all(&h);
        until("the first sync", || h.fake.state().applies().len() == 1).await;
        let s = h.fake.state();
        assert_eq!(s.calls[0].1, Call::TakeOver);
        assert_eq!(
            s.calls.iter().filter(|(_, c)| *c == Call::TakeOver).count(),
            1
        );
    }

    #[tokio::test]
    async fn a_failed_take_over_still_programs_services() {
        let h = start(
            State {
                other_mode: true,
                take_over_fault: Some(Fault::Failed),
                ..State::default()
            },
            fast(),
        );
        list_all(&h);
        until("the first sync", || h.fake.state().applies().len() == 1).await;
        assert_eq!(h.fake.state().programmed, Some(vec![tutorial()]));
    }

    #[tokio::test]
    async fn a_timed_out_apply_is_reported_and_retried_with_back_off() {
        let h = start(
            State {
                apply_faults: [Fault::TimedOut, Fault::TimedOut, Fault::Failed].into(),
                ..State::default()
            },
            fast(),
        );
        list_all(&h);
        let l = [("reconciler", "services")];
        until("a reported timeout", || {
            h.metrics.get("node_sync_reconciler_failing", &l) == Some(1.0)
        })
        .await;
        let page = h.steps.render();
        assert!(page.starts_with("services failing since"), "{page}");
        assert!(
            page.contains("timed out: apply: no answer within 15s"),
            "{page}"
        );
        until("the retries to succeed", || {
            h.fake.state().programmed == Some(vec![tutorial()])
        })
        .await;
        settle().await;
        assert_eq!(
            h.metrics.get("node_sync_step_timeouts_total", &l),
            Some(2.0)
        );
        assert_eq!(h.metrics.get("node_sync_reconciler_failing", &l), Some(0.0));
        assert_eq!(h.steps.render(), "services ok\n");
        let s = h.fake.state();
        let at: Vec<Instant> = s
            .calls
            .iter()
            .filter(|(_, c)| matches!(c, Call::Apply(_)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(at.len(), 4, "{:?}", s.calls);
        // 20 ms, 40 ms, 80 ms apart: doubled each time.
        for (i, want) in [20u64, 40, 80].into_iter().enumerate() {
            let gap = at[i + 1] - at[i];
            assert!(
                gap >= Duration::from_millis(want),
                "retry {i} after {gap:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_storm_of_changes_is_bounded_to_the_minimum_interval() {
        let h = start(
            State::default(),
            Pacing {
                min_interval: Duration::from_millis(300),
                burst: 1,
                ..fast()
            },
        );
        list_all(&h);
        until("the first sync", || h.fake.state().applies().len() == 1).await;
        let first = Instant::now();
        for ip in ["10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"] {
            send(&h.ep, vec![Event::Apply(web_eps(&[ip]))]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until("the second sync", || h.fake.state().applies().len() == 2).await;
        assert!(
            first.elapsed() >= Duration::from_millis(200),
            "{:?}",
            first.elapsed()
        );
        settle().await;
        settle().await;
        // One sync for the four changes, with the last of them.
        let applies = h.fake.state().applies();
        assert_eq!(applies.len(), 2, "{applies:?}");
        assert_eq!(
            applies[1],
            vec![sp("10.254.10.128", 80, Proto::Tcp, &["10.244.1.6:8080"])]
        );
    }
}
