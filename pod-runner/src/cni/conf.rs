//! Network configs: the first `.conflist`, `.conf` or `.json` in the conf
//! dir in lexical order (libcni's rule); a single-plugin `.conf` becomes a
//! one-plugin list.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::exec::CniRunError;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub source: PathBuf,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> CniRunError {
    CniRunError::Config(format!("{}: {msg}", path.display()))
}

pub fn load_network(dir: &Path) -> Result<NetworkList, CniRunError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let path = files
        .into_iter()
        .next()
        .ok_or_else(|| bad(dir, "no network config found"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
    let is_list = path.extension().is_some_and(|x| x == "conflist");
    let (name, version, plugins) = if is_list {
        let plugins = v["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad(&path, "a .conflist needs a non-empty \"plugins\" list"))?
            .clone();
        (v["name"].clone(), v["cniVersion"].clone(), plugins)
    } else {
        (v["name"].clone(), v["cniVersion"].clone(), vec![v.clone()])
    };
    let name = name
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(&path, "missing network name"))?
        .to_string();
    let cni_version = version.as_str().unwrap_or("0.1.0").to_string();
    for p in &plugins {
        if p["type"].as_str().is_none_or(str::is_empty) {
            return Err(bad(&path, "a plugin without \"type\""));
        }
    }
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        source: path,
    })
}

impl NetworkList {
    /// Plugin `i`'s config as it goes on stdin: the list's name and
    /// version, and the previous result when there is one.
    pub fn plugin_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut c = self.plugins[i].clone();
        c["name"] = json!(self.name);
        c["cniVersion"] = json!(self.cni_version);
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }
}
