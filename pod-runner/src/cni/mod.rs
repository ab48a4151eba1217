//! pod-runner's side of CNI, on cni-runtime (libcni's rules): the first
//! network of the conf dir, loopback brought up as its own network first
//! (as containerd does), the kubelet's `CNI_ARGS`, every chain operation
//! under one deadline, and DEL with the config the ADD ran (from the result
//! cache), so it works after the conf dir changed.

use std::path::PathBuf;
use std::time::Duration;

use cni_protocol::{CniResult, SpecVersion};
use cni_runtime::{
    Cache, CacheError, ChainError, CniConfig, Executor, NetworkConfigList, RuntimeConf,
};
use serde_json::json;

/// Kept for callers of pod-runner's earlier API.
pub use cni_runtime::{ConfError, load_network};

/// How long one CNI operation (ADD of loopback or of the chain, CHECK; DEL
/// per plugin) may take before its plugin is killed: the kubelet's budget for a whole
/// sandbox (RunPodSandbox gets twice `--runtime-request-timeout`, 2 min),
/// which is what bounds containerd's CNI calls on a kubelet's node.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// The network containerd brings `lo` up with.
const LOOPBACK_NET: &str = "cni-loopback";

#[derive(Debug, thiserror::Error)]
pub enum CniRunError {
    #[error("CNI config: {0}")]
    Config(#[from] ConfError),
    #[error("CNI: {0}")]
    Chain(#[from] ChainError),
    #[error("CNI result cache: {0}")]
    Cache(#[from] CacheError),
}

impl CniRunError {
    /// Whether a plugin was killed at the deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CniRunError::Chain(e) if e.is_timeout())
    }
}

/// Where the runtime looks for configs and plugins, caches results, and
/// how long an operation may take.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
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
    /// The kubelet's CNI_ARGS on interface `ifname`.
    fn rt(&self, ifname: &str) -> RuntimeConf {
        let pair = |k: &str, v: &str| [k.to_string(), v.to_string()];
        RuntimeConf {
            container_id: self.container_id.into(),
            netns: self.netns.into(),
            ifname: ifname.into(),
            args: vec![
                pair("K8S_POD_NAMESPACE", self.pod_namespace),
                pair("K8S_POD_NAME", self.pod_name),
                pair("K8S_POD_INFRA_CONTAINER_ID", self.container_id),
                pair("K8S_POD_UID", self.pod_uid),
                pair("IgnoreUnknown", "1"),
            ],
            capability_args: Default::default(),
        }
    }
}

fn loopback(version: SpecVersion) -> NetworkConfigList {
    let conf = json!({"cniVersion": version.as_str(), "name": LOOPBACK_NET,
                      "plugins": [{"type": "loopback"}]});
    // A fixed, valid list: this cannot fail.
    NetworkConfigList::from_bytes(conf.to_string().as_bytes())
        .unwrap_or_else(|e| unreachable!("loopback list: {e}"))
}

impl Runtime {
    fn cni(&self) -> CniConfig {
        CniConfig {
            exec: Executor::new(self.bin_dirs.clone()),
            cache: Cache::new(&self.cache_dir),
            timeout: self.timeout,
        }
    }

    /// Brings up `lo` and runs the network's chain; returns its result. A
    /// failure undoes what was done (DEL of the chain and of loopback)
    /// before it returns.
    pub fn add(&self, att: &Attachment<'_>) -> Result<CniResult, CniRunError> {
        let net = load_network(&self.conf_dir)?.network;
        let cni = self.cni();
        let lo = loopback(net.cni_version);
        cni.add(&lo, &att.rt("lo"))?;
        let rt = att.rt(att.ifname);
        match cni.add(&net, &rt) {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = cni.del(&net, &rt);
                let _ = cni.del(&lo, &att.rt("lo"));
                Err(e.into())
            }
        }
    }

    /// The network an ADD of this attachment ran, from the cache, with the
    /// arguments it ran with.
    fn cached(
        &self,
        att: &Attachment<'_>,
    ) -> Result<Option<(NetworkConfigList, RuntimeConf)>, CniRunError> {
        let entries = Cache::new(&self.cache_dir).attachments(Some(att.container_id))?;
        let Some(e) = entries
            .into_iter()
            .find(|e| e.if_name == att.ifname && e.network_name != LOOPBACK_NET)
        else {
            return Ok(None);
        };
        let net = NetworkConfigList::from_bytes(&e.config)?;
        let mut rt = att.rt(att.ifname);
        if !e.cni_args.is_empty() {
            rt.args = e.cni_args;
        }
        rt.capability_args = e.capability_args;
        Ok(Some((net, rt)))
    }

    /// Whether an ADD of this attachment completed (its result is cached).
    pub fn has_cache(&self, att: &Attachment<'_>) -> bool {
        matches!(self.cached(att), Ok(Some(_)))
    }

    /// Tears the network down with the cached config (else the conf dir's),
    /// then loopback; idempotent.
    pub fn del(&self, att: &Attachment<'_>) -> Result<(), CniRunError> {
        let (net, rt) = match self.cached(att)? {
            Some(c) => c,
            None => (load_network(&self.conf_dir)?.network, att.rt(att.ifname)),
        };
        let cni = self.cni();
        let chain = cni.del(&net, &rt);
        let lo = cni.del(&loopback(net.cni_version), &att.rt("lo"));
        chain?;
        lo?;
        Ok(())
    }

    /// CHECK of the chain with the cached config and result.
    pub fn check(&self, att: &Attachment<'_>) -> Result<(), CniRunError> {
        let (net, rt) = match self.cached(att)? {
            Some(c) => c,
            None => (load_network(&self.conf_dir)?.network, att.rt(att.ifname)),
        };
        Ok(self.cni().check(&net, &rt)?)
    }
}
