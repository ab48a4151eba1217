//! A Services backend in memory, for the reconciler's unit tests: it
//! holds what "the kernel" programs and the other proxy mode's leftovers,
//! records every call, and fails the calls it is told to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ServicePort;
use super::backend::{BackendError, ServicesBackend};
use crate::blocking::BlockingError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    TakeOver,
    Recheck,
    Apply(Vec<ServicePort>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    TimedOut,
    Failed,
}

impl Fault {
    fn error(self, what: &'static str) -> BackendError {
        match self {
            Fault::TimedOut => BackendError::Blocking(BlockingError::TimedOut {
                what,
                limit: Duration::from_secs(15),
            }),
            Fault::Failed => BackendError::Other(format!("{what}: injected failure")),
        }
    }
}

#[derive(Debug, Default)]
pub struct State {
    /// What is programmed; `None`: nothing of ours.
    pub programmed: Option<Vec<ServicePort>>,
    /// The other proxy mode's objects are there.
    pub other_mode: bool,
    pub calls: Vec<(Instant, Call)>,
    /// Failures for the next applies, in order.
    pub apply_faults: VecDeque<Fault>,
    pub take_over_fault: Option<Fault>,
}

impl State {
    pub fn applies(&self) -> Vec<Vec<ServicePort>> {
        self.calls
            .iter()
            .filter_map(|(_, c)| match c {
                Call::Apply(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

impl Fake {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ServicesBackend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn take_over(&mut self) -> Result<bool, BackendError> {
        let mut s = self.state();
        s.calls.push((Instant::now(), Call::TakeOver));
        if let Some(f) = s.take_over_fault.take() {
            return Err(f.error("take over"));
        }
        Ok(std::mem::take(&mut s.other_mode))
    }

    async fn recheck(
        &mut self,
        _last: Option<Vec<ServicePort>>,
    ) -> Result<Option<Vec<ServicePort>>, BackendError> {
        let mut s = self.state();
        s.calls.push((Instant::now(), Call::Recheck));
        Ok(s.programmed.clone())
    }

    async fn apply(
        &mut self,
        want: &[ServicePort],
        _prev: Option<&[ServicePort]>,
    ) -> Result<(), BackendError> {
        let mut s = self.state();
        s.calls.push((Instant::now(), Call::Apply(want.to_vec())));
        if let Some(f) = s.apply_faults.pop_front() {
            return Err(f.error("apply"));
        }
        s.programmed = Some(want.to_vec());
        Ok(())
    }
}
