//! Images a pod needs, by the container's imagePullPolicy, unpacked and
//! ready for snapshots.

use containerd_api::{ImageInfo, normalize};

use super::{RunError, Runner, warn};

impl Runner {
    /// The image, pulled first when the policy says so.
    pub(crate) async fn ensure_image(
        &self,
        image: &str,
        policy: &str,
    ) -> Result<ImageInfo, RunError> {
        Ok(self.ensure_image_noting(image, policy).await?.0)
    }

    /// [`Runner::ensure_image`], and whether it was pulled (for the
    /// kubelet's Pulling/Pulled events).
    pub(crate) async fn ensure_image_noting(
        &self,
        image: &str,
        policy: &str,
    ) -> Result<(ImageInfo, bool), RunError> {
        // The name as written first: an exact hit needs no parsing (the
        // reference grammar is a regex that costs ~20 ms to build).
        let exact = self.ctrd.image_target(image).await?.is_some();
        let image = if exact {
            image.to_string()
        } else {
            normalize(image)?
        };
        let image = image.as_str();
        let present = exact || self.ctrd.image_target(image).await?.is_some();
        let pull = match policy {
            "Never" => false,
            "Always" => true,
            _ => !present,
        };
        let mut pulled = false;
        if pull {
            match self.ctrd.pull(image).await {
                Ok(_) => pulled = true,
                // The kubelet would fail here; a node without a registry
                // (the tutorial's) still runs what it was given.
                Err(e) if present => warn(&format!(
                    "image {image}: pull failed ({e}); using the image already on this node"
                )),
                Err(e) => {
                    return Err(RunError::Image {
                        image: image.to_string(),
                        msg: format!(
                            "not on this node and the pull failed: {e} (or import it: pod-runner image import)"
                        ),
                    });
                }
            }
        }
        let info = self
            .ctrd
            .ensure_unpacked(image)
            .await?
            .ok_or_else(|| RunError::Image {
                image: image.to_string(),
                msg: format!(
                    "not on this node (imagePullPolicy {policy}); import it with pod-runner image import"
                ),
            })?;
        Ok((info, pulled))
    }
}
