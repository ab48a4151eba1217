//! Network configurations with libcni's rules: the files of a conf dir
//! ending in `.conf`, `.conflist` or `.json`, in lexical order; the first
//! one that loads is the network (the kubelet's and containerd's choice);
//! a single-plugin `.conf` becomes a one-plugin list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cni_protocol::{NetConfHeader, SpecVersion, validate};
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{msg}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid { path: Option<PathBuf>, msg: String },
    /// Every file was skipped (or there was none); each one's reason.
    #[error("no valid networks found in {}{}", dir.display(), reasons(skipped))]
    NoNetwork { dir: PathBuf, skipped: Vec<Skipped> },
}

fn reasons(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|s| format!("; {}", s.reason))
        .collect::<String>()
}

fn invalid(msg: impl Into<String>) -> ConfError {
    ConfError::Invalid {
        path: None,
        msg: msg.into(),
    }
}

impl ConfError {
    fn at(self, file: &Path) -> Self {
        match self {
            ConfError::Invalid { path: None, msg } => ConfError::Invalid {
                path: Some(file.to_path_buf()),
                msg,
            },
            other => other,
        }
    }
}

/// A file the loader passed over, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// One plugin of a list: its type and its config object as written.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub plugin_type: String,
    /// The capabilities it declares (`"capabilities": {"portMappings": true}`).
    pub capabilities: BTreeMap<String, bool>,
    pub raw: Map<String, Value>,
}

/// A network: its name, its version and its chain of plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: SpecVersion,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConf>,
    /// The list as JSON: what the result cache keeps, so a DEL can run the
    /// chain the ADD ran even after the conf dir changed.
    pub bytes: Vec<u8>,
}

/// The network a conf dir gives, and the files passed over before it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub network: NetworkConfigList,
    pub path: PathBuf,
    pub skipped: Vec<Skipped>,
}

/// The config files of `dir` in lexical order (libcni's `ConfFiles`).
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, ConfError> {
    let io = |source| ConfError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let is_conf = path
            .extension()
            .is_some_and(|x| x == "conf" || x == "conflist" || x == "json");
        if is_conf && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The first file of `dir` that loads as a network. Others before it are
/// skipped with their reason, as the kubelet logs and skips them.
pub fn load_network(dir: &Path) -> Result<Loaded, ConfError> {
    let mut skipped = Vec::new();
    for path in conf_files(dir)? {
        match load_file(&path) {
            Ok(network) => {
                return Ok(Loaded {
                    network,
                    path,
                    skipped,
                });
            }
            Err(e) => skipped.push(Skipped {
                reason: e.to_string(),
                path,
            }),
        }
    }
    Err(ConfError::NoNetwork {
        dir: dir.to_path_buf(),
        skipped,
    })
}

/// One file: a `.conflist` as a list, anything else as a single plugin.
pub fn load_file(path: &Path) -> Result<NetworkConfigList, ConfError> {
    let bytes = std::fs::read(path).map_err(|source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let list = if path.extension().is_some_and(|x| x == "conflist") {
        NetworkConfigList::from_bytes(&bytes)
    } else {
        NetworkConfigList::from_conf_bytes(&bytes)
    };
    list.map_err(|e| e.at(path))
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>, ConfError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(invalid(format!("{what} must be an object, not {other}"))),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ConfError> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("invalid {key} type: {other}"))),
    }
}

/// A bool that may also be written as the string "true"/"false" (libcni
/// accepts both for disableCheck and disableGC).
fn flag(m: &Map<String, Value>, key: &str) -> Result<bool, ConfError> {
    match m.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(invalid(format!("invalid value for {key}: {other}"))),
    }
}

/// The list's version: the highest of `cniVersion` and `cniVersions` that
/// this implementation knows (libcni ignores newer ones); none means
/// 0.1.0, as the spec says of a config without a version.
fn list_version(m: &Map<String, Value>) -> Result<SpecVersion, ConfError> {
    let declared = opt_str(m, "cniVersion")?.filter(|v| !v.is_empty());
    let mut candidates: Vec<&str> = declared.into_iter().collect();
    if let Some(vs) = m.get("cniVersions") {
        let vs = vs
            .as_array()
            .ok_or_else(|| invalid(format!("invalid type for cniVersions: {vs}")))?;
        for v in vs {
            candidates.push(
                v.as_str()
                    .ok_or_else(|| invalid(format!("invalid cniVersions entry {v}")))?,
            );
        }
    }
    if candidates.is_empty() {
        return Ok(SpecVersion::V0_1_0);
    }
    candidates
        .iter()
        .filter_map(|v| SpecVersion::parse(v))
        .max()
        .ok_or_else(|| {
            invalid(format!(
                "unsupported cniVersion {}: this runtime knows {}",
                candidates.join(", "),
                SpecVersion::ALL.map(SpecVersion::as_str).join(", ")
            ))
        })
}

