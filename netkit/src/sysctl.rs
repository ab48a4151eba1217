//! `/proc/sys` knobs. They belong to the network namespace of the thread
//! that opens them, so callers run these inside the namespace they mean.

use std::path::PathBuf;

/// `net/ipv4/ip_forward` or `net.ipv4.ip_forward`. Only the dotted form
/// has its dots turned into slashes: in the slash form a dot belongs to an
/// interface name (`net/ipv6/conf/cni0.100/accept_ra`).
fn path(key: &str) -> PathBuf {
    let key = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(key.trim_start_matches('/'))
}

pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path(key), value)
}

pub fn get(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::path;

    #[test]
    fn dots_in_interface_names_survive() {
        assert_eq!(
            path("net/ipv6/conf/cni0.100/accept_ra"),
            std::path::Path::new("/proc/sys/net/ipv6/conf/cni0.100/accept_ra")
        );
        assert_eq!(
            path("net.ipv4.ip_forward"),
            std::path::Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("/net/ipv6/conf/eth0/enhanced_dad"),
            std::path::Path::new("/proc/sys/net/ipv6/conf/eth0/enhanced_dad")
        );
    }
}
