//! `/proc/sys` knobs. They belong to the network namespace of the thread
//! that opens them, so callers run these inside the namespace they mean.

use std::path::PathBuf;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/").trim_start_matches('/'))
}

pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path(key), value)
}

pub fn get(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}
