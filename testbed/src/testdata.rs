//! The tutorial's objects and CNI configs in `testdata/`, loaded the way
//! tests and the demo use them (a typo there fails a test).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The repository's `testdata/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// Every document of a multi-document YAML file, as `T`. Panics with the
/// file and document number on a parse error.
pub fn load<T: DeserializeOwned>(file: &str) -> Vec<T> {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            T::deserialize(doc).unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()))
        })
        .collect()
}

/// The one document of a YAML file.
pub fn load_one<T: DeserializeOwned>(file: &str) -> T {
    let mut docs = load(file);
    assert_eq!(docs.len(), 1, "{file}: expected one document");
    docs.remove(0)
}

/// A CNI config from `testdata/cni/` as JSON.
pub fn cni_conf(file: &str) -> serde_json::Value {
    let path = dir().join("cni").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
