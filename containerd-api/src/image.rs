//! Importing an OCI image archive (an OCI layout in a tar) into the
//! content store and the image store, the way `ctr images import` does,
//! under a lease until the image record holds everything.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use containerd_client::services::v1::{
    CreateImageRequest, GetImageRequest, Image, UpdateImageRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;

use crate::{Containerd, CtrdError, rpc};

/// What an import created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
}

fn archive(path: &Path, msg: impl std::fmt::Display) -> CtrdError {
    CtrdError::Archive {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Blobs (by digest) and index.json of an OCI layout tar.
fn read_layout(path: &Path) -> Result<(HashMap<String, Vec<u8>>, Value), CtrdError> {
    let file = std::fs::File::open(path).map_err(|e| archive(path, e))?;
    let mut tar = tar::Archive::new(file);
    let mut blobs = HashMap::new();
    let mut index = None;
    for entry in tar.entries().map_err(|e| archive(path, e))? {
        let mut entry = entry.map_err(|e| archive(path, e))?;
        let name = entry
            .path()
            .map_err(|e| archive(path, e))?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").to_string();
        let mut data = Vec::new();
        if name == "index.json" {
            entry.read_to_end(&mut data).map_err(|e| archive(path, e))?;
            index = Some(serde_json::from_slice(&data).map_err(|e| archive(path, e))?);
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/")
            && !hex.is_empty()
            && entry.header().entry_type().is_file()
        {
            entry.read_to_end(&mut data).map_err(|e| archive(path, e))?;
            blobs.insert(format!("sha256:{hex}"), data);
        }
    }
    let index = index.ok_or_else(|| archive(path, "no index.json: not an OCI layout"))?;
    Ok((blobs, index))
}

/// containerd's garbage collector follows only labelled references: a
/// manifest names its config and layers, an index its manifests (what
/// `ctr images import` sets too). Without them the layers would go once
/// the import lease ends.
pub(super) fn gc_labels(
    blobs: &HashMap<String, Vec<u8>>,
) -> HashMap<String, HashMap<String, String>> {
    let mut out = HashMap::new();
    for (digest, data) in blobs {
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        let mut l = HashMap::new();
        if let Some(cfg) = doc.pointer("/config/digest").and_then(Value::as_str) {
            l.insert(
                "containerd.io/gc.ref.content.config".to_string(),
                cfg.to_string(),
            );
        }
        for (i, layer) in doc["layers"].as_array().into_iter().flatten().enumerate() {
            if let Some(d) = layer["digest"].as_str() {
                l.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.to_string());
            }
        }
        for (i, m) in doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(d) = m["digest"].as_str() {
                l.insert(format!("containerd.io/gc.ref.content.m.{i}"), d.to_string());
            }
        }
        if !l.is_empty() {
            out.insert(digest.clone(), l);
        }
    }
    out
}

impl Containerd {
    /// Imports the archive's images as `<base>:<ref.name>` (the OCI
    /// layout's `org.opencontainers.image.ref.name`), like
    /// `ctr images import --base-name <base>`.
    pub async fn import_oci_archive(
        &self,
        path: &Path,
        base: &str,
    ) -> Result<Vec<ImageRef>, CtrdError> {
        let (blobs, index) = read_layout(path)?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        if manifests.is_empty() {
            return Err(archive(path, "index.json lists no manifests"));
        }
        let lease = self
            .lease(&format!("pod-runner-import-{}", std::process::id()))
            .await?;
        let result = self
            .import_under(&lease, &blobs, &manifests, base, path)
            .await;
        let dropped = self.drop_lease(&lease).await;
        let images = result?;
        dropped?;
        Ok(images)
    }

    async fn import_under(
        &self,
        lease: &str,
        blobs: &HashMap<String, Vec<u8>>,
        manifests: &[Value],
        base: &str,
        path: &Path,
    ) -> Result<Vec<ImageRef>, CtrdError> {
        let labels = gc_labels(blobs);
        // Children before the manifests and indexes that point at them.
        let mut order: Vec<&String> = blobs.keys().collect();
        order.sort_by_key(|d| labels.contains_key(*d));
        for digest in order {
            let l = labels.get(digest).cloned().unwrap_or_default();
            self.write_blob(lease, digest, &blobs[digest], l).await?;
        }
        let mut out = Vec::new();
        for m in manifests {
            let tag = m
                .pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                .unwrap_or("latest");
            let target = ImageRef {
                name: format!("{base}:{tag}"),
                digest: m["digest"].as_str().unwrap_or("").to_string(),
                media_type: m["mediaType"].as_str().unwrap_or("").to_string(),
                size: m["size"].as_i64().unwrap_or(0),
            };
            if !blobs.contains_key(&target.digest) {
                return Err(archive(
                    path,
                    format!("manifest {} is not in the archive", target.digest),
                ));
            }
            self.put_image(lease, &target).await?;
            out.push(target);
        }
        Ok(out)
    }

    /// One blob into the content store, verified against its digest.
    /// Every image record: (name, target digest), sorted by name.
    pub async fn list_images(&self) -> Result<Vec<(String, String)>, CtrdError> {
        let resp = self
            .client
            .images()
            .list(self.req(
                containerd_client::services::v1::ListImagesRequest { filters: vec![] },
                None,
            ))
            .await
            .map_err(rpc("images.list"))?;
        let mut out: Vec<(String, String)> = resp
            .into_inner()
            .images
            .into_iter()
            .map(|i| {
                let d = i.target.map(|t| t.digest).unwrap_or_default();
                (i.name, d)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Whether the content store has `digest`.
    pub(super) async fn has_blob(&self, digest: &str) -> Result<bool, CtrdError> {
        match self
            .client
            .content()
            .info(self.req(
                containerd_client::services::v1::InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(rpc("content.info")(s)),
        }
    }

    pub(super) async fn write_blob(
        &self,
        lease: &str,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), CtrdError> {
        const CHUNK: usize = 1 << 20;
        let total = data.len() as i64;
        let reference = format!("pod-runner-{digest}");
        let mut reqs = Vec::new();
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK).min(data.len());
            let last = end == data.len();
            reqs.push(WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.to_string(),
                offset: offset as i64,
                data: data[offset..end].to_vec(),
                labels: if last { labels.clone() } else { HashMap::new() },
            });
            if last {
                break;
            }
            offset = end;
        }
        let mut stream = match self
            .client
            .content()
            .write(self.req(futures::stream::iter(reqs), Some(lease)))
            .await
        {
            Ok(s) => s.into_inner(),
            // Already there: content is addressed by digest.
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(rpc("content.write")(s)),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(rpc("content.write")(s)),
            }
        }
    }

    pub(super) async fn put_image(&self, lease: &str, r: &ImageRef) -> Result<(), CtrdError> {
        let image = Image {
            name: r.name.clone(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: r.media_type.clone(),
                digest: r.digest.clone(),
                size: r.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let exists = self
            .client
            .images()
            .get(self.req(
                GetImageRequest {
                    name: r.name.clone(),
                },
                None,
            ))
            .await
            .is_ok();
        if exists {
            self.client
                .images()
                .update(self.req(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    Some(lease),
                ))
                .await
                .map_err(rpc("images.update"))?;
        } else {
            self.client
                .images()
                .create(self.req(
                    CreateImageRequest {
                        image: Some(image),
                        source_date_epoch: None,
                    },
                    Some(lease),
                ))
                .await
                .map_err(rpc("images.create"))?;
        }
        Ok(())
    }
}
