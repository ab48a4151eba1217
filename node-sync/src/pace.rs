//! How often a reconciler may sync: a minimum interval with a burst (kube-
//! proxy's BoundedFrequencyRunner: a token bucket refilled one token per
//! interval, holding at most `burst`), and exponential back-off after a
//! failure. Pure: the caller passes the clock, the loop does the waiting.

use std::time::{Duration, Instant};

/// Lets a sync run at most `burst` times back to back, then once per
/// `min_interval`: a storm of watch events becomes a few syncs, not one
/// per event, while a lone change still goes out at once.
#[derive(Debug, Clone)]
pub struct Bounded {
    min_interval: Duration,
    burst: u32,
    /// Tokens in hand at `at` (fractions refill continuously).
    tokens: f64,
    at: Instant,
}

impl Bounded {
    /// A full bucket at `now`. `burst` of 0 is taken as 1.
    pub fn new(min_interval: Duration, burst: u32, now: Instant) -> Bounded {
        let burst = burst.max(1);
        Bounded {
            min_interval,
            burst,
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        if self.min_interval.is_zero() {
            self.tokens = f64::from(self.burst);
            return;
        }
        let earned = since.as_secs_f64() / self.min_interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.burst));
    }

    /// Takes a token when one is there (`Ok`: run now), else says when
    /// the next one comes (`Err`: wait until then and ask again).
    pub fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(now + self.min_interval.mul_f64(missing))
    }
}

/// Waits after failures: `initial`, doubled each time, at most `max`;
/// back to `initial` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// One more failure: how long to wait before the retry.
    pub fn failed(&mut self) -> Duration {
        let shift = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// When a reconciler syncs: when something changed (`want`), as soon as
/// [`Bounded`] lets it, and after a failure not before its back-off.
#[derive(Debug, Clone)]
pub struct Schedule {
    bound: Bounded,
    backoff: Backoff,
    wanted: bool,
    not_before: Option<Instant>,
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to sync: wait for news.
    Idle,
    /// Sync now.
    Now,
    /// Sync at this instant (rate bound or back-off), or on news.
    At(Instant),
}

impl Next {
    /// Returns when the sync is due: at once, at its instant, or never
    /// (the loop's `select!` wakes on news instead).
    pub async fn due(self) {
        match self {
            Next::Idle => std::future::pending().await,
            Next::Now => {}
            Next::At(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        }
    }
}

impl Schedule {
    pub fn new(bound: Bounded, backoff: Backoff) -> Schedule {
        Schedule {
            bound,
            backoff,
            wanted: false,
            not_before: None,
        }
    }

    /// Something changed: a sync is due.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    pub fn next(&self, now: Instant) -> Next {
        match (self.wanted, self.not_before) {
            (false, _) => Next::Idle,
            (true, Some(t)) if t > now => Next::At(t),
            (true, _) => Next::Now,
        }
    }

    /// Asks to sync at `now`: `true` takes a token and clears the wish
    /// (the caller syncs); `false` puts the sync off until a token comes.
    pub fn start(&mut self, now: Instant) -> bool {
        if !self.wanted || self.not_before.is_some_and(|t| t > now) {
            return false;
        }
        match self.bound.try_take(now) {
            Ok(()) => {
                self.wanted = false;
                self.not_before = None;
                true
            }
            Err(at) => {
                self.not_before = Some(at);
                false
            }
        }
    }

    /// The sync begun by [`Schedule::start`] ended at `now`; after a
    /// failure it is due again after the back-off, which is returned.
    pub fn finished(&mut self, now: Instant, ok: bool) -> Option<Duration> {
        if ok {
            self.backoff.succeeded();
            return None;
        }
        let wait = self.backoff.failed();
        self.wanted = true;
        self.not_before = Some(now + wait);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bounded::new(S, 2, t0);
        assert_eq!(b.try_take(t0), Ok(()));
        assert_eq!(b.try_take(t0), Ok(()));
        // The third waits a whole interval.
        assert_eq!(b.try_take(t0), Err(t0 + S));
        // Half an interval later, half a token is there: half to go.
        let half = t0 + S / 2;
        assert_eq!(b.try_take(half), Err(half + S / 2));
        assert_eq!(b.try_take(t0 + S), Ok(()));
        assert!(b.try_take(t0 + S).is_err());
    }

    #[test]
    fn idle_time_refills_no_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = Bounded::new(S, 2, t0);
        for _ in 0..2 {
            assert!(b.try_take(t0).is_ok());
        }
        let later = t0 + 100 * S;
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert_eq!(b.try_take(later), Err(later + S));
    }

    #[test]
    fn zero_burst_is_one_and_zero_interval_never_waits() {
        let t0 = Instant::now();
        let mut b = Bounded::new(S, 0, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_err());
        let mut free = Bounded::new(Duration::ZERO, 1, t0);
        for _ in 0..10 {
            assert!(free.try_take(t0).is_ok());
        }
    }

    #[test]
    fn a_clock_read_out_of_order_does_not_mint_tokens() {
        let t0 = Instant::now();
        let mut b = Bounded::new(S, 1, t0 + S);
        assert!(b.try_take(t0 + S).is_ok());
        // An earlier instant (another task's clock read) earns nothing.
        assert!(b.try_take(t0).is_err());
        assert!(b.try_take(t0 + S).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(S, 8 * S);
        let waits: Vec<_> = (0..6).map(|_| b.failed()).collect();
        assert_eq!(waits, [S, 2 * S, 4 * S, 8 * S, 8 * S, 8 * S]);
        assert_eq!(b.failures(), 6);
        b.succeeded();
        assert_eq!(b.failed(), S);
        // Many failures do not overflow.
        for _ in 0..100 {
            assert!(b.failed() <= 8 * S);
        }
    }

    #[test]
    fn a_schedule_syncs_on_news_within_its_bound_and_backs_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Bounded::new(S, 1, t0), Backoff::new(S, 4 * S));
        assert_eq!(s.next(t0), Next::Idle);
        assert!(!s.start(t0), "nothing wanted");
        s.want();
        assert_eq!(s.next(t0), Next::Now);
        assert!(s.start(t0));
        assert_eq!(s.next(t0), Next::Idle);
        assert_eq!(s.finished(t0, true), None);
        // News right after: the bound puts it off by an interval.
        s.want();
        assert!(!s.start(t0));
        assert_eq!(s.next(t0), Next::At(t0 + S));
        assert!(s.start(t0 + S));
        // A failure: due again after the back-off, not before.
        assert_eq!(s.finished(t0 + S, false), Some(S));
        assert_eq!(s.next(t0 + S), Next::At(t0 + 2 * S));
        assert!(!s.start(t0 + S));
        assert!(s.start(t0 + 2 * S));
        assert_eq!(s.finished(t0 + 2 * S, false), Some(2 * S));
        assert!(!s.start(t0 + 3 * S));
        assert!(s.start(t0 + 4 * S));
        assert_eq!(s.finished(t0 + 4 * S, true), None);
        s.want();
        assert!(s.start(t0 + 5 * S));
        assert_eq!(
            s.finished(t0 + 5 * S, false),
            Some(S),
            "reset by the success"
        );
    }
}
