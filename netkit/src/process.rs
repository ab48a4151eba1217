//! Running a child process the way a node agent must: its input written and
//! its stdout and stderr drained at the same time (a child that fills one
//! pipe while we wait on the other never deadlocks), and a deadline after
//! which it is killed and reaped. Every exec of the project goes through
//! here: system tools, `nft`, CNI plugins.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s and was killed", .after.as_secs_f64())]
    TimedOut { program: String, after: Duration },
    #[error("talking to {program}: {source}")]
    Io {
        program: String,
        source: std::io::Error,
    },
}

impl ProcessError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProcessError::TimedOut { .. })
    }
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// The name a command is reported by: its program, or for `nsenter ... X`
/// the program it enters with.
fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn drain(mut from: impl Read + Send + 'static) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = from.read_to_end(&mut buf).map(|_| buf);
        let _ = tx.send(r);
    });
    rx
}

/// Runs `cmd` with `input` on its stdin (none: stdin is /dev/null), and
/// waits at most `timeout` for it to exit; then it is killed with SIGKILL
/// and reaped. stdout and stderr are captured whole.
pub fn run(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished, ProcessError> {
    let name = program(&cmd);
    let io = |source| ProcessError::Io {
        program: name.clone(),
        source,
    };
    let mut child: Child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: name.clone(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    // The input from a thread of its own: a child that does not read it
    // all (or hangs) must not block us past the deadline.
    let feeder = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || {
                // A child that exits without reading it all closes the
                // pipe: its exit status says what happened.
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let status = match wait_until(&mut child, timeout).map_err(io)? {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProcessError::TimedOut {
                program: name,
                after: timeout,
            });
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    // The pipes close when the child and anything it forked exit; a
    // grandchild holding them open is waited for until the deadline only.
    let collect =
        |rx: Option<mpsc::Receiver<std::io::Result<Vec<u8>>>>| -> Result<Vec<u8>, ProcessError> {
            let Some(rx) = rx else { return Ok(Vec::new()) };
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(100))) {
                Ok(r) => r.map_err(io),
                Err(_) => Ok(Vec::new()),
            }
        };
    Ok(Finished {
        status,
        stdout: collect(out)?,
        stderr: collect(err)?,
    })
}

/// The child's exit status, or None when `timeout` passed first (the
/// child is then still running, or a zombie we have not reaped).
///
/// A thread blocks in `waitid(WNOWAIT)`, which wakes on the exit without
/// reaping, so we learn of the exit at once (a child done in 2 ms is not
/// noticed 20 ms later, as with polling) and the pid stays ours to kill
/// until `wait` reaps it.
fn wait_until(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let _ = tx.send(());
    });
    match rx.recv_timeout(timeout) {
        // Exited (or waitid failed, which only a reaped child makes it do).
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => child.wait().map(Some),
        // It may have exited at the last moment: that is no timeout.
        Err(mpsc::RecvTimeoutError::Timeout) => child.try_wait(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_input_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let f = run(c, Some(b"hello"), Duration::from_secs(5)).expect("run");
        assert_eq!(f.stdout, b"hello");
        assert_eq!(f.stderr_text(), "err");
        assert_eq!(f.status.code(), Some(3));
    }

    #[test]
    fn a_hung_child_is_killed_at_the_deadline() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = run(c, None, Duration::from_millis(300)).expect_err("timeout");
        assert!(e.is_timeout(), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_quick_child_is_noticed_at_once_under_a_long_deadline() {
        // Polling at a long deadline's coarse interval took 20 ms; the best
        // of five runs stands for the code, not for a busy machine.
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                let f = run(Command::new("true"), None, Duration::from_secs(600)).expect("run");
                assert!(f.success());
                t.elapsed()
            })
            .min()
            .unwrap_or_default();
        assert!(best < Duration::from_millis(15), "{best:?}");
    }

    #[test]
    fn large_outputs_on_both_pipes_do_not_deadlock() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2",
        ]);
        let f = run(c, None, Duration::from_secs(10)).expect("run");
        assert_eq!((f.stdout.len(), f.stderr.len()), (1_000_000, 1_000_000));
    }

    #[test]
    fn a_child_that_reads_nothing_does_not_block_the_input() {
        let mut c = Command::new("true");
        c.arg("ignored");
        let big = vec![b'x'; 4 << 20];
        let f = run(c, Some(&big), Duration::from_secs(5)).expect("run");
        assert!(f.success());
    }
}
