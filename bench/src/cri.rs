//! The kubelet's CNI path, ours against the reference: containerd's CRI
//! plugin running the plugins of each side on an emulated node of its own
//! (testbed::cri), `crictl runp` until the sandbox is ready (the call
//! returns then), then `stopp` and `rmp`, alternating side by side pod by
//! pod. Everything besides the plugins (containerd, runc, our pause) is the
//! same on both sides, so the ratio shows what the plugins add to a pod
//! sandbox's start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;
use testbed::cri::{CriNode, crictl};

use crate::stats::{median, ms, percentile, ratio};

#[derive(clap::Args)]
pub struct Options {
    /// Our static plugins (./scripts/build-plugins.sh).
    #[arg(long, value_name = "DIR")]
    ours: PathBuf,
    /// The Go reference plugins.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    reference: PathBuf,
    /// Our static pause (./scripts/build-plugins.sh -p pod-runner).
    #[arg(long, value_name = "FILE")]
    pause: PathBuf,
    /// Sandboxes per side.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    runs: u32,
}

pub fn run(o: &Options) -> Result<()> {
    let crictl = crictl();
    let sides = [
        CriNode::start("crbo", &o.ours, &o.pause, &crictl),
        CriNode::start("crbr", &o.reference, &o.pause, &crictl),
    ];
    let names = ["ours", "reference"];
    let mut runp: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut stopp: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..o.runs {
        // Who goes first alternates, so neither side always meets a
        // warmer cache.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            if let Some(sig) = crate::interrupted() {
                bail!("interrupted by signal {sig}");
            }
            let node = &sides[s];
            let (id, took) = node.runp(&format!("web-{i}"));
            if !node.ready(&id) || node.pod_ip(&id).is_empty() {
                bail!("{}: sandbox {id} is not ready with an IP", names[s]);
            }
            runp[s].push(took);
            stopp[s].push(node.stopp(&id));
            node.rmp(&id);
            if !node.leases().is_empty() {
                bail!("{}: a lease is left after rmp", names[s]);
            }
        }
    }
    let m = |v: &[Duration]| median(v);
    let r_runp = ratio(m(&runp[0]), m(&runp[1]));
    let r_stopp = ratio(m(&stopp[0]), m(&stopp[1]));
    println!(
        "CRI path: containerd's CRI plugin with our plugins / with the reference, {} sandboxes each",
        o.runs
    );
    println!(
        "{:<28} {:>10} {:>10} {:>7}",
        "", "ours", "reference", "ratio"
    );
    let row = |what: &str, a: Duration, b: Duration| {
        println!(
            "{what:<28} {:>8.1}ms {:>8.1}ms {:>7.2}",
            ms(a),
            ms(b),
            ratio(a, b)
        );
    };
    row("crictl runp, median", m(&runp[0]), m(&runp[1]));
    row(
        "crictl runp, p99",
        percentile(&runp[0], 99.0),
        percentile(&runp[1], 99.0),
    );
    row("crictl stopp, median", m(&stopp[0]), m(&stopp[1]));
    row(
        "crictl stopp, p99",
        percentile(&stopp[0], 99.0),
        percentile(&stopp[1], 99.0),
    );
    println!("errors: 0");
    let result = json!({
        "bench": "cri", "runs": o.runs,
        "runp_median_ms": {"ours": ms(m(&runp[0])), "reference": ms(m(&runp[1])), "ratio": r_runp},
        "runp_p99_ms": {"ours": ms(percentile(&runp[0], 99.0)), "reference": ms(percentile(&runp[1], 99.0))},
        "stopp_median_ms": {"ours": ms(m(&stopp[0])), "reference": ms(m(&stopp[1])), "ratio": r_stopp},
        "errors": 0,
    });
    println!("RESULT {result}");
    Ok(())
}
