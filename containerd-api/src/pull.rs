//! Pulling from an OCI registry (oci-client speaks the distribution API)
//! into containerd's content store, then the image record, as `ctr pull`
//! does on the client side: manifests and blobs under a lease, with the
//! garbage-collection labels that tie them together.

use std::collections::HashMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use crate::image::gc_labels;
use crate::{Containerd, CtrdError, ImageRef};

const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The name containerd's CRI plugin would store: `nginx` is
/// `docker.io/library/nginx:latest`, `localhost/web` is `localhost/web:latest`.
pub fn normalize(image: &str) -> Result<String, CtrdError> {
    let r: Reference = image.parse().map_err(|e| CtrdError::Image {
        name: image.to_string(),
        msg: format!("invalid image reference: {e}"),
    })?;
    Ok(r.whole())
}

/// Registries on this host are spoken to in plain HTTP, as containerd and
/// docker allow for localhost.
fn is_local(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

fn media_type(doc: &Value) -> String {
    match doc["mediaType"].as_str() {
        Some(m) => m.to_string(),
        None if doc.get("manifests").is_some() => MANIFEST_TYPES[0].to_string(),
        None => MANIFEST_TYPES[1].to_string(),
    }
}

fn platform_ok(m: &Value) -> bool {
    let p = &m["platform"];
    p.is_null()
        || p["os"] == "linux"
            && (p["architecture"] == std::env::consts::ARCH
                || p["architecture"] == "amd64" && std::env::consts::ARCH == "x86_64")
}

impl Containerd {
    /// Pulls `image` for this platform; returns what the image record
    /// now points at.
    pub async fn pull(&self, image: &str) -> Result<ImageRef, CtrdError> {
        let name = normalize(image)?;
        let r: Reference = name.parse().map_err(|e| CtrdError::Image {
            name: name.clone(),
            msg: format!("{e}"),
        })?;
        let fail = |msg: String| CtrdError::Image {
            name: name.clone(),
            msg,
        };
        let registry = r.resolve_registry().to_string();
        let protocol = if is_local(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        let auth = RegistryAuth::Anonymous;
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        let (top, top_digest) = client
            .pull_manifest_raw(&r, &auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| fail(format!("pulling the manifest: {e}")))?;
        let top_doc: Value =
            serde_json::from_slice(&top).map_err(|e| fail(format!("manifest: {e}")))?;
        let target = ImageRef {
            name: name.clone(),
            digest: top_digest.clone(),
            media_type: media_type(&top_doc),
            size: top.len() as i64,
        };
        blobs.insert(top_digest, top.to_vec());
        let manifest = if top_doc.get("manifests").is_some() {
            let child = top_doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| platform_ok(m))
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| fail("no manifest for linux/amd64 in its index".into()))?
                .to_string();
            let cr = Reference::with_digest(
                r.registry().to_string(),
                r.repository().to_string(),
                child.clone(),
            );
            let (raw, digest) = client
                .pull_manifest_raw(&cr, &auth, &MANIFEST_TYPES)
                .await
                .map_err(|e| fail(format!("pulling manifest {child}: {e}")))?;
            let doc: Value =
                serde_json::from_slice(&raw).map_err(|e| fail(format!("manifest: {e}")))?;
            blobs.insert(digest, raw.to_vec());
            doc
        } else {
            top_doc
        };
        let mut wanted: Vec<String> = Vec::new();
        if let Some(c) = manifest.pointer("/config/digest").and_then(Value::as_str) {
            wanted.push(c.to_string());
        }
        for l in manifest["layers"].as_array().into_iter().flatten() {
            if let Some(d) = l["digest"].as_str() {
                wanted.push(d.to_string());
            }
        }
        for digest in wanted {
            if self.has_blob(&digest).await? {
                continue;
            }
            let mut data = Vec::new();
            client
                .pull_blob(&r, digest.as_str(), &mut data)
                .await
                .map_err(|e| fail(format!("pulling blob {digest}: {e}")))?;
            blobs.insert(digest, data);
        }
        let lease = self
            .lease(&format!("pod-runner-pull-{}", std::process::id()))
            .await?;
        let written = self.store_image(&lease, &blobs, &target).await;
        let dropped = self.drop_lease(&lease).await;
        written?;
        dropped?;
        Ok(target)
    }

    /// Blobs into the content store (children first, so every label points
    /// at something present), then the image record.
    async fn store_image(
        &self,
        lease: &str,
        blobs: &HashMap<String, Vec<u8>>,
        target: &ImageRef,
    ) -> Result<(), CtrdError> {
        let labels = gc_labels(blobs);
        let mut order: Vec<&String> = blobs.keys().collect();
        // Layers and config, then manifests, then the index.
        order.sort_by_key(|d| (labels.contains_key(*d), **d == target.digest));
        for digest in order {
            let l = labels.get(digest).cloned().unwrap_or_default();
            self.write_blob(lease, digest, &blobs[digest], l).await?;
        }
        self.put_image(lease, target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_cri_plugin_stores_them() {
        assert_eq!(
            normalize("nginx").expect("n"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            normalize("localhost/web:latest").expect("n"),
            "localhost/web:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/web").expect("n"),
            "127.0.0.1:5000/web:latest"
        );
        assert!(normalize("not a/reference").is_err());
        assert!(is_local("localhost:5000") && is_local("127.0.0.1") && !is_local("example.org"));
    }
}
