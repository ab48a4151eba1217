//! The stand-in's certificates: a CA it makes at start, a serving
//! certificate for 127.0.0.1, and a client certificate per identity (CN is
//! the user, O the groups, as kube-apiserver reads them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::ApiError;

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
    /// Client certificates we issued (DER) and whom they name. We look the
    /// identity up instead of parsing the subject: only certificates of our
    /// CA are accepted, and we issued all of them.
    issued: Arc<Mutex<HashMap<Vec<u8>, Identity>>>,
}

fn err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Tls(e.to_string())
}

impl Pki {
    pub fn new() -> Result<Self, ApiError> {
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

        let mut srv = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        srv.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
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
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<(String, String), ApiError> {
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

    pub fn registry(&self) -> Arc<Mutex<HashMap<Vec<u8>, Identity>>> {
        self.issued.clone()
    }
}
