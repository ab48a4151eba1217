//! What this node made for a pod, recorded before anything is made, so a
//! delete (or the next create) after a crash finds every piece. IDs are
//! derived from the pod's UID: a repeated create names the same objects.

use std::path::{Path, PathBuf};

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
    pub id: String,
    pub image: String,
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
        };
        s.save(&r).expect("save");
        assert_eq!(s.load("default", "web").expect("load"), Some(r.clone()));
        assert_eq!(s.all().expect("all"), vec![r]);
        s.remove("default", "web").expect("rm");
        s.remove("default", "web").expect("rm twice");
        assert!(s.all().expect("all").is_empty());
    }
}
