//! The routes reconciler: desired routes from the Nodes, ours from the
//! kernel, a plan between them, applied.

pub mod kernel;
pub mod plan;

use std::time::Instant;

use k8s_openapi::api::core::v1::Node;

use crate::metrics::Metrics;
pub use kernel::{Kernel, KernelError};

/// Brings the kernel to the routes `nodes` call for; returns how many of
/// our routes are programmed.
pub async fn sync<'a>(
    kernel: &Kernel,
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    metrics: &Metrics,
) -> Result<usize, KernelError> {
    let t = Instant::now();
    let (want, skipped) = plan::desired(nodes, me);
    for s in &skipped {
        tracing::warn!("routes: {s}");
    }
    let current = kernel.ours().await?;
    let p = plan::plan(&want, &current);
    if !p.is_empty() {
        tracing::info!(
            put = p.put.len(),
            delete = p.delete.len(),
            "routes: applying"
        );
    }
    kernel::ip_forward(want.keys().any(|n| n.is_ipv6()))?;
    let mut first_error = None;
    for (dst, via) in &p.delete {
        if let Err(e) = kernel.delete(*dst, *via).await {
            first_error.get_or_insert(e);
        }
    }
    for (dst, via) in &p.put {
        if let Err(e) = kernel.put(*dst, *via).await {
            tracing::warn!("routes: {dst} via {via}: {e}");
            first_error.get_or_insert(e);
        }
    }
    metrics.observe_sync("routes", t.elapsed(), first_error.is_none());
    metrics.set("node_sync_routes_programmed", &[], want.len() as f64);
    metrics.set("node_sync_nodes_skipped", &[], skipped.len() as f64);
    match first_error {
        Some(e) => Err(e),
        None => Ok(want.len()),
    }
}
