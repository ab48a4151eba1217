//! Name checks the reference skeleton applies before any command runs. They
//! also keep user input from ever naming a path outside its directory.

use crate::error::{CniError, ErrorCode};

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the reference's rule for network names
/// and container ids. It rules out `/`, `.` and `..`.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "missing network name",
        ));
    }
    if !is_valid_name(name) {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "invalid characters found in network name",
        )
        .with_details(name));
    }
    Ok(())
}

pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            "missing containerID",
        ));
    }
    if !is_valid_name(id) {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid characters in containerID",
        )
        .with_details(id));
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, not `.`/`..`, no `/`, `:` or space.
pub fn interface_name(name: &str) -> Result<(), CniError> {
    let bad = |msg: &str| Err(CniError::new(ErrorCode::InvalidEnvironment, msg));
    if name.is_empty() {
        return bad("interface name is empty");
    }
    if name.len() > 15 {
        return Err(
            CniError::new(ErrorCode::InvalidEnvironment, "interface name is too long")
                .with_details("interface name should be less than 16 characters"),
        );
    }
    if name == "." || name == ".." {
        return bad("interface name is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("interface name contains / or : or whitespace characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "mynet", "k8s-pod.net_1", "0abc"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../evil", "a/b", "-a", "_a", "a b", "a:b", "é",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(network_name("../evil").unwrap_err().code, 7);
        assert_eq!(container_id("a/b").unwrap_err().code, 4);
        assert_eq!(container_id("").unwrap_err().code, 3);
        assert_eq!(interface_name("eth0/x").unwrap_err().code, 4);
        assert_eq!(interface_name("0123456789abcdef").unwrap_err().code, 4);
        assert!(interface_name("eth0").is_ok());
    }
}
