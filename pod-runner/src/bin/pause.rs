//! `pause`: PID 1 of a pod sandbox. It holds the pod's namespaces open,
//! reaps the zombies that the namespace's other processes leave to it, and
//! exits 0 on SIGTERM or SIGINT so a runtime can stop it gracefully.

use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    // Blocked signals stay pending for sigwait; nothing runs in a handler.
    if let Err(e) = set.thread_block() {
        eprintln!("pause: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return ExitCode::SUCCESS,
            Ok(_) => reap(),
            Err(e) => {
                eprintln!("pause: sigwait: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
