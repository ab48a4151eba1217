//! What this node made for a pod, recorded before anything is made, so a
//! delete (or the next create) after a crash finds every piece. IDs are
//! derived from the pod's UID: a repeated create names the same objects.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use containerd_api::hex;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("pod state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod state {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppContainer {
    pub name: String,
    /// The current instance; a restart makes a new one.
    pub id: String,
    pub image: String,
    /// How many times it was restarted (the instance's number).
    #[serde(default)]
    pub attempt: u32,
    /// When the current instance started, for the status after a restart
    /// of the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<SystemTime>,
    /// How the previous instance ended (`lastState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
}

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub code: i32,
    /// `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
    /// The instance's container ID.
    pub id: String,
}

/// The ID of a container's instance number `attempt`; the first keeps the
/// ID earlier releases derived, so their records still name it.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    if attempt == 0 {
        derive_id(&["container", uid, name])
    } else {
        derive_id(&["container", uid, name, &attempt.to_string()])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox_id: String,
    pub netns: PathBuf,
    /// `<state>/pods/<ns>_<name>_<uid>`: volumes, hosts file.
    pub pod_dir: PathBuf,
    /// `<log dir>/<ns>_<name>_<uid>`.
    pub log_dir: PathBuf,
    pub containers: Vec<AppContainer>,
    pub grace_seconds: i64,
    #[serde(default)]
    pub pod_ips: Vec<String>,
    #[serde(default)]
    pub host_ip: Option<String>,
    /// Whether the create that made this pod reported it to the API.
    /// `Some(false)` until its status PATCH succeeded; records of older
    /// releases (`None`) were written only by creates that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<bool>,
    /// How many sandboxes the pod had before this one (a dead sandbox is
    /// made again with fresh IDs, so no late event of the old one can be
    /// taken for the new).
    #[serde(default)]
    pub sandbox_attempt: u32,
}

/// A 64-hex ID, like the ones containerd's CRI plugin makes, derived from
/// what identifies the object.
pub fn derive_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"pod-runner");
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

/// The sandbox netns name, CRI style: `cni-<uuid>` (from the sandbox ID).
pub fn netns_name(sandbox_id: &str) -> String {
    let h = &sandbox_id[..32.min(sandbox_id.len())];
    if h.len() < 32 {
        return format!("cni-{h}");
    }
    format!(
        "cni-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Records live in `<state dir>/pods/<ns>_<name>.json`.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store {
            dir: state_dir.join("pods"),
        }
    }

    fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(format!("{namespace}_{name}.json"))
    }

    pub fn load(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>, StateError> {
        let path = self.path(namespace, name);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| StateError::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Written aside and renamed: a record is whole or absent.
    pub fn save(&self, r: &PodRecord) -> Result<(), StateError> {
        let path = self.path(&r.namespace, &r.name);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let data = serde_json::to_vec_pretty(r).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), StateError> {
        let path = self.path(namespace, name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Takes the pod's lock (an flock on `<state>/locks/<ns>_<name>`),
    /// waiting for whoever holds it: the daemon and the one-shot commands
    /// never act on one pod at once. Blocking: call from a blocking thread.
    pub fn lock(&self, namespace: &str, name: &str) -> Result<PodLock, StateError> {
        let path = self
            .dir
            .with_file_name("locks")
            .join(format!("{namespace}_{name}"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        loop {
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            f.lock().map_err(io)?;
            // An unlock-and-remove raced us: the file we hold is no longer
            // the one at the path, so another process may hold that one.
            let same = match (f.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => {
                    use std::os::unix::fs::MetadataExt;
                    a.ino() == b.ino() && a.dev() == b.dev()
                }
                _ => false,
            };
            if same {
                return Ok(PodLock { file: f, path });
            }
        }
    }

    /// Every record, for `list`.
    pub fn all(&self) -> Result<Vec<PodRecord>, StateError> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let data = std::fs::read(&p).map_err(|source| StateError::Io {
                    path: p.clone(),
                    source,
                })?;
                out.push(
                    serde_json::from_slice(&data)
                        .map_err(|source| StateError::Parse { path: p, source })?,
                );
            }
        }
        out.sort_by(|a: &PodRecord, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(out)
    }
}

/// A held pod lock; released when dropped.
pub struct PodLock {
    file: File,
    path: PathBuf,
}

impl PodLock {
    /// Releases the lock and removes its file: the pod is gone from this
    /// node. Whoever waited on the old file retries on a new one.
    pub fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = derive_id(&["sandbox", "uid-1"]);
        assert_eq!(a.len(), 64);
        assert_eq!(a, derive_id(&["sandbox", "uid-1"]));
        assert_ne!(a, derive_id(&["sandbox", "uid-2"]));
        // Parts are separated: ("ab","c") is not ("a","bc").
        assert_ne!(derive_id(&["ab", "c"]), derive_id(&["a", "bc"]));
        let n = netns_name(&a);
        assert_eq!(n.len(), 4 + 36);
        assert!(n.starts_with("cni-"));
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::new(dir.path());
        assert!(s.load("default", "web").expect("load").is_none());
        let r = PodRecord {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            sandbox_id: "s".into(),
            netns: "/run/netns/x".into(),
            pod_dir: "/p".into(),
            log_dir: "/l".into(),
            containers: vec![],
            grace_seconds: 30,
            pod_ips: vec![],
            host_ip: None,
            reported: Some(false),
            sandbox_attempt: 0,
        };
        let l = s.lock("default", "web").expect("lock");
        s.save(&r).expect("save");
        assert_eq!(s.load("default", "web").expect("load"), Some(r.clone()));
        assert_eq!(s.all().expect("all"), vec![r]);
        s.remove("default", "web").expect("rm");
        s.remove("default", "web").expect("rm twice");
        assert!(s.all().expect("all").is_empty());
        l.release_and_remove();
        // A new lock after the removal works.
        drop(s.lock("default", "web").expect("lock again"));
    }

    #[test]
    fn a_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = std::sync::Arc::new(Store::new(dir.path()));
        let held = s.lock("default", "web").expect("lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let l = s2.lock("default", "web").expect("lock");
            let _ = tx.send(());
            drop(l);
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        held.release_and_remove();
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
        t.join().expect("thread");
    }
    #[test]
    fn the_first_instance_keeps_the_old_id() {
        assert_eq!(
            container_id("u", "web", 0),
            derive_id(&["container", "u", "web"])
        );
        assert_ne!(container_id("u", "web", 1), container_id("u", "web", 0));
    }
}
