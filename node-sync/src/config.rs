//! The node's identity and settings: an optional TOML file, overridden by
//! flags, then defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// What the file may say; every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub node_ip: Option<IpAddr>,
    pub pod_cidr: Option<IpNetwork>,
    pub cluster_cidr: Option<IpNetwork>,
    pub service_cidr: Option<IpNetwork>,
    pub kubeconfig: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub containerd_socket: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub nodefs: Option<PathBuf>,
    pub route_protocol: Option<u8>,
    pub status_interval_seconds: Option<u64>,
    pub proxy_mode: Option<ProxyMode>,
    pub ipvs_scheduler: Option<String>,
    pub watch_timeout_seconds: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How ClusterIP Services are programmed; `none` leaves them to someone
/// else, `auto` takes IPVS when the kernel has it, else nftables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    None,
    Nftables,
    Ipvs,
    Auto,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |msg: String| ConfigError::File {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub pod_cidr: Option<IpNetwork>,
    pub cluster_cidr: IpNetwork,
    pub service_cidr: Option<IpNetwork>,
    pub kubeconfig: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub containerd_socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// A path on the node's filesystem (the kubelet's nodefs): its free
    /// space is DiskPressure.
    pub nodefs: PathBuf,
    /// Our routes carry this protocol number (`ip route ... proto N`).
    pub route_protocol: u8,
    /// How often the node's facts are read and compared.
    pub status_interval: Duration,
    pub proxy_mode: ProxyMode,
    /// The IPVS scheduler of every virtual server (`rr`, `wrr`, `lc`, ...).
    pub ipvs_scheduler: String,
    /// The server ends each watch after this long (`timeoutSeconds`);
    /// the watcher then resumes where it was.
    pub watch_timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
}

/// Protocol numbers the kernel and well-known daemons use (rtnetlink(7),
/// /etc/iproute2/rt_protos): ours must be none of them.
const TAKEN: &[u8] = &[
    0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 42, 99, 186, 187, 188, 189, 192,
];

pub const DEFAULT_PROTOCOL: u8 = 200;

impl Config {
    /// `flags` over `file`, then defaults. `hostname` is the fallback name.
    pub fn merge(flags: FileConfig, file: FileConfig, hostname: &str) -> Result<Self, ConfigError> {
        let node_name = flags
            .node_name
            .or(file.node_name)
            .unwrap_or_else(|| hostname.to_string());
        if node_name.is_empty() {
            return Err(ConfigError::Invalid("node name is empty".into()));
        }
        let node_ip = flags.node_ip.or(file.node_ip).ok_or_else(|| {
            ConfigError::Invalid("the node IP is required (--node-ip or node-ip)".into())
        })?;
        let route_protocol = flags
            .route_protocol
            .or(file.route_protocol)
            .unwrap_or(DEFAULT_PROTOCOL);
        if TAKEN.contains(&route_protocol) {
            return Err(ConfigError::Invalid(format!(
                "route protocol {route_protocol} belongs to the kernel or another daemon"
            )));
        }
        let mut labels = file.labels;
        labels.extend(flags.labels);
        Ok(Config {
            node_name,
            node_ip,
            pod_cidr: flags.pod_cidr.or(file.pod_cidr),
            cluster_cidr: flags.cluster_cidr.or(file.cluster_cidr).unwrap_or_else(|| {
                IpNetwork::V4(
                    ipnetwork::Ipv4Network::new([10, 244, 0, 0].into(), 16)
                        .unwrap_or_else(|_| unreachable!()),
                )
            }),
            service_cidr: flags.service_cidr.or(file.service_cidr),
            kubeconfig: flags.kubeconfig.or(file.kubeconfig),
            metrics_addr: flags
                .metrics_addr
                .or(file.metrics_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10249))),
            containerd_socket: flags
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or_else(|| "/run/containerd/containerd.sock".into()),
            cni_conf_dir: flags
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            nodefs: flags
                .nodefs
                .or(file.nodefs)
                .unwrap_or_else(|| "/var/lib".into()),
            route_protocol,
            status_interval: Duration::from_secs(
                flags
                    .status_interval_seconds
                    .or(file.status_interval_seconds)
                    .unwrap_or(10)
                    .max(1),
            ),
            proxy_mode: flags.proxy_mode.or(file.proxy_mode).unwrap_or_default(),
            ipvs_scheduler: flags
                .ipvs_scheduler
                .or(file.ipvs_scheduler)
                .unwrap_or_else(|| "rr".into()),
            watch_timeout_seconds: flags
                .watch_timeout_seconds
                .or(file.watch_timeout_seconds)
                .unwrap_or(crate::watch::DEFAULT_TIMEOUT_SECONDS)
                .max(1),
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_in() {
        let file: FileConfig = toml::from_str(
            r#"
node-name = "inajob"
node-ip = "192.168.43.111"
pod-cidr = "10.244.1.0/24"
labels = { zone = "a", role = "worker" }
"#,
        )
        .expect("toml");
        let flags = FileConfig {
            node_ip: Some("192.168.43.200".parse().expect("ip")),
            labels: [("zone".to_string(), "b".to_string())].into(),
            ..FileConfig::default()
        };
        let c = Config::merge(flags, file, "host").expect("config");
        assert_eq!(c.node_name, "inajob");
        assert_eq!(c.node_ip.to_string(), "192.168.43.200");
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.labels["zone"], "b");
        assert_eq!(c.labels["role"], "worker");
        assert_eq!(c.route_protocol, DEFAULT_PROTOCOL);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
        let no_ip = Config::merge(FileConfig::default(), FileConfig::default(), "h");
        assert!(no_ip.is_err());
        let kernel_proto = FileConfig {
            node_ip: Some("10.0.0.1".parse().expect("ip")),
            route_protocol: Some(2),
            ..FileConfig::default()
        };
        assert!(Config::merge(kernel_proto, FileConfig::default(), "h").is_err());
    }
}
