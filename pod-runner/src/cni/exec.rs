//! Executing one plugin with the CNI environment.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CniRunError {
    #[error("CNI config: {0}")]
    Config(String),
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}")]
    Plugin {
        plugin: String,
        command: String,
        code: u64,
        msg: String,
    },
    #[error("running CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        source: std::io::Error,
    },
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One call of one plugin.
pub struct PluginCall<'a> {
    pub bin_dirs: &'a [PathBuf],
    pub plugin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

impl PluginCall<'_> {
    fn find(&self) -> Result<PathBuf, CniRunError> {
        // A type names a file in a bin dir, never a path.
        if self.plugin.contains('/') || self.plugin.starts_with('.') {
            return Err(CniRunError::Config(format!(
                "invalid plugin type {:?}",
                self.plugin
            )));
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(self.plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniRunError::NotFound {
                plugin: self.plugin.to_string(),
                dirs: self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// Runs the plugin with `conf` on stdin; its stdout on success.
    pub fn run(&self, conf: &Value) -> Result<Vec<u8>, CniRunError> {
        let bin = self.find()?;
        let path = std::env::join_paths(self.bin_dirs).unwrap_or_default();
        let exec = |source| CniRunError::Exec {
            plugin: self.plugin.to_string(),
            source,
        };
        let mut child = Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_ARGS", self.args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).map_err(exec)?;
        }
        let out = child.wait_with_output().map_err(exec)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Err(CniRunError::Plugin {
            plugin: self.plugin.to_string(),
            command: self.command.to_string(),
            code: err["code"].as_u64().unwrap_or(999),
            msg: err["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string()),
        })
    }
}
