//! How node-sync names itself to the API server: a User-Agent on every
//! request and a field manager on every write, so the audit log and
//! `managedFields` say who wrote what.

use kube::api::{PatchParams, PostParams};

pub const FIELD_MANAGER: &str = "node-sync";

/// `node-sync/<version> (linux/<arch>)`, the shape of the kubelet's.
pub fn user_agent() -> String {
    format!(
        "node-sync/{} ({}/{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        crate::machine::goarch(std::env::consts::ARCH)
    )
}

/// `config` with our User-Agent.
pub fn identify(config: &mut kube::Config) {
    if let Ok(v) = http::HeaderValue::from_str(&user_agent()) {
        config.headers.push((http::header::USER_AGENT, v));
    }
}

pub fn post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

pub fn patch() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}
