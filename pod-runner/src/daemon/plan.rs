//! The worker's decisions, pure: whether an ended container runs again,
//! when, and whether the pod is done. The worker does what they say.

use std::time::Instant;

use crate::backoff::CrashBackoff;

/// Whether a container that ended with `code` is started again.
pub fn restarts(policy: &str, code: i32) -> bool {
    policy == "Always" || (policy == "OnFailure" && code != 0)
}

/// Whether every container ended for good: the pod is finished. `ended`
/// holds each container's exit code, `None` while it runs.
pub fn finished(policy: &str, ended: &[Option<i32>]) -> bool {
    !ended.is_empty()
        && ended
            .iter()
            .all(|e| e.is_some_and(|code| !restarts(policy, code)))
}

/// What to do now with an ended container that restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Held back by its crash-loop back-off until then.
    Wait(Instant),
    Restart,
}

/// The restart time is decided once per exit (the back-off moves then)
/// and kept in `restart_at` until the restart happens.
pub fn step(restart_at: &mut Option<Instant>, backoff: &mut CrashBackoff, now: Instant) -> Step {
    let at = *restart_at.get_or_insert_with(|| now + backoff.next(now));
    if now < at {
        Step::Wait(at)
    } else {
        Step::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn restart_policies() {
        assert!(restarts("Always", 0) && restarts("Always", 1));
        assert!(!restarts("OnFailure", 0) && restarts("OnFailure", 2));
        assert!(!restarts("Never", 1));
        assert!(finished("Never", &[Some(0), Some(1)]));
        assert!(!finished("Never", &[Some(0), None]));
        assert!(finished("OnFailure", &[Some(0)]));
        assert!(!finished("OnFailure", &[Some(1)]));
        assert!(!finished("Always", &[Some(0)]));
        assert!(!finished("Never", &[]));
    }

    /// A container that exits one second after each start: restarted at
    /// once, then after 10 s, 20 s, 40 s, as the kubelet does.
    #[test]
    fn a_crash_loop_backs_off() {
        let t0 = Instant::now();
        let mut backoff = CrashBackoff::default();
        let mut now = t0;
        let mut starts = vec![now];
        for _ in 0..4 {
            now += Duration::from_secs(1); // it ran a second, then exited
            let mut restart_at = None;
            loop {
                match step(&mut restart_at, &mut backoff, now) {
                    Step::Restart => break,
                    Step::Wait(at) => {
                        assert!(at > now);
                        now = at; // the worker wakes at `at`
                    }
                }
            }
            starts.push(now);
        }
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        // Each gap is the second it ran plus the back-off.
        assert_eq!(gaps, [1, 11, 21, 41]);
    }
}
