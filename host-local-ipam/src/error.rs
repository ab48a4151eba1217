//! host-local's errors, and the CNI code each one reports.

use cni_protocol::{CniError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM config: {0}")]
    InvalidConfig(String),
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// A requested IP that can never be satisfied; `from_env` says whether
    /// it came from `CNI_ARGS` (code 4) or from the config (code 7).
    #[error("{msg}")]
    BadRequest { msg: String, from_env: bool },
    #[error("{0}")]
    Allocation(String),
    #[error("failed to find address added by container {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("reading resolvConf {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cni(#[from] CniError),
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let code = match &e {
            IpamError::InvalidConfig(_) | IpamError::InvalidRange(_) => {
                ErrorCode::InvalidNetworkConfig
            }
            IpamError::BadRequest { from_env: true, .. } => ErrorCode::InvalidEnvironment,
            IpamError::BadRequest {
                from_env: false, ..
            } => ErrorCode::InvalidNetworkConfig,
            IpamError::Store(s) if s.is_io() => ErrorCode::IoFailure,
            IpamError::Cni(c) => return c.clone(),
            _ => ErrorCode::Internal,
        };
        CniError::new(code, e.to_string())
    }
}
