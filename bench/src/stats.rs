//! Summaries of timing samples.

use std::time::Duration;

/// The median (the mean of the two middle samples for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

/// Nearest-rank percentile, `p` in 0..=100.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The arithmetic mean.
pub fn mean(samples: &[Duration]) -> Duration {
    match u32::try_from(samples.len()) {
        Ok(0) | Err(_) => Duration::ZERO,
        Ok(n) => samples.iter().sum::<Duration>() / n,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `a / b`; infinite when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