impl PluginConf {
    fn from_value(v: Value) -> Result<Self, ConfError> {
        let header: NetConfHeader = serde_json::from_value(v.clone())
            .map_err(|e| invalid(format!("error parsing configuration: {e}")))?;
        if header.plugin_type.is_empty() {
            return Err(invalid("error parsing configuration: missing 'type'"));
        }
        let raw = object(v, "a plugin configuration")?;
        let capabilities = match raw.get("capabilities") {
            None => BTreeMap::new(),
            Some(c) => serde_json::from_value(c.clone())
                .map_err(|e| invalid(format!("invalid capabilities: {e}")))?,
        };
        Ok(PluginConf {
            plugin_type: header.plugin_type,
            capabilities,
            raw,
        })
    }
}

impl NetworkConfigList {
    /// A `.conflist`: `name`, `cniVersion` (or `cniVersions`), `plugins`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("error parsing configuration list: {e}")))?;
        let m = object(v, "a configuration list")?;
        let name = opt_str(&m, "name")?
            .ok_or_else(|| invalid("error parsing configuration list: no name"))?;
        validate::network_name(name).map_err(|e| invalid(e.to_string()))?;
        let cni_version = list_version(&m)?;
        let plugins = match m.get("plugins") {
            None => {
                return Err(invalid(
                    "error parsing configuration list: no 'plugins' key",
                ));
            }
            Some(Value::Array(p)) if p.is_empty() => {
                return Err(invalid(
                    "error parsing configuration list: no plugins in list",
                ));
            }
            Some(Value::Array(p)) => p
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    PluginConf::from_value(p.clone())
                        .map_err(|e| invalid(format!("failed to parse plugin config {i}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => return Err(invalid(format!("invalid 'plugins' type: {other}"))),
        };
        Ok(NetworkConfigList {
            name: name.to_string(),
            cni_version,
            disable_check: flag(&m, "disableCheck")?,
            disable_gc: flag(&m, "disableGC")?,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// A single plugin's `.conf`, as a list of that one plugin with its
    /// name and version (libcni's `ConfListFromConf`).
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<Self, ConfError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("error parsing configuration: {e}")))?;
        // A list in a .conf file has no type: say so, as the kubelet does.
        if v.get("plugins").is_some() && v.get("type").is_none() {
            return Err(invalid(
                "error loading CNI config file: no 'type'; perhaps this is a .conflist?",
            ));
        }
        let plugin = PluginConf::from_value(v)?;
        let mut list = Map::new();
        for key in ["name", "cniVersion"] {
            if let Some(x) = plugin.raw.get(key) {
                list.insert(key.into(), x.clone());
            }
        }
        list.insert("plugins".into(), json!([plugin.raw]));
        Self::from_bytes(Value::Object(list).to_string().as_bytes())
    }

    /// Plugin `i`'s stdin: its own config with the list's name and version,
    /// the previous result, and the runtime's values for the capabilities
    /// it declares under `runtimeConfig` (libcni's `buildOneConfig`).
    pub fn plugin_stdin(
        &self,
        i: usize,
        prev_result: Option<&Value>,
        capability_args: &BTreeMap<String, Value>,
    ) -> Vec<u8> {
        let Some(p) = self.plugins.get(i) else {
            return Vec::new();
        };
        let mut c = p.raw.clone();
        c.insert("name".into(), json!(self.name));
        c.insert("cniVersion".into(), json!(self.cni_version.as_str()));
        if let Some(prev) = prev_result {
            c.insert("prevResult".into(), prev.clone());
        }
        let rt: Map<String, Value> = capability_args
            .iter()
            .filter(|(cap, _)| p.capabilities.get(*cap).copied().unwrap_or(false))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rt.is_empty() {
            c.insert("runtimeConfig".into(), Value::Object(rt));
        }
        Value::Object(c).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).expect("write");
        }
        d
    }

    const BRIDGE: &str =
        r#"{"cniVersion":"0.3.1","name":"bridge","type":"bridge","bridge":"cni0"}"#;

