//! What tests and the demo need of an API server, whichever runs: the real
//! control plane ([`crate::controlplane::ControlPlane`]) or the stand-in
//! ([`crate::apiserver::ApiServer`]). Both listen on the host's loopback
//! with TLS and client certificates.

use std::path::{Path, PathBuf};

use crate::pki::PkiError;

pub trait Apiserver {
    /// One line saying which server this is.
    fn describe(&self) -> String;

    fn port(&self) -> u16;

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// A kubeconfig for `user` in `groups`, with the certificate inline.
    fn kubeconfig(&self, user: &str, groups: &[&str]) -> Result<String, PkiError>;

    /// Writes the admin kubeconfig and one per node into `dir`:
    /// `admin.kubeconfig` (`system:masters`) and `<node>.kubeconfig`
    /// (`system:node:<node>` in `system:nodes`, the kubelet's identity).
    fn write_kubeconfigs(&self, dir: &Path, nodes: &[&str]) -> Result<Vec<PathBuf>, PkiError> {
        let io = |e: std::io::Error| PkiError::from_io(dir, e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut out = Vec::new();
        let admin = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin,
            self.kubeconfig("kubernetes-admin", &["system:masters"])?,
        )
        .map_err(io)?;
        out.push(admin);
        for n in nodes {
            let p = dir.join(format!("{n}.kubeconfig"));
            std::fs::write(&p, self.node_kubeconfig(n)?).map_err(io)?;
            out.push(p);
        }
        Ok(out)
    }

    /// The kubeconfig of node `name`'s own identity.
    fn node_kubeconfig(&self, name: &str) -> Result<String, PkiError> {
        self.kubeconfig(&format!("system:node:{name}"), &["system:nodes"])
    }
}
