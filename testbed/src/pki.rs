//! Certificates for a test cluster, the real control plane's and the
//! stand-in's alike: a CA made at start, a serving certificate for the API
//! server, a key pair that signs service-account tokens, and a client
//! certificate per identity (CN is the user, O the groups, as
//! kube-apiserver reads them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
#[error("certificates: {0}")]
pub struct PkiError(String);

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

impl PkiError {
    pub fn from_io(path: &std::path::Path, e: std::io::Error) -> Self {
        PkiError(format!("{}: {e}", path.display()))
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Identity {
            user: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Client certificates we issued (DER) and whom they name. The
    /// stand-in looks the identity up instead of parsing the subject: it
    /// accepts only certificates of its CA, and we issued all of them.
    issued: Arc<Mutex<HashMap<Vec<u8>, Identity>>>,
}

/// The names the API server answers to: loopback, and the in-cluster
/// names and first service IP of the tutorial's service CIDR.
pub const SERVER_DNS: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];
pub const SERVER_IPS: &[[u8; 4]] = &[[127, 0, 0, 1], [10, 254, 0, 1]];

impl Pki {
    pub fn new() -> Result<Self, PkiError> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "testbed-ca");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut srv =
            CertificateParams::new(SERVER_DNS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(err)?;
        for ip in SERVER_IPS {
            srv.subject_alt_names
                .push(SanType::IpAddress(IpAddr::from(*ip)));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        srv.distinguished_name = dn;
        let srv_key = KeyPair::generate().map_err(err)?;
        let srv_cert = srv.signed_by(&srv_key, &issuer).map_err(err)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            issuer,
            server_cert_pem: srv_cert.pem(),
            server_key_pem: srv_key.serialize_pem(),
            issued: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// A client certificate and key (PEM) for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        p.distinguished_name = dn;
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        self.issued.lock().map_err(|_| err("lock"))?.insert(
            cert.der().to_vec(),
            Identity {
                user: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
        );
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A kubeconfig for `user` in `groups` on `server`, the certificate
    /// inline, as kubeadm writes them.
    pub fn kubeconfig(
        &self,
        server: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<String, PkiError> {
        let (cert, key) = self.client(user, groups)?;
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        };
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {user}@testbed\n  context:\n    cluster: testbed\n    user: {user}\ncurrent-context: {user}@testbed\n",
            ca = b64(&self.ca_pem),
            cert = b64(&cert),
            key = b64(&key),
        ))
    }

    pub fn registry(&self) -> Arc<Mutex<HashMap<Vec<u8>, Identity>>> {
        self.issued.clone()
    }
}

/// A key pair for signing service-account tokens (ES256): private and
/// public key, PEM.
pub fn signing_key() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(err)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
