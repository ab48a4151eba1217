//! IPAM delegation: the interface plugin runs the IPAM plugin named in its
//! config from `CNI_PATH`, with the same environment and stdin, as libcni's
//! `ipam.ExecAdd` does.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::env::Command;
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::skel::Request;
use crate::validate;

/// Finds `plugin` in the `CNI_PATH` directories. The name must be a plain
/// file name, so a config can never point us outside those directories.
pub fn find_in_path(plugin: &str, req: &Request) -> Result<PathBuf, CniError> {
    if !validate::is_valid_name(plugin) {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("invalid plugin name {plugin:?}"),
        ));
    }
    req.env
        .path_dirs()
        .map(|dir| PathBuf::from(dir).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::internal(format!(
                "failed to find plugin {plugin:?} in path [{}]",
                req.env.path_dirs().collect::<Vec<_>>().join(" ")
            ))
        })
}

/// Runs `plugin` for `command` and returns its stdout; a failure comes back
/// as the plugin's own error object, so its code reaches the runtime.
pub fn exec(plugin: &str, command: &Command, req: &Request) -> Result<Vec<u8>, CniError> {
    let path = find_in_path(plugin, req)?;
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::internal(format!("exec {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe; its exit
        // status and output below tell what happened.
        let _ = stdin.write_all(&req.stdin);
    }
    let output = child
        .wait_with_output()
        .map_err(|e| CniError::internal(format!("wait for {}: {e}", path.display())))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    match serde_json::from_slice::<PluginError>(&output.stdout) {
        Ok(e) => Err(CniError {
            code: e.code,
            msg: e.msg,
            details: e.details,
        }),
        Err(_) => Err(CniError::internal(format!(
            "netplugin failed: {:?}",
            String::from_utf8_lossy(&output.stdout)
        ))),
    }
}

#[derive(serde::Deserialize)]
struct PluginError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

pub fn exec_add(plugin: &str, req: &Request) -> Result<CniResult, CniError> {
    let out = exec(plugin, &Command::Add, req)?;
    CniResult::parse(&out, req.version)
}

pub fn exec_del(plugin: &str, req: &Request) -> Result<(), CniError> {
    exec(plugin, &Command::Del, req).map(|_| ())
}

pub fn exec_check(plugin: &str, req: &Request) -> Result<(), CniError> {
    exec(plugin, &Command::Check, req).map(|_| ())
}

pub fn exec_gc(plugin: &str, req: &Request) -> Result<(), CniError> {
    exec(plugin, &Command::Gc, req).map(|_| ())
}

pub fn exec_status(plugin: &str, req: &Request) -> Result<(), CniError> {
    exec(plugin, &Command::Status, req).map(|_| ())
}
