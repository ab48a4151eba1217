//! How each reconciler's last step went, told three ways: the log (once
//! per transition, not once per retry), metrics, and the daemon's
//! `/status` page that `node-sync status` prints.
//!
//! Metrics: `node_sync_reconciler_failing{reconciler}` (1 while its last
//! step failed), `node_sync_step_timeouts_total{reconciler}` and
//! `node_sync_reconciler_retry_seconds{reconciler}` (the back-off before
//! the next attempt, 0 when healthy).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::Metrics;

/// Why a step did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its deadline and was abandoned (a child killed).
    TimedOut(String),
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TimedOut(e) => write!(f, "timed out: {e}"),
            Failure::Failed(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct State {
    failing: Option<(Failure, SystemTime)>,
    retry_in: Duration,
    attempts_failed: u32,
    last_ok: Option<SystemTime>,
}

/// The reconcilers' step states, shared by their tasks and the HTTP page.
pub struct Steps {
    metrics: Arc<Metrics>,
    states: Mutex<BTreeMap<&'static str, State>>,
}

impl Steps {
    pub fn new(metrics: Arc<Metrics>) -> Steps {
        Steps {
            metrics,
            states: Mutex::new(BTreeMap::new()),
        }
    }

    /// A step of `reconciler` succeeded; logs a recovery once.
    pub fn ok(&self, reconciler: &'static str) {
        let l = [("reconciler", reconciler)];
        self.metrics.set("node_sync_reconciler_failing", &l, 0.0);
        self.metrics
            .set("node_sync_reconciler_retry_seconds", &l, 0.0);
        let Ok(mut m) = self.states.lock() else {
            return;
        };
        let s = m.entry(reconciler).or_insert(State {
            failing: None,
            retry_in: Duration::ZERO,
            attempts_failed: 0,
            last_ok: None,
        });
        if let Some((f, since)) = s.failing.take() {
            let down = SystemTime::now().duration_since(since).unwrap_or_default();
            tracing::info!(
                reconciler,
                after = ?humantime::Duration::from(Duration::from_secs(down.as_secs())),
                attempts = s.attempts_failed,
                "{reconciler}: recovered (was: {f})"
            );
        }
        s.attempts_failed = 0;
        s.retry_in = Duration::ZERO;
        s.last_ok = Some(SystemTime::now());
    }

    /// A step of `reconciler` failed and is retried in `retry_in`. Logged
    /// when it starts failing or fails differently; a repeat is counted.
    pub fn failed(&self, reconciler: &'static str, why: Failure, retry_in: Duration) {
        let l = [("reconciler", reconciler)];
        self.metrics.set("node_sync_reconciler_failing", &l, 1.0);
        self.metrics.set(
            "node_sync_reconciler_retry_seconds",
            &l,
            retry_in.as_secs_f64(),
        );
        if matches!(why, Failure::TimedOut(_)) {
            self.metrics.inc("node_sync_step_timeouts_total", &l);
        }
        let Ok(mut m) = self.states.lock() else {
            return;
        };
        let s = m.entry(reconciler).or_insert(State {
            failing: None,
            retry_in,
            attempts_failed: 0,
            last_ok: None,
        });
        s.attempts_failed = s.attempts_failed.saturating_add(1);
        s.retry_in = retry_in;
        let changed = s.failing.as_ref().is_none_or(|(f, _)| *f != why);
        if changed {
            tracing::warn!(
                reconciler,
                retry_in = ?retry_in,
                "{reconciler}: {why}; retrying with back-off"
            );
            let since = s.failing.as_ref().map_or_else(SystemTime::now, |(_, t)| *t);
            s.failing = Some((why, since));
        }
    }

    /// One line per reconciler, as `/status` serves them.
    pub fn render(&self) -> String {
        let Ok(m) = self.states.lock() else {
            return String::new();
        };
        let mut out = String::new();
        for (name, s) in m.iter() {
            match &s.failing {
                None => out.push_str(&format!("{name} ok\n")),
                Some((f, since)) => out.push_str(&format!(
                    "{name} failing since {} ({} attempts, next in {:?}): {f}\n",
                    humantime::format_rfc3339_seconds(*since),
                    s.attempts_failed,
                    s.retry_in
                )),
            }
        }
        out
    }
}

/// The daemon's `/status` at `addr`, for `node-sync status`; an error
/// when the daemon does not answer (stopped, or another address).
pub fn fetch(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let limit = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_until_a_success() {
        let m = Arc::new(Metrics::default());
        let s = Steps::new(Arc::clone(&m));
        let l = [("reconciler", "services")];
        s.ok("services");
        assert_eq!(s.render(), "services ok\n");
        let t = Failure::TimedOut("nft: no answer within 15s".into());
        s.failed("services", t.clone(), Duration::from_secs(1));
        s.failed("services", t, Duration::from_secs(2));
        assert_eq!(m.get("node_sync_reconciler_failing", &l), Some(1.0));
        assert_eq!(m.get("node_sync_step_timeouts_total", &l), Some(2.0));
        assert_eq!(m.get("node_sync_reconciler_retry_seconds", &l), Some(2.0));
        let r = s.render();
        assert!(r.starts_with("services failing since "), "{r}");
        assert!(
            r.contains("(2 attempts, next in 2s): timed out: nft: no answer within 15s"),
            "{r}"
        );
        s.ok("services");
        assert_eq!(s.render(), "services ok\n");
        assert_eq!(m.get("node_sync_reconciler_failing", &l), Some(0.0));
        assert_eq!(m.get("node_sync_reconciler_retry_seconds", &l), Some(0.0));
    }

    #[test]
    fn a_plain_failure_is_not_a_timeout() {
        let m = Arc::new(Metrics::default());
        let s = Steps::new(Arc::clone(&m));
        s.failed(
            "routes",
            Failure::Failed("netlink: busy".into()),
            Duration::from_secs(1),
        );
        assert_eq!(
            m.get("node_sync_step_timeouts_total", &[("reconciler", "routes")]),
            None
        );
        assert!(s.render().ends_with(": netlink: busy\n"), "{}", s.render());
    }
}
