//! What the reconcilers read from their watches, whatever they watch,
//! and how a watch is asked for.

use kube::runtime::watcher::{self, Event};

use crate::access::{self, Access, Resource};

/// The server ends an idle watch after this long by default (as
/// kube-runtime and client-go ask); the watcher then resumes from the
/// last resourceVersion, without a LIST. The watch client has no read
/// timeout of its own: kube-runtime takes a watch as dead when nothing,
/// not even the server's end, came for this long and a margin.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 290;

/// A watcher's settings: the server ends each watch after
/// `timeout_seconds`.
pub fn config(timeout_seconds: u32) -> watcher::Config {
    watcher::Config::default().timeout(timeout_seconds)
}

/// One watch's news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Listing,
    Listed,
    Changed,
    Failed(String),
    /// A 403: [`Access`] has said so.
    Forbidden,
}

/// `r` told to `access` (as `resource`'s), and what it means here.
pub fn news<K>(access: &Access, resource: Resource, r: Result<Event<K>, watcher::Error>) -> Ev {
    access.observe(resource, &r);
    match r {
        Ok(Event::Init | Event::InitApply(_)) => Ev::Listing,
        Ok(Event::InitDone) => Ev::Listed,
        Ok(Event::Apply(_) | Event::Delete(_)) => Ev::Changed,
        Err(e) if access::watch_forbidden(&e).is_some() => Ev::Forbidden,
        Err(e) => Ev::Failed(e.to_string()),
    }
}
