//! Blocking work (system tools, netlink sockets read synchronously, file
//! system reads) run off the async workers, on tokio's blocking pool,
//! with a deadline: a hung call then costs its reconciler a timeout, never
//! the runtime's workers that renew the Lease.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The call is still running on its thread; its result is dropped.
    #[error("{what}: no answer within {limit:?}")]
    TimedOut { what: &'static str, limit: Duration },
    #[error("{what}: the blocking call panicked")]
    Panicked { what: &'static str },
}

impl BlockingError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, BlockingError::TimedOut { .. })
    }
}

/// `f` on the blocking pool; its value, or an error after `limit`. Tools
/// run under `f` should carry a deadline of their own below `limit` (so
/// the child is killed); this one bounds what the caller waits for.
pub async fn run<T, F>(what: &'static str, limit: Duration, f: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(BlockingError::Panicked { what }),
        Err(_) => Err(BlockingError::TimedOut { what, limit }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_or_times_out() {
        assert_eq!(
            run("add", Duration::from_secs(5), || 1 + 1).await.ok(),
            Some(2)
        );
        let e = run("sleep", Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(500))
        })
        .await
        .expect_err("times out");
        assert!(e.is_timeout());
        assert_eq!(e.to_string(), "sleep: no answer within 20ms");
    }
}
