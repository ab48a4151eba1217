//! `cni-hold`: a CNI plugin for failure-injection tests. Chained after the
//! real plugins, ADD passes the previous result on, but first creates
//! `<dir>/held` and waits (up to 30 s) for `<dir>/release`, so a test can
//! break something while a runtime is in the middle of a pod's setup.
//! Config: `{"type": "cni-hold", "dir": "/tmp/..."}`. DEL, CHECK: no-ops.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let conf: serde_json::Value = serde_json::from_str(&stdin).unwrap_or_default();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        println!(r#"{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}"#);
        return;
    }
    if command != "ADD" {
        return;
    }
    let dir = PathBuf::from(conf["dir"].as_str().unwrap_or("/nonexistent"));
    let _ = std::fs::write(dir.join("held"), b"");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("release").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut result = conf["prevResult"].clone();
    result["cniVersion"] = conf["cniVersion"].clone();
    println!("{result}");
}
