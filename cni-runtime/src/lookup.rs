//! Finding a plugin by its type in the plugin directories. The one check
//! of a plugin type for every caller: a type names a file in those
//! directories, never a path.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("invalid plugin name {0:?}")]
    InvalidType(String),
    #[error("failed to find plugin {plugin:?} in path [{}]", join(dirs))]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A plugin type is a plain file name by the reference's name rule
/// (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`): no `/`, no `.` or `..`, nothing
/// hidden, no spaces.
pub fn validate_type(plugin: &str) -> Result<(), LookupError> {
    if cni_protocol::validate::is_valid_name(plugin) {
        Ok(())
    } else {
        Err(LookupError::InvalidType(plugin.to_string()))
    }
}

/// The first `<dir>/<plugin>` that is a file, in the order of `dirs`.
pub fn find_plugin<P: AsRef<Path>>(plugin: &str, dirs: &[P]) -> Result<PathBuf, LookupError> {
    validate_type(plugin)?;
    dirs.iter()
        .map(|d| d.as_ref().join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| LookupError::NotFound {
            plugin: plugin.to_string(),
            dirs: dirs.iter().map(|d| d.as_ref().to_path_buf()).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../bridge",
            "a/b",
            "/bin/sh",
            ".hidden",
            "-x",
            "a b",
            "a\0b",
        ] {
            assert_eq!(
                validate_type(bad),
                Err(LookupError::InvalidType(bad.into())),
                "{bad:?}"
            );
        }
        for ok in ["bridge", "host-local", "calico-ipam", "v1.2_x"] {
            assert!(validate_type(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_first_directory_holding_it_wins() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        std::fs::write(b.path().join("p"), "").expect("write");
        std::fs::create_dir(a.path().join("p")).expect("a dir is no plugin");
        let dirs = [a.path(), b.path()];
        assert_eq!(find_plugin("p", &dirs).expect("found"), b.path().join("p"));
        std::fs::write(a.path().join("q"), "").expect("write");
        std::fs::write(b.path().join("q"), "").expect("write");
        assert_eq!(find_plugin("q", &dirs).expect("found"), a.path().join("q"));
        let e = find_plugin("nope", &dirs).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("failed to find plugin \"nope\" in path ["),
            "{e}"
        );
        // A path never reaches the file system.
        assert!(matches!(
            find_plugin("../p", &[a.path().join("x")]),
            Err(LookupError::InvalidType(_))
        ));
    }
}
