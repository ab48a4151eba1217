//! libcni's result cache: `<dir>/results/<network>-<containerID>-<ifname>`,
//! a JSON document of kind `cniCacheV1` holding the network's config (as Go
//! marshals bytes: base64), the runtime's arguments and the ADD result, so
//! a DEL or CHECK can run with what the ADD ran. Runtimes built on libcni
//! (containerd, CRI-O) read and write the same files.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub const KIND: &str = "cniCacheV1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cache file path requires network name ({net:?}), container ID ({id:?}), and interface name ({ifname:?}), each a plain name"
    )]
    BadKey {
        net: String,
        id: String,
        ifname: String,
    },
    #[error("CNI result cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI result cache {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// One cached attachment, field for field libcni's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network config the ADD ran (a conflist's bytes).
    #[serde(serialize_with = "ser_bytes", deserialize_with = "de_bytes")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub capability_args: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

fn ser_bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
}

/// base64 as libcni writes it; a JSON object is read too, as pod-runner
/// wrote the config before it used this cache, so its pods still tear down.
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom),
        Value::Object(o) => Ok(Value::Object(o).to_string().into_bytes()),
        Value::Null => Ok(Vec::new()),
        other => Err(serde::de::Error::custom(format!(
            "config is neither base64 nor an object: {other}"
        ))),
    }
}

/// The cache under a dir (libcni's default is `/var/lib/cni`).
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    fn results(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of an attachment. Each part is checked to be a plain name,
    /// so the path never leaves the results dir.
    pub fn path(&self, net: &str, id: &str, ifname: &str) -> Result<PathBuf, CacheError> {
        use cni_protocol::validate;
        let ok = validate::is_valid_name(net)
            && validate::is_valid_name(id)
            && validate::interface_name(ifname).is_ok();
        if !ok {
            return Err(CacheError::BadKey {
                net: net.into(),
                id: id.into(),
                ifname: ifname.into(),
            });
        }
        Ok(self.results().join(format!("{net}-{id}-{ifname}")))
    }

    /// Writes the entry whole (aside, then renamed), 0600 in a 0700 dir
    /// as libcni makes them.
    pub fn write(&self, e: &Entry) -> Result<(), CacheError> {
        let path = self.path(&e.network_name, &e.container_id, &e.if_name)?;
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.results())
            .map_err(io)?;
        let bytes = serde_json::to_vec(e).map_err(|x| CacheError::Invalid {
            path: path.clone(),
            msg: x.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The entry of an attachment; None when there is none.
    pub fn read(&self, net: &str, id: &str, ifname: &str) -> Result<Option<Entry>, CacheError> {
        let path = self.path(net, id, ifname)?;
        read_entry(&path)
    }

    /// Removes an attachment's entry; gone already is fine.
    pub fn remove(&self, net: &str, id: &str, ifname: &str) -> Result<(), CacheError> {
        let path = self.path(net, id, ifname)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CacheError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every entry, in file-name order, of `container_id` when given
    /// (libcni's `GetCachedAttachments`); unreadable files are passed over.
    pub fn attachments(&self, container_id: Option<&str>) -> Result<Vec<Entry>, CacheError> {
        let dir = self.results();
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CacheError::Io { path: dir, source }),
        };
        names.sort();
        Ok(names
            .iter()
            .filter_map(|p| read_entry(p).ok().flatten())
            .filter(|e| container_id.is_none_or(|id| e.container_id == id))
            .filter(|e| !e.if_name.is_empty() && !e.network_name.is_empty())
            .collect())
    }
}

fn read_entry(path: &Path) -> Result<Option<Entry>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let invalid = |msg: String| CacheError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let e: Entry = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if e.kind != KIND {
        return Err(invalid(format!("wrong kind {:?}", e.kind)));
    }
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn entry(net: &str, id: &str) -> Entry {
        Entry {
            kind: KIND.into(),
            container_id: id.into(),
            config: br#"{"name":"n","plugins":[]}"#.to_vec(),
            if_name: "eth0".into(),
            network_name: net.into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![["K8S_POD_NAME".into(), "web".into()]],
            capability_args: BTreeMap::new(),
            result: Some(json!({"cniVersion":"1.0.0","ips":[]})),
        }
    }

    #[test]
    fn write_read_delete_in_libcnis_layout() {
        let d = tempfile::tempdir().expect("tmp");
        let c = Cache::new(d.path());
        let e = entry("bridge", "c1");
        c.write(&e).expect("write");
        let path = d.path().join("results/bridge-c1-eth0");
        let doc: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("file")).expect("json");
        assert_eq!(doc["kind"], "cniCacheV1");
        assert_eq!(doc["containerId"], "c1");
        assert_eq!(doc["ifName"], "eth0");
        assert_eq!(doc["networkName"], "bridge");
        assert_eq!(doc["cniArgs"], json!([["K8S_POD_NAME", "web"]]));
        // Go marshals []byte as base64.
        assert_eq!(doc["config"], "eyJuYW1lIjoibiIsInBsdWdpbnMiOltdfQ==");
        assert!(doc.get("capabilityArgs").is_none());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            c.read("bridge", "c1", "eth0").expect("read"),
            Some(e.clone())
        );
        assert_eq!(c.attachments(Some("c1")).expect("list"), vec![e]);
        assert!(c.attachments(Some("c2")).expect("list").is_empty());
        c.remove("bridge", "c1", "eth0").expect("rm");
        c.remove("bridge", "c1", "eth0").expect("rm twice");
        assert_eq!(c.read("bridge", "c1", "eth0").expect("read"), None);
    }

    #[test]
    fn keys_are_plain_names_and_kinds_are_checked() {
        let d = tempfile::tempdir().expect("tmp");
        let c = Cache::new(d.path());
        assert!(matches!(
            c.path("../x", "c", "eth0"),
            Err(CacheError::BadKey { .. })
        ));
        assert!(matches!(
            c.path("n", "a/b", "eth0"),
            Err(CacheError::BadKey { .. })
        ));
        assert!(matches!(
            c.path("n", "c", ""),
            Err(CacheError::BadKey { .. })
        ));
        std::fs::create_dir_all(d.path().join("results")).expect("mkdir");
        std::fs::write(d.path().join("results/n-c-eth0"), r#"{"kind":"other"}"#).expect("w");
        assert!(matches!(
            c.read("n", "c", "eth0"),
            Err(CacheError::Invalid { .. })
        ));
        assert!(c.attachments(None).expect("list").is_empty());
    }

    #[test]
    fn pod_runners_earlier_entries_still_read() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("results")).expect("mkdir");
        std::fs::write(
            d.path().join("results/bridge-c1-eth0"),
            json!({"kind":"cniCacheV1","containerId":"c1","ifName":"eth0","networkName":"bridge",
                   "config":{"cniVersion":"0.3.1","name":"bridge","plugins":[{"type":"bridge"}]},
                   "result":{"cniVersion":"0.3.1"}})
            .to_string(),
        )
        .expect("write");
        let e = Cache::new(d.path())
            .read("bridge", "c1", "eth0")
            .expect("read")
            .expect("entry");
        let conf: Value = serde_json::from_slice(&e.config).expect("config");
        assert_eq!(conf["plugins"][0]["type"], "bridge");
    }
}
