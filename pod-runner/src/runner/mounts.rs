//! The files and volumes a pod's containers mount: `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf` as the kubelet writes them, and
//! emptyDir and hostPath volumes.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::pod::{ContainerPlan, PodPlan, VolumeSource};
use crate::spec::PodMount;

use super::RunError;

fn io(what: String) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

/// Writes the pod's files into `pod_dir` (created here).
pub(crate) fn write_pod_files(
    plan: &PodPlan,
    pod_dir: &Path,
    pod_ips: &[String],
) -> Result<(), RunError> {
    std::fs::create_dir_all(pod_dir).map_err(io(format!("creating {}", pod_dir.display())))?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        hosts.push_str(&format!("{ip}\t{}\n", plan.hostname));
    }
    let write = |name: &str, text: &str| {
        let p = pod_dir.join(name);
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))
    };
    write("etc-hosts", &hosts)?;
    write("hostname", &format!("{}\n", plan.hostname))?;
    // No cluster DNS is configured on this node: the host's resolver, as
    // the kubelet falls back to for ClusterFirst.
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    write("resolv.conf", &resolv)?;
    Ok(())
}

fn check_kind(path: &Path, kind: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let ft = meta.as_ref().map(|m| m.file_type());
    let ok = match kind {
        "" => return Ok(()),
        "DirectoryOrCreate" => {
            if ft.is_err() {
                std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
            }
            std::fs::metadata(path).is_ok_and(|m| m.is_dir())
        }
        "FileOrCreate" => {
            if ft.is_err() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| e.to_string())?;
            }
            std::fs::metadata(path).is_ok_and(|m| m.is_file())
        }
        "Directory" => ft.is_ok_and(|t| t.is_dir()),
        "File" => ft.is_ok_and(|t| t.is_file()),
        "Socket" => ft.is_ok_and(|t| t.is_socket()),
        "CharDevice" => ft.is_ok_and(|t| t.is_char_device()),
        "BlockDevice" => ft.is_ok_and(|t| t.is_block_device()),
        other => return Err(format!("unknown hostPath type {other:?}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a {kind}", path.display()))
    }
}

/// Prepares the pod's volumes under `pod_dir/volumes`; returns where each
/// one lives on the host (None for a memory-backed emptyDir).
pub(crate) fn prepare_volumes(
    plan: &PodPlan,
    pod_dir: &Path,
) -> Result<Vec<(String, Option<PathBuf>)>, RunError> {
    let mut out = Vec::new();
    for (name, v) in &plan.volumes {
        let host = match v {
            VolumeSource::EmptyDir { memory: true, .. } => None,
            VolumeSource::EmptyDir { memory: false, .. } => {
                // Names are DNS labels (checked), so this stays in pod_dir.
                let d = pod_dir.join("volumes").join(name);
                std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
                Some(d)
            }
            VolumeSource::HostPath { path, kind } => {
                let p = PathBuf::from(path);
                check_kind(&p, kind).map_err(|msg| RunError::Volume {
                    volume: name.clone(),
                    msg,
                })?;
                Some(p)
            }
        };
        out.push((name.clone(), host));
    }
    Ok(out)
}

/// A container's mounts: its volumes and the pod files.
pub(crate) fn container_mounts(
    plan: &PodPlan,
    c: &ContainerPlan,
    pod_dir: &Path,
    volumes: &[(String, Option<PathBuf>)],
) -> Vec<PodMount> {
    let mut out = Vec::new();
    for m in &c.mounts {
        let Some((_, host)) = volumes.iter().find(|(n, _)| *n == m.volume) else {
            continue;
        };
        out.push(match host {
            Some(source) => PodMount::Bind {
                source: source.clone(),
                destination: m.path.clone(),
                read_only: m.read_only,
            },
            None => PodMount::Tmpfs {
                destination: m.path.clone(),
                size: match plan.volumes.get(&m.volume) {
                    Some(VolumeSource::EmptyDir { size, .. }) => *size,
                    _ => None,
                },
            },
        });
    }
    for (file, dest) in [
        ("etc-hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        // A volume mounted there wins, as with the kubelet.
        if c.mounts.iter().any(|m| m.path == dest) {
            continue;
        }
        out.push(PodMount::Bind {
            source: pod_dir.join(file),
            destination: dest.to_string(),
            read_only: false,
        });
    }
    out
}
