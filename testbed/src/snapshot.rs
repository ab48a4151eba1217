//! Directory snapshots: every file's bytes and mode, every directory's mode,
//! keyed by path relative to the root, so two trees compare with `==`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
}

impl Entry {
    /// File content as text (lossy), for readable assertion messages.
    pub fn text(&self) -> Option<String> {
        match self {
            Entry::File { content, .. } => Some(String::from_utf8_lossy(content).into_owned()),
            _ => None,
        }
    }
}

/// Snapshot of everything under `root` (not `root` itself). A missing root
/// is an empty snapshot.
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for path in all_paths(root) {
        let rel = path
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string());
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o7777;
        let entry = if meta.file_type().is_symlink() {
            Entry::Symlink {
                target: fs::read_link(&path).unwrap_or_default(),
            }
        } else if meta.is_dir() {
            Entry::Dir { mode }
        } else {
            Entry::File {
                mode,
                content: fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
            }
        };
        out.insert(rel, entry);
    }
    out
}

/// Every path under `root`, depth first, sorted; symlinks are not followed.
pub fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sees_files_dirs_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        fs::write(tmp.path().join("d/f"), b"x\r\ny").unwrap();
        fs::set_permissions(tmp.path().join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        let s = snapshot(tmp.path());
        assert_eq!(s.len(), 2);
        assert!(matches!(s["d"], Entry::Dir { .. }));
        assert_eq!(
            s["d/f"],
            Entry::File {
                mode: 0o640,
                content: b"x\r\ny".to_vec()
            }
        );
        assert!(snapshot(&tmp.path().join("missing")).is_empty());
    }
}
