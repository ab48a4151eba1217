//! The routes reconciler: the routes the Nodes call for and the podCIDRs
//! refused (from the Nodes and every route in the kernel), a plan from our
//! routes to them, applied; the refusals reported in a gauge and the log.

pub mod kernel;
pub mod plan;

use std::collections::BTreeSet;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;

use crate::metrics::Metrics;
pub use kernel::{Kernel, KernelError};
use plan::{Desired, Plan, Reason, Refusal};

/// One gauge series per refused podCIDR; the set is also what the log
/// has said (see [`report`]).
pub const CONFLICTS: &str = "node_sync_route_conflicts";

/// What this node should route, and what the kernel has.
pub struct Assessment {
    pub desired: Desired,
    pub table: kernel::Table,
    pub plan: Plan,
}

/// The planner on the Nodes and the kernel as they are now: what `sync`
/// would do, without doing it (for `status`).
pub async fn assess<'a>(
    kernel: &Kernel,
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
) -> Result<Assessment, KernelError> {
    let table = kernel.read().await?;
    let desired = plan::desired(nodes, me, kernel.pod_cidr(), &table.foreign);
    let plan = plan::plan(&desired.routes, &table.ours);
    Ok(Assessment {
        desired,
        table,
        plan,
    })
}

/// Brings the kernel to the routes `nodes` call for; returns how many of
/// our routes are programmed. A refused podCIDR is reported, not an
/// error: the rest of the network is fine, so routes stay ready.
pub async fn sync<'a>(
    kernel: &Kernel,
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    metrics: &Metrics,
) -> Result<usize, KernelError> {
    let t = Instant::now();
    let r = apply(kernel, nodes, me, metrics).await;
    metrics.observe_sync("routes", t.elapsed(), r.is_ok());
    r
}

async fn apply<'a>(
    kernel: &Kernel,
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    metrics: &Metrics,
) -> Result<usize, KernelError> {
    let Assessment {
        mut desired,
        plan: p,
        ..
    } = assess(kernel, nodes, me).await?;
    if !p.is_empty() {
        tracing::info!(
            add = p.add.len(),
            delete = p.delete.len(),
            "routes: applying"
        );
    }
    kernel::ip_forward(desired.routes.keys().any(|n| n.is_ipv6()))?;
    let mut first_error = None;
    for o in &p.delete {
        if let Err(e) = kernel.delete(o).await {
            tracing::warn!("routes: deleting {} via {:?}: {e}", o.dst, o.via);
            first_error.get_or_insert(e);
        }
    }
    for (dst, via) in &p.add {
        match kernel.add(*dst, *via).await {
            Ok(kernel::Added::Done) => {}
            // Someone else's route came between the read and the add; the
            // next sync reads it and names it.
            Ok(kernel::Added::Exists) => {
                if let Some(t) = desired.routes.remove(dst) {
                    desired.refused.push(Refusal {
                        node: t.node,
                        cidr: dst.to_string(),
                        reason: Reason::ForeignRoute,
                        with: format!("a route to {dst} made by someone else meanwhile"),
                    });
                }
            }
            Err(e) => {
                tracing::warn!("routes: {dst} via {via}: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    desired.refused.sort();
    report(metrics, &desired.refused);
    metrics.set(
        "node_sync_routes_programmed",
        &[],
        desired.routes.len() as f64,
    );
    metrics.set(
        "node_sync_nodes_skipped",
        &[],
        desired.nodes_refused() as f64,
    );
    match first_error {
        Some(e) => Err(e),
        None => Ok(desired.routes.len()),
    }
}

fn labels(r: &Refusal) -> Vec<(&str, &str)> {
    vec![
        ("node", r.node.as_str()),
        ("cidr", r.cidr.as_str()),
        ("reason", r.reason.as_str()),
        ("with", r.with.as_str()),
    ]
}

/// The gauge's series read back.
pub fn reported(metrics: &Metrics) -> Vec<Refusal> {
    metrics
        .series(CONFLICTS)
        .into_iter()
        .filter_map(|l| {
            let get = |k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            Some(Refusal {
                node: get("node")?,
                cidr: get("cidr")?,
                reason: Reason::parse(&get("reason")?)?,
                with: get("with")?,
            })
        })
        .collect()
}

/// The refusals into the gauge, and into the log when the set changed:
/// each new one once (WARN), each one gone once (INFO). What the gauge
/// held is what was logged, so no other state is kept. Returns (new,
/// gone).
pub fn report(metrics: &Metrics, now: &[Refusal]) -> (Vec<Refusal>, Vec<Refusal>) {
    let before: BTreeSet<Refusal> = reported(metrics).into_iter().collect();
    let after: BTreeSet<Refusal> = now.iter().cloned().collect();
    if before == after {
        return (Vec::new(), Vec::new());
    }
    let new: Vec<Refusal> = after.difference(&before).cloned().collect();
    let gone: Vec<Refusal> = before.difference(&after).cloned().collect();
    for r in &new {
        tracing::warn!("routes: refused {r}");
    }
    for r in &gone {
        tracing::info!("routes: no longer refused: {r}");
    }
    let rows: Vec<(Vec<(&str, &str)>, f64)> = after.iter().map(|r| (labels(r), 1.0)).collect();
    metrics.replace(CONFLICTS, &rows);
    (new, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(node: &str, reason: Reason, with: &str) -> Refusal {
        Refusal {
            node: node.into(),
            cidr: "10.244.3.0/24".into(),
            reason,
            with: with.into(),
        }
    }

    #[test]
    fn a_refusal_is_reported_once_per_change() {
        let m = Metrics::default();
        let young = refusal("aa-young", Reason::OlderNode, "zz-old");
        let foreign = refusal(
            "third",
            Reason::ForeignRoute,
            "10.244.3.0/24 via 192.168.43.200 dev eth0 proto static",
        );
        let (new, gone) = report(&m, std::slice::from_ref(&young));
        assert_eq!((new, gone), (vec![young.clone()], vec![]));
        // The same set again, and again: nothing to say.
        for _ in 0..3 {
            assert_eq!(report(&m, std::slice::from_ref(&young)), (vec![], vec![]));
        }
        assert_eq!(
            m.get(
                CONFLICTS,
                &[
                    ("node", "aa-young"),
                    ("cidr", "10.244.3.0/24"),
                    ("reason", "older-node"),
                    ("with", "zz-old")
                ]
            ),
            Some(1.0)
        );
        let (new, gone) = report(&m, std::slice::from_ref(&foreign));
        assert_eq!((new, gone), (vec![foreign.clone()], vec![young]));
        assert_eq!(reported(&m), vec![foreign.clone()]);
        let (new, gone) = report(&m, &[]);
        assert_eq!((new, gone), (vec![], vec![foreign]));
        assert!(!m.render().contains(CONFLICTS), "{}", m.render());
    }
}
