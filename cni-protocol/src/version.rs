//! Spec versions, the negotiation rules of the reference skeleton, and the
//! VERSION command's answer.

use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};

/// Every CNI spec version a runtime may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Which result layout a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFamily {
    /// 0.1.0 and 0.2.0: `ip4`/`ip6`.
    Legacy,
    /// 0.3.x and 0.4.0: `ips[].version`, `interfaces`.
    V04,
    /// 1.x: no `ips[].version`.
    V1,
}

impl SpecVersion {
    pub const ALL: [SpecVersion; 7] = [
        Self::V0_1_0,
        Self::V0_2_0,
        Self::V0_3_0,
        Self::V0_3_1,
        Self::V0_4_0,
        Self::V1_0_0,
        Self::V1_1_0,
    ];
    pub const CURRENT: SpecVersion = Self::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn family(self) -> ResultFamily {
        match self {
            Self::V0_1_0 | Self::V0_2_0 => ResultFamily::Legacy,
            Self::V0_3_0 | Self::V0_3_1 | Self::V0_4_0 => ResultFamily::V04,
            Self::V1_0_0 | Self::V1_1_0 => ResultFamily::V1,
        }
    }
}

impl std::fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A semantic version triple, for the reference's ">= 0.4.0" style checks on
/// versions we may not know (a newer runtime's "1.2.0").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver(pub u64, pub u64, pub u64);

impl Semver {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let bad = || {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("invalid version {s:?}: the version is empty or has too many parts"),
            )
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let mut nums = [0u64; 3];
        for (i, p) in parts.iter().enumerate() {
            nums[i] = p.parse().map_err(|_| {
                CniError::new(
                    ErrorCode::DecodingFailure,
                    format!("convert version {s:?}: invalid syntax"),
                )
            })?;
        }
        Ok(Semver(nums[0], nums[1], nums[2]))
    }
}

/// The `cniVersion` a config declares; absent means 0.1.0, as in the reference.
pub fn config_version_string(stdin: &[u8]) -> Result<String, CniError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "cniVersion", default)]
        cni_version: String,
    }
    let probe: Probe = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(ErrorCode::DecodingFailure, e.to_string()))?;
    Ok(if probe.cni_version.is_empty() {
        "0.1.0".to_string()
    } else {
        probe.cni_version
    })
}

/// The version check the reference applies before ADD/DEL/CHECK/GC/STATUS.
pub fn reconcile(config_version: &str, supported: &[SpecVersion]) -> Result<SpecVersion, CniError> {
    match SpecVersion::parse(config_version) {
        Some(v) if supported.contains(&v) => Ok(v),
        _ => {
            let list: Vec<String> = supported
                .iter()
                .map(|v| format!("{:?}", v.as_str()))
                .collect();
            Err(
                CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
                    .with_details(format!(
                        "config is {config_version:?}, plugin supports [{}]",
                        list.join(" ")
                    )),
            )
        }
    }
}

/// The VERSION answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// Spec 1.0+ runtimes send `{cniVersion}` on stdin. The answer speaks that
/// version when we support it; otherwise (older runtimes send nothing, or a
/// version we do not know) our newest, as the Go skeleton always does.
pub fn version_info(stdin: &[u8], supported: &[SpecVersion]) -> VersionInfo {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let requested = serde_json::from_slice::<Probe>(stdin)
        .ok()
        .and_then(|p| p.cni_version)
        .filter(|v| supported.iter().any(|s| s.as_str() == v));
    let newest = supported
        .iter()
        .max()
        .copied()
        .unwrap_or(SpecVersion::CURRENT);
    VersionInfo {
        cni_version: requested.unwrap_or_else(|| newest.as_str().to_string()),
        supported_versions: supported.iter().map(|v| v.as_str().to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(SpecVersion::parse("0.3.1"), Some(SpecVersion::V0_3_1));
        assert_eq!(SpecVersion::parse("9.9.9"), None);
        assert!(SpecVersion::V0_4_0 < SpecVersion::V1_0_0);
        assert_eq!(SpecVersion::V0_2_0.family(), ResultFamily::Legacy);
    }

    #[test]
    fn config_version_defaults_to_010() {
        assert_eq!(config_version_string(b"{}").expect("ok"), "0.1.0");
        assert_eq!(config_version_string(b"{").expect_err("bad").code, 6);
    }

    #[test]
    fn reconcile_reports_code_1_like_the_reference() {
        let e = reconcile("9.9.9", &SpecVersion::ALL).expect_err("unsupported");
        assert_eq!(e.code, 1);
        assert!(
            e.details
                .starts_with("config is \"9.9.9\", plugin supports [\"0.1.0\" ")
        );
    }

    #[test]
    fn version_answer_echoes_request() {
        let v = version_info(br#"{"cniVersion":"1.0.0"}"#, &SpecVersion::ALL);
        assert_eq!(v.cni_version, "1.0.0");
        assert_eq!(v.supported_versions.len(), 7);
        assert_eq!(version_info(b"", &SpecVersion::ALL).cni_version, "1.1.0");
        let v = version_info(br#"{"cniVersion":"9.9.9"}"#, &SpecVersion::ALL);
        assert_eq!(v.cni_version, "1.1.0");
    }

    #[test]
    fn semver() {
        assert!(Semver::parse("0.4.0").expect("ok") > Semver::parse("0.3.1").expect("ok"));
        assert_eq!(Semver::parse("banana").expect_err("bad").code, 6);
    }
}
