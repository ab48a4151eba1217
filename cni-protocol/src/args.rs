//! `CNI_ARGS`: `K=V;K=V`, parsed with the reference's rules (every pair has
//! exactly one `=`; unknown keys are an error unless `IgnoreUnknown` is true).

use crate::error::{CniError, ErrorCode};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        if raw.is_empty() {
            return Ok(Self { pairs });
        }
        for pair in raw.split(';') {
            let mut kv = pair.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) => pairs.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(CniError::new(
                        ErrorCode::InvalidEnvironment,
                        format!("ARGS: invalid pair {pair:?}"),
                    ));
                }
            }
        }
        Ok(Self { pairs })
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn ignore_unknown(&self) -> Result<bool, CniError> {
        match self.get("IgnoreUnknown") {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "ARGS: error parsing value of pair \"IgnoreUnknown={v}\": boolean unmarshal error: invalid input {v}"
                    ),
                )),
            },
        }
    }

    /// Fails on keys outside `known` (plus `IgnoreUnknown`) unless the caller
    /// set `IgnoreUnknown`, as the reference's `LoadArgs` does.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        let ignore = self.ignore_unknown()?;
        let unknown: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !unknown.is_empty() && !ignore {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("ARGS: unknown args {unknown:?}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_ignore_unknown() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5").expect("ok");
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert!(a.check_known(&["IP"]).is_ok());
        let b = CniArgs::parse("K8S_POD_NAME=web").expect("ok");
        assert_eq!(b.check_known(&["IP"]).expect_err("unknown").code, 4);
        let c = CniArgs::parse("IgnoreUnknown=TRUE;X=1").expect("ok");
        assert!(c.check_known(&[]).is_ok());
    }

    #[test]
    fn rejects_bad_pairs() {
        for bad in ["IP", "a=b=c", "a=1;", ";"] {
            assert_eq!(CniArgs::parse(bad).expect_err(bad).code, 4, "{bad}");
        }
        assert!(CniArgs::parse("").expect("empty").get("x").is_none());
        let bad_bool = CniArgs::parse("IgnoreUnknown=maybe").expect("ok");
        assert_eq!(bad_bool.check_known(&[]).expect_err("bool").code, 4);
    }
}
