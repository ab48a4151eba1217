//! The fields every network configuration has. Each plugin parses its own
//! section from the same bytes with its own typed struct.

use serde::Deserialize;

use crate::error::{CniError, ErrorCode};

/// The generic part of a plugin's stdin.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConfHeader {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    /// CNI 1.1 GC: the attachments the runtime still uses.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One live attachment, as GC lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConfHeader {
    /// Parses the header; a body that is not JSON is code 6, as in the reference.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                format!("error unmarshall network config: {e}"),
            )
        })
    }
}

/// Deserializes a plugin's typed config, mapping serde's complaint to code 7
/// (a well-formed JSON document with a wrongly typed field is a config error).
pub fn parse_typed<'a, T: Deserialize<'a>>(stdin: &'a [u8]) -> Result<T, CniError> {
    serde_json::from_slice(stdin).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::DecodingFailure
        } else {
            ErrorCode::InvalidNetworkConfig
        };
        CniError::new(code, format!("invalid network config: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_attachments() {
        let h = NetConfHeader::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"host-local",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .expect("parse");
        assert_eq!(h.name, "n");
        assert_eq!(h.plugin_type, "host-local");
        let va = h.valid_attachments.expect("attachments");
        assert_eq!(va[0].container_id, "a");
        assert_eq!(NetConfHeader::parse(b"{nope").expect_err("bad").code, 6);
    }

    #[test]
    fn typed_errors_are_config_errors() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            mtu: u32,
        }
        assert_eq!(
            parse_typed::<T>(br#"{"mtu":"x"}"#).expect_err("type").code,
            7
        );
        assert_eq!(parse_typed::<T>(b"{").expect_err("eof").code, 6);
    }
}
