//! IPAM delegation: an interface plugin runs the IPAM plugin its config
//! names, found in `CNI_PATH`, with its own environment (only
//! `CNI_COMMAND` set to the delegated command) and its own stdin, as the
//! reference's `ipam.ExecAdd` does. The delegate's stderr goes on to ours.

use std::io::Write;
use std::process::Command as Process;
use std::time::Duration;

use cni_protocol::{CniError, CniResult, Command, Request};

use crate::exec::{self, ExecError};
use crate::lookup::find_plugin;

/// Longer than any runtime waits for a whole ADD (the kubelet gives a
/// sandbox 4 minutes), so it never cuts short a call the runtime still
/// waits for, yet a hung IPAM plugin does not outlive us forever.
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `plugin` for `command`; its stdout on success, else its own error
/// object, so its code reaches the runtime.
pub fn exec(plugin: &str, command: &Command, req: &Request) -> Result<Vec<u8>, CniError> {
    delegate(plugin, command, req).map_err(ExecError::into_cni_error)
}

fn delegate(plugin: &str, command: &Command, req: &Request) -> Result<Vec<u8>, ExecError> {
    let dirs: Vec<&str> = req.env.path_dirs().collect();
    let bin = find_plugin(plugin, &dirs)?;
    let mut cmd = Process::new(&bin);
    cmd.env("CNI_COMMAND", command.as_str());
    let mut f = exec::run(cmd, plugin, &req.stdin, DELEGATE_TIMEOUT)?;
    let _ = std::io::stderr().write_all(&std::mem::take(&mut f.stderr));
    exec::outcome(plugin, f)
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
