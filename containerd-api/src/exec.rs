//! Extra processes in a running task, like `ctr tasks exec` or the CRI's
//! ExecSync: Kubernetes exec probes and lifecycle hooks run through here.
//! Output comes back over FIFOs the shim writes to, as containerd's own
//! clients do.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use nix::sys::stat::Mode;
use prost_types::Any;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinSet;

use crate::container::not_found;
use crate::{Containerd, CtrdError, rpc};

/// containerd takes an exec's process spec as JSON under this type URL.
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Output kept from stdout and stderr together; the rest is read and
/// dropped, so a chatty process never blocks on a full pipe.
const OUTPUT_CAP: usize = 16 * 1024;
/// How long a killed exec gets to be reaped before it is deleted.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the readers get, once the process is gone, to see the shim
/// close the FIFOs; a shim that never opened them would leave them
/// waiting for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const SIGKILL: u32 = 9;

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Its exit status; `None` when it ran out of time and was killed.
    pub exit: Option<u32>,
    /// stdout and stderr as they came, at most 16 KiB, lossy UTF-8.
    pub output: String,
}

impl Containerd {
    /// Runs `args` as process `exec_id` in the container's running task,
    /// with the container's own environment, working directory, user and
    /// capabilities, and waits up to `timeout` for it. A process still
    /// running then is killed (`exit: None`). The exec is deleted in any
    /// case, so `exec_id` can be used again. A missing container or task
    /// is containerd's NotFound (see [`CtrdError::is_not_found`]).
    pub async fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, CtrdError> {
        let fail = |msg: String| CtrdError::Exec {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            msg,
        };
        let spec = self.process_spec(container_id, exec_id, args).await?;
        let dir = FifoDir::create(exec_id).map_err(|e| fail(e.to_string()))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        // Dropping the set (on return, or if our caller gives up on us)
        // aborts the readers.
        let mut readers = JoinSet::new();
        let stdout = dir.path.join("stdout");
        let stderr = dir.path.join("stderr");
        for path in [&stdout, &stderr] {
            // Opened before the exec: a read-only open without O_NONBLOCK
            // would block until the shim opens its end, and the shim's
            // output must find a reader.
            let rx = nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(std::io::Error::from)
                .and_then(|()| pipe::OpenOptions::new().open_receiver(path))
                .map_err(|e| fail(format!("fifo {}: {e}", path.display())))?;
            readers.spawn(drain(rx, output.clone()));
        }
        let ran = self
            .run_exec(container_id, exec_id, spec, [&stdout, &stderr], timeout)
            .await;
        let deleted = self.delete_exec(container_id, exec_id).await;
        // The shim closes the FIFOs once it has copied everything the
        // process wrote; then the readers end by themselves. A failed exec
        // has no output to wait for (and a shim that could not start it
        // never opened them).
        if ran.is_ok() {
            let _ = tokio::time::timeout(DRAIN_GRACE, async {
                while readers.join_next().await.is_some() {}
            })
            .await;
        }
        readers.abort_all();
        drop(dir);
        let exit = ran?;
        deleted?;
        let output = output
            .lock()
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default();
        Ok(ExecOutcome { exit, output })
    }

