//! The probes of one container instance, each on a task of its own as the
//! kubelet's probe workers: startup first, then liveness and readiness.
//! A task reports to its pod's worker when its verdict flips and on every
//! failure (for the `Unhealthy` event); the worker acts on them.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Container;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::probe::{self, Exec, Outcome, Spec, Verdict};
use crate::runner::Runner;

use super::Msg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What a probe task tells its worker.
#[derive(Debug, Clone)]
pub struct Report {
    /// The container instance probed.
    pub id: String,
    pub kind: ProbeKind,
    /// `Some(verdict)` when it flipped.
    pub verdict: Option<bool>,
    /// The failure, when this check failed.
    pub failure: Option<String>,
}

/// Runs commands in a container through containerd's exec.
pub struct CtrdExec {
    pub runner: Arc<Runner>,
    pub id: String,
}

impl Exec for CtrdExec {
    fn exec(&self, command: Vec<String>, timeout: Duration) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let exec_id = format!(
                "probe-{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            );
            match self
                .runner
                .ctrd
                .exec(&self.id, &exec_id, &command, timeout)
                .await
            {
                Ok(o) => match o.exit {
                    Some(0) => Outcome::Success,
                    Some(code) => Outcome::Failure(format!(
                        "command {command:?} exited with {code}: {}",
                        o.output.trim()
                    )),
                    None => Outcome::Failure(format!(
                        "command {command:?} timed out after {}s",
                        timeout.as_secs()
                    )),
                },
                Err(e) => Outcome::Failure(e.to_string()),
            }
        })
    }
}

/// The container's probe of `kind`, if it has one; a probe we cannot run
/// is an error to report, and the container runs as if it had none.
pub fn spec_of(c: &Container, kind: ProbeKind) -> Option<Result<Spec, probe::ProbeError>> {
    let p = match kind {
        ProbeKind::Startup => c.startup_probe.as_ref(),
        ProbeKind::Liveness => c.liveness_probe.as_ref(),
        ProbeKind::Readiness => c.readiness_probe.as_ref(),
    }?;
    Some(probe::spec(p, c.ports.as_deref().unwrap_or(&[])))
}

/// Starts the probe of `kind` on the instance `id`; the handle stops it.
pub fn spawn(
    runner: Arc<Runner>,
    spec: Spec,
    kind: ProbeKind,
    id: String,
    pod_ip: String,
    tx: mpsc::UnboundedSender<Msg>,
) -> AbortHandle {
    tokio::spawn(async move {
        let exec = CtrdExec {
            runner,
            id: id.clone(),
        };
        // Readiness and startup start unknown (not ready, not started);
        // liveness passes until it fails.
        let initial = match kind {
            ProbeKind::Liveness => Some(true),
            _ => None,
        };
        let mut verdict = Verdict::new(spec.success_threshold, spec.failure_threshold, initial);
        tokio::time::sleep(spec.initial_delay).await;
        let mut tick = tokio::time::interval(spec.period.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let outcome = probe::check(&spec.handler, &pod_ip, spec.timeout, &exec).await;
            let (ok, failure) = match outcome {
                Outcome::Success => (true, None),
                Outcome::Failure(m) => (false, Some(m)),
            };
            let flipped = verdict.feed(ok);
            if (flipped.is_some() || failure.is_some())
                && tx
                    .send(Msg::Probe(Report {
                        id: id.clone(),
                        kind,
                        verdict: flipped,
                        failure,
                    }))
                    .is_err()
            {
                return;
            }
            // A startup probe ends with its first success; a failed one
            // has the container restarted, which stops it.
            if kind == ProbeKind::Startup && flipped == Some(true) {
                return;
            }
        }
    })
    .abort_handle()
}
