//! The `CNI_*` environment, read with the reference skeleton's rules for which
//! variable each command requires.

use crate::error::{CniError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
    Unknown(String),
}

impl Command {
    pub fn parse(s: &str) -> Self {
        match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            other => Self::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Unknown(s) => s,
        }
    }

    /// Whether the command acts on one attachment (and so needs a container
    /// id and an interface name).
    pub fn is_per_attachment(&self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// What the runtime told us through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub netns_override: String,
}

impl CniEnv {
    /// Reads the variables through `lookup` (`std::env::var` in production).
    /// A missing `CNI_COMMAND` is reported like any other missing variable;
    /// the skeleton turns that case into the "about" text.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |k: &str| lookup(k).unwrap_or_default();
        let command_raw = get("CNI_COMMAND");
        let command = Command::parse(&command_raw);
        let env = Self {
            command: command.clone(),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            netns_override: get("CNI_NETNS_OVERRIDE"),
        };
        let per = command.is_per_attachment();
        let required = [
            ("CNI_COMMAND", &command_raw, true),
            ("CNI_CONTAINERID", &env.container_id, per),
            (
                "CNI_NETNS",
                &env.netns,
                matches!(command, Command::Add | Command::Check),
            ),
            ("CNI_IFNAME", &env.ifname, per),
            ("CNI_PATH", &env.path, per),
        ];
        let missing: Vec<&str> = required
            .iter()
            .filter(|(_, val, req)| *req && val.is_empty())
            .map(|(name, _, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        Ok(env)
    }

    /// The directories of `CNI_PATH`, in order.
    pub fn path_dirs(&self) -> impl Iterator<Item = &str> {
        self.path.split(':').filter(|d| !d.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn add_requires_its_variables() {
        let e = env(&[("CNI_COMMAND", "ADD")]).expect_err("missing");
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
    }

    #[test]
    fn del_does_not_need_netns() {
        let ok = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .expect("ok");
        assert_eq!(ok.command, Command::Del);
        assert_eq!(ok.path_dirs().collect::<Vec<_>>(), vec!["/opt/cni/bin"]);
    }

    #[test]
    fn gc_and_version_need_only_the_command() {
        assert_eq!(
            env(&[("CNI_COMMAND", "GC")]).expect("gc").command,
            Command::Gc
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).expect("v").command,
            Command::Version
        );
        assert_eq!(
            env(&[]).expect_err("none").msg,
            "required env variables [CNI_COMMAND] missing"
        );
    }
}