    #[test]
    fn the_first_file_in_lexical_order_wins() {
        let d = dir(&[
            (
                "20-b.conflist",
                r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#,
            ),
            ("10-a.conf", BRIDGE),
            ("05-ignored.txt", BRIDGE),
        ]);
        let l = load_network(d.path()).expect("load");
        assert_eq!(l.path, d.path().join("10-a.conf"));
        assert_eq!(l.network.name, "bridge");
        assert_eq!(l.network.cni_version, SpecVersion::V0_3_1);
        assert!(l.skipped.is_empty());
    }

    #[test]
    fn invalid_files_are_skipped_with_their_reason() {
        let d = dir(&[
            ("00-broken.conflist", "{not json"),
            (
                "01-noname.conflist",
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            ),
            (
                "02-badname.conf",
                r#"{"cniVersion":"1.0.0","name":"../evil","type":"x"}"#,
            ),
            (
                "03-notype.conf",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
            ),
            (
                "04-empty.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            ),
            (
                "05-newer.conflist",
                r#"{"cniVersion":"9.0.0","name":"n","plugins":[{"type":"x"}]}"#,
            ),
            (
                "06-untyped.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"a":1}]}"#,
            ),
            ("07-good.json", BRIDGE),
        ]);
        let l = load_network(d.path()).expect("load");
        assert_eq!(l.path, d.path().join("07-good.json"));
        let reasons: Vec<&str> = l.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons.len(), 7, "{reasons:#?}");
        for (r, want) in reasons.iter().zip([
            "error parsing configuration list",
            "no name",
            "invalid characters found in network name",
            "perhaps this is a .conflist?",
            "no plugins in list",
            "unsupported cniVersion 9.0.0",
            "failed to parse plugin config 0: error parsing configuration: missing 'type'",
        ]) {
            assert!(r.contains(want), "{r:?} should say {want:?}");
        }
        assert!(reasons[0].starts_with(&d.path().join("00-broken.conflist").display().to_string()));
    }

    #[test]
    fn no_valid_network_names_every_file() {
        let d = dir(&[("10-bridge.conf", "{ not json")]);
        let e = load_network(d.path()).expect_err("none");
        let msg = e.to_string();
        assert!(msg.starts_with("no valid networks found in"), "{msg}");
        assert!(msg.contains("10-bridge.conf"), "{msg}");
        let empty = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            load_network(empty.path()),
            Err(ConfError::NoNetwork { skipped, .. }) if skipped.is_empty()
        ));
        assert!(matches!(
            load_network(&empty.path().join("missing")),
            Err(ConfError::Io { .. })
        ));
    }

    #[test]
    fn a_conf_becomes_a_one_plugin_list() {
        let l = NetworkConfigList::from_conf_bytes(BRIDGE.as_bytes()).expect("conf");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[0].raw["bridge"], "cni0");
        // Its bytes are a list that loads to the same network.
        assert_eq!(NetworkConfigList::from_bytes(&l.bytes).expect("list"), l);
    }

    #[test]
    fn versions() {
        let v = |text: &str| NetworkConfigList::from_bytes(text.as_bytes()).map(|l| l.cni_version);
        assert_eq!(
            v(r#"{"name":"n","plugins":[{"type":"x"}]}"#).expect("none"),
            SpecVersion::V0_1_0
        );
        // cniVersions: the highest this runtime knows, newer ones ignored.
        assert_eq!(
            v(r#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","7.0.0"],"plugins":[{"type":"x"}]}"#)
                .expect("versions"),
            SpecVersion::V1_0_0
        );
        assert!(v(r#"{"name":"n","cniVersion":7,"plugins":[{"type":"x"}]}"#).is_err());
    }

    #[test]
    fn plugin_stdin_injects_name_version_prev_and_capabilities() {
        let l = NetworkConfigList::from_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","disableCheck":"true","plugins":[
                {"type":"a","name":"other","cniVersion":"0.3.1"},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        )
        .expect("list");
        assert!(l.disable_check && !l.disable_gc);
        let caps = BTreeMap::from([
            ("portMappings".to_string(), json!([{"hostPort": 80}])),
            ("bandwidth".to_string(), json!({"rate": 1})),
        ]);
        let a: Value = serde_json::from_slice(&l.plugin_stdin(0, None, &caps)).expect("json");
        assert_eq!(a, json!({"type":"a","name":"net","cniVersion":"1.0.0"}));
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let b: Value =
            serde_json::from_slice(&l.plugin_stdin(1, Some(&prev), &caps)).expect("json");
        assert_eq!(b["prevResult"], prev);
        assert_eq!(
            b["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]})
        );
    }
}
