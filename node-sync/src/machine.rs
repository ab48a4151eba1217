//! What the machine says about itself, read the way the kubelet reads it:
//! nodeInfo from the kernel and /etc, capacity from /proc, and the
//! pressure signals behind the node conditions.

use std::path::Path;

/// Facts for `status.nodeInfo`, capacity and conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub architecture: String,
    pub operating_system: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    /// Free fraction of the filesystem holding the container runtime.
    pub disk_free_fraction: f64,
    pub pids_in_use: u64,
    pub pid_max: u64,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn os_release_pretty(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// Go's GOARCH names, which the API uses.
pub fn goarch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

impl Machine {
    /// Reads the machine; `disk` is a path on the runtime's filesystem.
    pub fn read(disk: &Path) -> Machine {
        let mem = read("/proc/meminfo");
        let uname = nix::sys::utsname::uname().ok();
        let disk_free_fraction = nix::sys::statvfs::statvfs(disk)
            .ok()
            .filter(|s| s.blocks() > 0)
            .map(|s| s.blocks_available() as f64 / s.blocks() as f64)
            .unwrap_or(1.0);
        let pids_in_use = std::fs::read_dir("/proc")
            .map(|r| {
                r.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Machine {
            kernel_version: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_release_pretty(&read("/etc/os-release")).unwrap_or_else(|| "Linux".into()),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            architecture: goarch(std::env::consts::ARCH).to_string(),
            operating_system: "linux".into(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: meminfo(&mem, "MemTotal").unwrap_or(0),
            memory_available_bytes: meminfo(&mem, "MemAvailable").unwrap_or(0),
            disk_free_fraction,
            pids_in_use,
            pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
        }
    }

    /// The kubelet's default hard eviction thresholds.
    pub fn memory_pressure(&self) -> bool {
        self.memory_available_bytes < 100 << 20
    }

    pub fn disk_pressure(&self) -> bool {
        self.disk_free_fraction < 0.10
    }

    pub fn pid_pressure(&self) -> bool {
        self.pid_max > 0 && self.pids_in_use * 100 > self.pid_max * 90
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_etc() {
        let mem = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000 kB\n";
        assert_eq!(meminfo(mem, "MemTotal"), Some(24_000_000 * 1024));
        assert_eq!(meminfo(mem, "MemAvailable"), Some(20_000 * 1024));
        assert_eq!(meminfo(mem, "Nope"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_pretty(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(goarch("x86_64"), "amd64");
    }

    #[test]
    fn this_machine_reads_sensibly() {
        let m = Machine::read(Path::new("/"));
        assert!(m.cpus >= 1 && m.memory_bytes > 0);
        assert!(!m.kernel_version.is_empty() && !m.boot_id.is_empty());
        let p = Machine {
            memory_available_bytes: 50 << 20,
            disk_free_fraction: 0.05,
            pids_in_use: 95,
            pid_max: 100,
            ..m
        };
        assert!(p.memory_pressure() && p.disk_pressure() && p.pid_pressure());
    }
}
