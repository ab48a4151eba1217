//! The kubelet's crash-loop back-off for one container.
//!
//! The kubelet keeps one `flowcontrol.Backoff` (initial 10 s, max 300 s, no
//! jitter) keyed per container by pod name, namespace, UID, container name
//! *and a hash of the container spec*: a changed spec starts a fresh back-off,
//! so the daemon should replace a container's `CrashBackoff` when its spec
//! changes. Before each restart of an exited container it runs
//! `doBackOff`:
//!
//! - `IsInBackOffSince(key, finishedAt)`: no entry, or an expired one, is not
//!   held back; otherwise the restart waits until `finishedAt + backoff`.
//! - Once not held back, `Next(key, finishedAt)` then restarts the container.
//!   `Next` starts a fresh entry (backoff = 10 s) when there is none or it has
//!   expired, else doubles the backoff up to 300 s; either way it records
//!   `lastUpdate = now`, i.e. the moment of the restart.
//! - `hasExpired(finishedAt, lastUpdate)` is `finishedAt - lastUpdate >
//!   2 * max`: the container ran more than 10 minutes since its last restart.
//!
//! So the first restart of a container is immediate and the back-off that
//! `Next` sets applies to the *following* exit: the waits after successive
//! exits are 0, 10, 20, 40, 80, 160, 300, 300 … seconds, and a container that
//! ran for more than 10 minutes before exiting is restarted at once with the
//! sequence started over. [`CrashBackoff::next`] returns exactly those waits.
//! Pure: the caller passes the time in, nothing here reads a clock.

use std::time::{Duration, Instant};

/// The back-off a crash-looping container first waits (kubelet `backOffPeriod`).
pub const INITIAL: Duration = Duration::from_secs(10);
/// The cap of the back-off (kubelet `MaxContainerBackOff`).
pub const MAX: Duration = Duration::from_secs(300);

/// Per-container crash-loop state.
#[derive(Debug, Clone, Default)]
pub struct CrashBackoff {
    /// The flowcontrol entry: the back-off the next exit waits and when it
    /// was last moved (the last restart); `None` before the first restart.
    entry: Option<Entry>,
    /// The restart time decided by the last `next`.
    until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: Instant,
}

impl CrashBackoff {
    /// Called with the time the container exited, when it will be restarted;
    /// returns how long after `now` the restart must wait: 0 the first time
    /// (and after a run of more than 10 minutes), then 10 s, 20 s, 40 s …
    /// capped at 300 s, as the kubelet does (see the module comment).
    pub fn next(&mut self, now: Instant) -> Duration {
        let (wait, backoff) = match self.entry {
            // hasExpired: the container ran 2*MAX since the last restart.
            Some(e) if now.saturating_duration_since(e.last_update) <= 2 * MAX => {
                (e.backoff, (e.backoff * 2).min(MAX))
            }
            _ => (Duration::ZERO, INITIAL),
        };
        let restart = now + wait;
        // The kubelet moves the entry when it restarts the container, so
        // the restart time is its lastUpdate.
        self.entry = Some(Entry {
            backoff,
            last_update: restart,
        });
        self.until = Some(restart);
        wait
    }

    /// The restart time decided by the last `next`, if any.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether a restart is still held back at `now`.
    pub fn holding(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Exits right after each restart: the back-off doubles up to the cap.
    #[test]
    fn sequence_doubles_to_the_cap() {
        let mut b = CrashBackoff::default();
        let mut t = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = b.next(t);
            waits.push(wait.as_secs());
            // The container runs 1 s after its restart, then crashes again.
            t = t + wait + S(1);
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn resets_after_ten_minutes_without_a_crash() {
        let mut b = CrashBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.next(t0), S(0));
        assert_eq!(b.next(t0 + S(5)), S(10));
        assert_eq!(b.next(t0 + S(20)), S(20));
        // Restarted at t0+40; ran exactly 10 min: not yet expired.
        assert_eq!(b.next(t0 + S(40) + 2 * MAX), S(40));
        // Restarted at t0+640+40 = t0+680; runs just over 10 min.
        let exit = t0 + S(680) + 2 * MAX + Duration::from_millis(1);
        assert_eq!(b.next(exit), S(0), "a stable run restarts at once");
        assert_eq!(b.next(exit + S(1)), S(10), "and the sequence starts over");
    }

    #[test]
    fn holding_before_and_after() {
        let mut b = CrashBackoff::default();
        let t0 = Instant::now();
        assert!(!b.holding(t0));
        assert_eq!(b.until(), None);
        b.next(t0);
        assert_eq!(b.until(), Some(t0));
        assert!(!b.holding(t0), "the first restart is not held back");
        let exit = t0 + S(2);
        assert_eq!(b.next(exit), S(10));
        assert_eq!(b.until(), Some(exit + S(10)));
        assert!(b.holding(exit));
        assert!(b.holding(exit + S(9)));
        assert!(!b.holding(exit + S(10)));
        assert!(!b.holding(exit + S(11)));
    }
}
