//! The OCI runtime spec of one container of a pod (oci-spec's defaults,
//! which are runc's, plus the pod's namespaces, mounts and limits).

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpu, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, Spec, User,
};

#[derive(Debug, thiserror::Error)]
#[error("building the OCI spec: {0}")]
pub struct SpecError(String);

/// A namespace: new (`None`) or joined at a path.
pub type Ns = (LinuxNamespaceType, Option<PathBuf>);

/// A mount a pod adds to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodMount {
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
    Tmpfs {
        destination: String,
        size: Option<u64>,
    },
}

/// Everything a container's spec is made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: Option<String>,
    pub namespaces: Vec<Ns>,
    pub mounts: Vec<PodMount>,
    pub memory_limit: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cgroups_path: String,
    pub read_only_rootfs: bool,
    pub annotations: Vec<(String, String)>,
}

fn mount(m: &PodMount) -> Mount {
    let mut out = Mount::default();
    match m {
        PodMount::Bind {
            source,
            destination,
            read_only,
        } => {
            out.set_destination(PathBuf::from(destination));
            out.set_typ(Some("bind".into()));
            out.set_source(Some(source.clone()));
            let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
            opts.push(if *read_only { "ro" } else { "rw" }.to_string());
            out.set_options(Some(opts));
        }
        PodMount::Tmpfs { destination, size } => {
            out.set_destination(PathBuf::from(destination));
            out.set_typ(Some("tmpfs".into()));
            out.set_source(Some(PathBuf::from("tmpfs")));
            let mut opts = vec!["nosuid".to_string(), "nodev".to_string()];
            if let Some(s) = size {
                opts.push(format!("size={s}"));
            }
            out.set_options(Some(opts));
        }
    }
    out
}

/// The spec as containerd stores it (JSON).
pub fn build(c: &ContainerSpec) -> Result<Vec<u8>, SpecError> {
    let mut spec = Spec::default();
    spec.set_hostname(c.hostname.clone());
    spec.set_annotations(Some(c.annotations.iter().cloned().collect()));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(c.args.clone()));
    process.set_env(Some(c.env.clone()));
    process.set_cwd(PathBuf::from(if c.cwd.is_empty() { "/" } else { &c.cwd }));
    let mut user = User::default();
    user.set_uid(c.uid);
    user.set_gid(c.gid);
    process.set_user(user);
    // The kubelet does not set no_new_privileges unless asked.
    process.set_no_new_privileges(None);
    spec.set_process(Some(process));

    if let Some(mut root) = spec.root().clone() {
        root.set_path(PathBuf::from("rootfs"));
        root.set_readonly(Some(c.read_only_rootfs));
        spec.set_root(Some(root));
    }

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // Pod mounts shadow the defaults at the same place (e.g. /dev/shm).
    mounts.retain(|m| {
        !c.mounts.iter().any(|p| {
            let d = match p {
                PodMount::Bind { destination, .. } | PodMount::Tmpfs { destination, .. } => {
                    destination
                }
            };
            m.destination() == &PathBuf::from(d)
        })
    });
    mounts.extend(c.mounts.iter().map(mount));
    spec.set_mounts(Some(mounts));

    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| SpecError("no linux section".into()))?;
    let namespaces = c
        .namespaces
        .iter()
        .map(|(typ, path)| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(*typ);
            ns.set_path(path.clone());
            ns
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(&c.cgroups_path)));
    let mut resources = linux
        .resources()
        .clone()
        .unwrap_or_else(LinuxResources::default);
    if let Some(limit) = c.memory_limit {
        let mut m = LinuxMemory::default();
        m.set_limit(Some(limit));
        resources.set_memory(Some(m));
    }
    if c.cpu_quota.is_some() || c.cpu_shares.is_some() {
        let mut cpu = LinuxCpu::default();
        cpu.set_quota(c.cpu_quota);
        cpu.set_period(c.cpu_period);
        cpu.set_shares(c.cpu_shares);
        resources.set_cpu(Some(cpu));
    }
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    serde_json::to_vec(&spec).map_err(|e| SpecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn joins_namespaces_and_sets_limits() {
        let c = ContainerSpec {
            args: vec!["/web".into()],
            env: vec!["A=1".into()],
            cwd: "/srv".into(),
            namespaces: vec![
                (
                    LinuxNamespaceType::Network,
                    Some(PathBuf::from("/run/netns/x")),
                ),
                (LinuxNamespaceType::Pid, None),
            ],
            mounts: vec![PodMount::Bind {
                source: PathBuf::from("/tmp/v"),
                destination: "/data".into(),
                read_only: true,
            }],
            memory_limit: Some(64 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cgroups_path: "/pod-runner/p/c".into(),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&build(&c).expect("spec")).expect("json");
        assert_eq!(v["process"]["args"][0], "/web");
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["linux"]["namespaces"][0]["path"], "/run/netns/x");
        assert!(v["linux"]["namespaces"][1].get("path").is_none());
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["cgroupsPath"], "/pod-runner/p/c");
        let data = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("volume mount");
        assert!(
            data["options"]
                .as_array()
                .expect("opts")
                .contains(&"ro".into())
        );
        // No rlimit above this machine's hard limits (runc would fail).
        for r in v["process"]["rlimits"].as_array().into_iter().flatten() {
            assert!(r["hard"].as_u64().unwrap_or(0) <= 1024);
        }
    }
}