    /// The container's OCI process (env, cwd, user, capabilities...) with
    /// `args` instead of its command and no terminal, as containerd takes
    /// it for an exec.
    async fn process_spec(
        &self,
        container_id: &str,
        exec_id: &str,
        args: &[String],
    ) -> Result<Any, CtrdError> {
        let container = self
            .client
            .containers()
            .get(self.req(
                GetContainerRequest {
                    id: container_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(rpc("containers.get"))?
            .into_inner()
            .container;
        let fail = |msg: &str| CtrdError::Exec {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            msg: msg.to_string(),
        };
        let spec = container
            .and_then(|c| c.spec)
            .ok_or_else(|| fail("the container has no OCI spec"))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| fail(&format!("its OCI spec is not JSON: {e}")))?;
        let process = spec
            .get_mut("process")
            .and_then(|p| p.as_object_mut())
            .ok_or_else(|| fail("its OCI spec has no process"))?;
        process.insert("args".into(), args.into());
        process.insert("terminal".into(), false.into());
        let value =
            serde_json::to_vec(process).map_err(|e| fail(&format!("encoding the process: {e}")))?;
        Ok(Any {
            type_url: PROCESS_TYPE.into(),
            value,
        })
    }

    /// Creates, starts and waits for the exec; `None` when `timeout`
    /// passed and it was killed.
    async fn run_exec(
        &self,
        container_id: &str,
        exec_id: &str,
        spec: Any,
        [stdout, stderr]: [&Path; 2],
        timeout: Duration,
    ) -> Result<Option<u32>, CtrdError> {
        self.client
            .tasks()
            .exec(self.req(
                ExecProcessRequest {
                    container_id: container_id.to_string(),
                    stdin: String::new(),
                    stdout: stdout.display().to_string(),
                    stderr: stderr.display().to_string(),
                    terminal: false,
                    spec: Some(spec),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(rpc("tasks.exec"))?;
        self.client
            .tasks()
            .start(self.req(
                StartRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(rpc("tasks.start"))?;
        if let Some(exit) = self.wait_exec(container_id, exec_id, timeout).await? {
            return Ok(Some(exit));
        }
        match self
            .client
            .tasks()
            .kill(self.req(
                KillRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: SIGKILL,
                    all: false,
                },
                None,
            ))
            .await
        {
            Ok(_) => {}
            // It exited on its own in the meantime.
            Err(s) if not_found(&s) || s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(rpc("tasks.kill")(s)),
        }
        // Reaped, it can be deleted; if not, the delete says why.
        let _ = self.wait_exec(container_id, exec_id, KILL_GRACE).await;
        Ok(None)
    }

    /// The exec's exit status, or `None` if it still runs after `limit`.
    async fn wait_exec(
        &self,
        container_id: &str,
        exec_id: &str,
        limit: Duration,
    ) -> Result<Option<u32>, CtrdError> {
        let mut client = self.client.tasks();
        let call = client.wait(self.req(
            WaitRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            },
            None,
        ));
        match tokio::time::timeout(limit, call).await {
            Err(_) => Ok(None),
            Ok(Ok(r)) => Ok(Some(r.into_inner().exit_status)),
            Ok(Err(s)) => Err(rpc("tasks.wait")(s)),
        }
    }

    /// Removes the exec from the task; one never created is fine.
    async fn delete_exec(&self, container_id: &str, exec_id: &str) -> Result<(), CtrdError> {
        match self
            .client
            .tasks()
            .delete_process(self.req(
                DeleteProcessRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if not_found(&s) => Ok(()),
            Err(s) => Err(rpc("tasks.delete_process")(s)),
        }
    }
}

/// Reads `rx` to its end, keeping what fits in `output`.
async fn drain(mut rx: pipe::Receiver, output: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 4096];
    // EOF: the shim closed its end. An error ends it the same way: what
    // was read is all there will be.
    while let Ok(n @ 1..) = rx.read(&mut chunk).await {
        if let Ok(mut out) = output.lock() {
            let room = OUTPUT_CAP.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..n.min(room)]);
        }
    }
}

/// A fresh directory only we can use, for one exec's FIFOs; removed
/// with them when dropped.
struct FifoDir {
    path: PathBuf,
}

impl FifoDir {
    fn create(exec_id: &str) -> std::io::Result<FifoDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // exec_id is the caller's: only its plain characters go into the
        // name, and pid and sequence keep the name unique.
        let safe: String = exec_id
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!(
            "ctrd-exec-{}-{}-{safe}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        // Not create_all: an existing directory (someone else's) is an
        // error, never reused.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(FifoDir { path })
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
