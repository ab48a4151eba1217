//! From an image record to a container root filesystem: resolve the
//! manifest for this platform, read the image config, apply each layer
//! into a committed snapshot named by its chain ID (what `ctr` and the
//! CRI plugin do), and label the config so containerd's garbage collector
//! keeps the snapshots while the image exists.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, GetImageRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Containerd, CtrdError, rpc};

pub const SNAPSHOTTER: &str = "overlayfs";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What a container needs to know about its image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub name: String,
    /// The image record's target (what `imageID` reports).
    pub digest: String,
    /// The image config's `config` section (Entrypoint, Cmd, Env, ...).
    pub config: Value,
    /// The top layer's chain ID: the parent of a container's snapshot.
    pub chain_id: String,
}

/// `sha256(parent + " " + diffID)` over the layers, as the OCI image spec
/// defines the chain ID.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex(&h))
            }
        };
        out.push(next);
    }
    out
}

/// Lower-case hex, as digests and IDs are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad_image(name: &str, msg: impl std::fmt::Display) -> CtrdError {
    CtrdError::Image {
        name: name.to_string(),
        msg: msg.to_string(),
    }
}

impl Containerd {
    /// A blob from the content store, whole.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, CtrdError> {
        let mut stream = self
            .client
            .content()
            .read(self.req(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(rpc("content.read"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(rpc("content.read"))? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    async fn read_json(&self, name: &str, digest: &str) -> Result<Value, CtrdError> {
        let data = self.read_blob(digest).await?;
        serde_json::from_slice(&data).map_err(|e| bad_image(name, format!("{digest}: {e}")))
    }

    /// The image's record, or `None` when the image store lacks it.
    pub async fn image_target(&self, name: &str) -> Result<Option<Descriptor>, CtrdError> {
        match self
            .client
            .images()
            .get(self.req(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(rpc("images.get")(s)),
        }
    }

    /// The manifest for linux/amd64 (this machine) behind `target`.
    async fn platform_manifest(&self, name: &str, target: &Descriptor) -> Result<Value, CtrdError> {
        let mut doc = self.read_json(name, &target.digest).await?;
        let mut media = target.media_type.clone();
        // An index may nest; two levels is all that real images use.
        for _ in 0..2 {
            if !INDEX_TYPES.contains(&media.as_str()) && doc.get("manifests").is_none() {
                return Ok(doc);
            }
            let m = doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    let p = &m["platform"];
                    p.is_null()
                        || (p["os"] == "linux"
                            && (p["architecture"] == std::env::consts::ARCH
                                || p["architecture"] == "amd64"
                                    && std::env::consts::ARCH == "x86_64"))
                })
                .cloned()
                .ok_or_else(|| bad_image(name, "no manifest for linux/amd64 in its index"))?;
            media = m["mediaType"].as_str().unwrap_or("").to_string();
            let digest = m["digest"].as_str().unwrap_or("").to_string();
            doc = self.read_json(name, &digest).await?;
        }
        Err(bad_image(name, "index nested too deep"))
    }

    /// Resolves `name` and makes sure its layers are unpacked into
    /// snapshots; `Ok(None)` when the image is not in the image store.
    pub async fn ensure_unpacked(&self, name: &str) -> Result<Option<ImageInfo>, CtrdError> {
        let Some(target) = self.image_target(name).await? else {
            return Ok(None);
        };
        let manifest = self.platform_manifest(name, &target).await?;
        let config_digest = manifest
            .pointer("/config/digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_image(name, "manifest without a config"))?
            .to_string();
        let config = self.read_json(name, &config_digest).await?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let layers: Vec<Value> = manifest["layers"].as_array().cloned().unwrap_or_default();
        if layers.len() != diff_ids.len() || layers.is_empty() {
            return Err(bad_image(
                name,
                format!(
                    "{} layers but {} diff_ids in its config",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let chains = chain_ids(&diff_ids);
        let top = chains.last().cloned().unwrap_or_default();
        if self.snapshot_exists(&top).await? {
            self.label_config(&config_digest, &top).await?;
        } else {
            // The label goes on before the lease ends: between the two,
            // nothing would hold the new snapshots and GC could take them.
            let lease = self
                .lease_reusing(&format!(
                    "pod-runner-unpack-{}",
                    top.get(7..19).unwrap_or(&top)
                ))
                .await?;
            let r = async {
                self.unpack_under(&lease, name, &layers, &chains).await?;
                self.label_config(&config_digest, &top).await
            }
            .await;
            let _ = self.drop_lease(&lease).await;
            r?;
        }
        Ok(Some(ImageInfo {
            name: name.to_string(),
            digest: target.digest,
            config: config.get("config").cloned().unwrap_or(Value::Null),
            chain_id: top,
        }))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, CtrdError> {
        match self
            .client
            .snapshots()
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(rpc("snapshots.stat")(s)),
        }
    }

    async fn unpack_under(
        &self,
        lease: &str,
        name: &str,
        layers: &[Value],
        chains: &[String],
    ) -> Result<(), CtrdError> {
        let mut parent = String::new();
        for (layer, chain) in layers.iter().zip(chains) {
            if !self.snapshot_exists(chain).await? {
                self.apply_layer(lease, name, layer, &parent, chain).await?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// One layer: an active snapshot on `parent`, the diff applied into
    /// it, committed as `chain`.
    async fn apply_layer(
        &self,
        lease: &str,
        name: &str,
        layer: &Value,
        parent: &str,
        chain: &str,
    ) -> Result<(), CtrdError> {
        let key = format!(
            "extract-{}-{chain}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let mounts = self
            .client
            .snapshots()
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(rpc("snapshots.prepare"))?
            .into_inner()
            .mounts;
        let diff = Descriptor {
            media_type: layer["mediaType"].as_str().unwrap_or("").to_string(),
            digest: layer["digest"].as_str().unwrap_or("").to_string(),
            size: layer["size"].as_i64().unwrap_or(0),
            annotations: HashMap::new(),
        };
        let applied = self
            .client
            .diff()
            .apply(self.req(
                ApplyRequest {
                    diff: Some(diff),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                Some(lease),
            ))
            .await;
        let committed = match applied {
            Ok(_) => {
                self.client
                    .snapshots()
                    .commit(self.req(
                        CommitSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            name: chain.to_string(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(_) => Ok(()),
            // Someone else unpacked the same layer meanwhile.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                self.remove_snapshot(&key).await;
                Ok(())
            }
            Err(s) => {
                self.remove_snapshot(&key).await;
                Err(bad_image(
                    name,
                    format!("applying layer {}: {}", diff_digest(layer), s.message()),
                ))
            }
        }
    }

    /// Best effort: a snapshot that is gone already is fine.
    pub(crate) async fn remove_snapshot(&self, key: &str) {
        let _ = self
            .client
            .snapshots()
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                },
                None,
            ))
            .await;
    }

    /// `containerd.io/gc.ref.snapshot.<snapshotter>` on the config blob:
    /// the image then keeps its snapshots alive, as after `ctr` unpacks.
    async fn label_config(&self, config: &str, top: &str) -> Result<(), CtrdError> {
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        let info = self
            .client
            .content()
            .info(self.req(
                InfoRequest {
                    digest: config.to_string(),
                },
                None,
            ))
            .await
            .map_err(rpc("content.info"))?
            .into_inner()
            .info;
        if info
            .as_ref()
            .and_then(|i| i.labels.get(&label))
            .is_some_and(|v| v == top)
        {
            return Ok(());
        }
        let mut labels = HashMap::new();
        labels.insert(label.clone(), top.to_string());
        self.client
            .content()
            .update(self.req(
                UpdateRequest {
                    info: Some(Info {
                        digest: config.to_string(),
                        size: 0,
                        created_at: None,
                        updated_at: None,
                        labels,
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{label}")],
                    }),
                },
                None,
            ))
            .await
            .map_err(rpc("content.update"))?;
        Ok(())
    }
}

fn diff_digest(layer: &Value) -> &str {
    layer["digest"].as_str().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        let want = format!(
            "sha256:{}",
            hex(&Sha256::digest(format!("{} {}", d('a'), d('b')).as_bytes()))
        );
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }
}
