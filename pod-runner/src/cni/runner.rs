//! ADD, CHECK and DEL of a pod's network, with libcni's result cache.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::conf::{NetworkList, load_network};
use super::exec::{CniRunError, PluginCall};

/// Where the runtime looks for configs and plugins, and caches results.
pub struct Runtime {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

/// One pod's attachment.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
}

impl Attachment<'_> {
    /// The kubelet's CNI_ARGS.
    fn args(&self) -> String {
        format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={};IgnoreUnknown=1",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
}

impl Runtime {
    fn call<'a>(
        &'a self,
        att: &'a Attachment<'a>,
        plugin: &'a str,
        command: &'a str,
        ifname: &'a str,
        args: &'a str,
    ) -> PluginCall<'a> {
        PluginCall {
            bin_dirs: &self.bin_dirs,
            plugin,
            command,
            container_id: att.container_id,
            netns: att.netns,
            ifname,
            args,
        }
    }

    fn cache_path(&self, net: &str, att: &Attachment<'_>) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{net}-{}-{}", att.container_id, att.ifname))
    }

    fn loopback(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "cni-loopback", "type": "loopback"})
    }

    /// Brings up `lo` and runs the network's chain; returns the final
    /// result. A failure undoes what was done before it returns.
    pub fn add(&self, att: &Attachment<'_>) -> Result<Value, CniRunError> {
        let net = load_network(&self.conf_dir)?;
        let args = att.args();
        let lo = self.loopback(&net.cni_version);
        self.call(att, "loopback", "ADD", "lo", &args).run(&lo)?;
        let mut prev: Option<Value> = None;
        for i in 0..net.plugins.len() {
            let conf = net.plugin_conf(i, prev.as_ref());
            let plugin = conf["type"].as_str().unwrap_or("").to_string();
            match self.call(att, &plugin, "ADD", att.ifname, &args).run(&conf) {
                Ok(out) => {
                    prev = Some(
                        serde_json::from_slice(&out).map_err(|e| CniRunError::Plugin {
                            plugin: plugin.clone(),
                            command: "ADD".into(),
                            code: 999,
                            msg: format!("unparsable result: {e}"),
                        })?,
                    );
                }
                Err(e) => {
                    // The failed plugin and everything before it.
                    let _ = self.del_chain(att, &net, prev.as_ref(), i + 1);
                    let _ = self.call(att, "loopback", "DEL", "lo", &args).run(&lo);
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(&net, att, &result)?;
        Ok(result)
    }

    /// DEL of plugins `0..upto` in reverse order; every plugin is tried,
    /// the first error is returned.
    fn del_chain(
        &self,
        att: &Attachment<'_>,
        net: &NetworkList,
        prev: Option<&Value>,
        upto: usize,
    ) -> Result<(), CniRunError> {
        let args = att.args();
        let mut first = None;
        for i in (0..upto).rev() {
            let conf = net.plugin_conf(i, prev);
            let plugin = conf["type"].as_str().unwrap_or("").to_string();
            if let Err(e) = self.call(att, &plugin, "DEL", att.ifname, &args).run(&conf) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Tears the network down with the cached config and result (so DEL
    /// works even if the conf dir changed); idempotent.
    pub fn del(&self, att: &Attachment<'_>) -> Result<(), CniRunError> {
        let (net, prev) = match self.read_cache(att)? {
            Some(cached) => cached,
            None => (load_network(&self.conf_dir)?, None),
        };
        let args = att.args();
        let chain = self.del_chain(att, &net, prev.as_ref(), net.plugins.len());
        let lo = self
            .call(att, "loopback", "DEL", "lo", &args)
            .run(&self.loopback(&net.cni_version));
        chain?;
        lo?;
        let path = self.cache_path(&net.name, att);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniRunError::Cache { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Whether an ADD of this attachment completed (its result is cached).
    pub fn has_cache(&self, att: &Attachment<'_>) -> bool {
        matches!(self.read_cache(att), Ok(Some(_)))
    }

    /// CHECK of every plugin with the cached result.
    pub fn check(&self, att: &Attachment<'_>) -> Result<(), CniRunError> {
        let (net, prev) = self.read_cache(att)?.ok_or_else(|| {
            CniRunError::Config(format!("no cached result for {}", att.container_id))
        })?;
        // As libcni: CHECK came with 0.4.0.
        let v: Vec<u32> = net
            .cni_version
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        if v.as_slice() < [0, 4, 0].as_slice() {
            return Err(CniRunError::Config(format!(
                "configuration version {:?} does not support the CHECK command",
                net.cni_version
            )));
        }
        let args = att.args();
        for i in 0..net.plugins.len() {
            let conf = net.plugin_conf(i, prev.as_ref());
            let plugin = conf["type"].as_str().unwrap_or("").to_string();
            self.call(att, &plugin, "CHECK", att.ifname, &args)
                .run(&conf)?;
        }
        Ok(())
    }

    fn write_cache(
        &self,
        net: &NetworkList,
        att: &Attachment<'_>,
        result: &Value,
    ) -> Result<(), CniRunError> {
        let path = self.cache_path(&net.name, att);
        let io = |source| CniRunError::Cache {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let doc = json!({"kind": "cniCacheV1", "containerId": att.container_id, "ifName": att.ifname,
            "networkName": net.name, "cniArgs": [["K8S_POD_NAMESPACE", att.pod_namespace],
            ["K8S_POD_NAME", att.pod_name], ["K8S_POD_INFRA_CONTAINER_ID", att.container_id],
            ["K8S_POD_UID", att.pod_uid]],
            "config": {"cniVersion": net.cni_version, "name": net.name, "plugins": net.plugins},
            "result": result});
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, doc.to_string()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The cached config and result of this attachment, for any network.
    fn read_cache(
        &self,
        att: &Attachment<'_>,
    ) -> Result<Option<(NetworkList, Option<Value>)>, CniRunError> {
        let dir = self.cache_dir.join("results");
        let suffix = format!("-{}-{}", att.container_id, att.ifname);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(&suffix) {
                continue;
            }
            let path = e.path();
            let text = std::fs::read_to_string(&path).map_err(|source| CniRunError::Cache {
                path: path.clone(),
                source,
            })?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| CniRunError::Config(format!("{}: {e}", path.display())))?;
            let c = &doc["config"];
            let net = NetworkList {
                name: c["name"].as_str().unwrap_or("").to_string(),
                cni_version: c["cniVersion"].as_str().unwrap_or("0.1.0").to_string(),
                plugins: c["plugins"].as_array().cloned().unwrap_or_default(),
                source: path.clone(),
            };
            return Ok(Some((
                net,
                Some(doc["result"].clone()).filter(|r| !r.is_null()),
            )));
        }
        Ok(None)
    }
}
